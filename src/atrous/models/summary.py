"""Model size and cost: parameters and FLOPs counted on the meta device (no memory, no compute)."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from . import MODELS, ModelSpec, build_model, list_backbones, list_models


def count_flops(size: int, spec: ModelSpec | None = None, /, **fields) -> tuple[int, int]:
    """(parameters, FLOPs) of ``build_model(spec, **fields)`` on one (1, 3, size, size) image, in eval mode.

    FLOPs = 2 x multiply-accumulates (torchvision's and mmseg's tables quote multiply-accumulates as "FLOPs").
    """
    with torch.device("meta"):
        model = build_model(spec, **fields).eval()
        images = torch.empty(1, 3, size, size)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(images)
    return sum(p.numel() for p in model.parameters()), counter.get_total_flops()


def model_rows(*, size: int = 513, num_classes: int = 21) -> list[dict]:
    """One row per architecture x backbone x output stride (the architecture's default, and 8 for V3/V3+)."""
    rows = []
    for name in list_models():
        default_stride = MODELS[name].output_stride
        for backbone in list_backbones():
            for output_stride in sorted({default_stride, 8}):
                params, flops = count_flops(
                    size, name=name, backbone=backbone, output_stride=output_stride, num_classes=num_classes
                )
                rows.append(
                    {
                        "model": name,
                        "backbone": backbone,
                        "output_stride": output_stride,
                        "params_m": params / 1e6,
                        "gmacs": flops / 2e9,
                        "gflops": flops / 1e9,
                    }
                )
    return rows
