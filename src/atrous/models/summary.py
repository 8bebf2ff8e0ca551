"""Model size and cost: parameters and FLOPs counted on the meta device (no memory, no compute)."""

from __future__ import annotations

import logging

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..errors import DataError
from . import BACKBONES, MODELS, ModelSpec, build_model, list_backbones, list_models

log = logging.getLogger(__name__)


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
    """One row per architecture x backbone x output stride (the architecture's default, and 8 for V3/V3+; those the
    backbone supports)."""
    rows = []
    for name in list_models():
        default_stride = MODELS[name].output_stride
        for backbone in list_backbones():
            strides = BACKBONES[backbone].output_strides  # HRNet has neither: its own 4; DRN-D-54 8 only
            for output_stride in sorted({default_stride, 8}.intersection(strides)) or strides[:1]:
                try:
                    params, flops = count_flops(
                        size, name=name, backbone=backbone, output_stride=output_stride, num_classes=num_classes
                    )
                except DataError as error:  # VainF's Xception needs at least 103 px at OS8: no row at smaller sizes
                    log.warning("%s / %s at OS%d left out: %s", name, backbone, output_stride, error)
                    continue
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
