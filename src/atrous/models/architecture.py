"""What an architecture is: a head layout, the aux head that goes with it, and its defaults. The core's own are in
``atrous.models.heads.deeplab``; each publisher registers those only its files use; ``atrous.registry`` lists them all
(``atrous.list_models()``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from torch import nn


class HeadBuilder(Protocol):
    """What every head class (or function) follows, so that one call builds any head.

    Built from the backbone's ``channels`` (feature name -> channel count), ``num_classes``, ``atrous_rates`` and the
    options its ``Architecture`` declares (``separable``, ``align_corners``); the module it returns maps the backbone's
    feature dict (``{"low", "aux", "out"}`` -> (N, C, h, w)) to logits (N, num_classes, h', w') at the resolution of
    the feature it reads. A head names the submodules that output class scores ``classifier``/``classifiers``.
    """

    def __call__(
        self, *, channels: Mapping[str, int], num_classes: int, atrous_rates: Sequence[int], **options
    ) -> nn.Module: ...


def scaled_rates(output_stride: int) -> tuple[int, ...]:
    """The paper's (6, 12, 18) are for OS16; the rates scale with the feature resolution (doubled at OS8)."""
    return tuple(rate * 16 // output_stride for rate in (6, 12, 18))


@dataclass(frozen=True)
class Architecture:
    """A head layout and its defaults.

    head / aux_head: ``HeadBuilder``s of the main and the auxiliary head (``channels``, ``num_classes``,
    ``atrous_rates``; the main head also ``separable`` and ``align_corners`` where declared below).
    """

    head: Callable[..., nn.Module]
    aux_head: Callable[..., nn.Module]
    backbone: str
    output_stride: int
    default_rates: Callable[[int], tuple[int, ...]] = scaled_rates
    frozen_bn: str = "none"
    head_lr_mult: float = 1.0
    separable: bool = True  # whether the head has the atrous-separable option
    align_corners: bool = False  # whether the head upsamples inside, as ``spec.align_corners`` says
    takes_output_stride: bool = False  # whether the head is built for the backbone's output stride (its own dilations)
    needs_rates: bool = False  # whether the head needs one rate at least (an empty list: no ASPP atrous branches)

