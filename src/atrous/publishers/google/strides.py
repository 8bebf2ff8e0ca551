"""How Google's networks reach an output stride (TensorFlow-slim's ``stack_blocks_dense``, MobileNet's
``mobilenet_base``): units are taken in order; once the running stride has reached the target, each later unit runs
at stride 1, at the dilation reached so far, and multiplies that dilation by the stride it gave up. The first unit
whose stride is dropped thus keeps the dilation before it (torchvision's "previous" rule)."""

from __future__ import annotations

from collections.abc import Sequence

from ...errors import ConfigError


def stride_plan(unit_strides: Sequence[int], target: int, *, name: str) -> list[tuple[int, int]]:
    """(stride, dilation) of each unit so that the units together reach ``target`` (their input's stride is 1)."""
    current, dilation, plan = 1, 1, []
    for stride in unit_strides:
        if current == target:
            plan.append((1, dilation))
            dilation *= stride
        else:
            plan.append((stride, 1))
            current *= stride
    if current != target:
        raise ConfigError(f"{name} cannot reach output stride {target} by its units' strides {list(unit_strides)}")
    return plan
