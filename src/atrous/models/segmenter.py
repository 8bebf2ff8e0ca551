"""``Segmenter`` = backbone + head (+ aux head), and its one return type."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .backbones import Backbone
from .normalization import InputNormalization
from .spec import ModelSpec


class SegmentationOutput(NamedTuple):
    """What every atrous model returns, in train and eval mode alike.

    logits: (N, num_classes, H, W) float, pre-softmax, at the input's full resolution.
    aux_logits: the same shape from the auxiliary head, or None when the model has none.
    """

    logits: torch.Tensor
    aux_logits: torch.Tensor | None


class Segmenter(nn.Module):
    """A DeepLab model: ``backbone`` features -> ``head`` (+ ``aux_head``) -> logits upsampled to the input size.

    ``head_lr_mult`` is the learning-rate multiplier of the heads in ``optim_parameters`` (10 for DeepLab-v2).
    ``spec``: the ``ModelSpec`` that builds this architecture, so checkpoints can rebuild the model.
    ``class_names`` and ``palette`` ((K, 3) uint8 RGB, K >= num_classes, usually 256): the labels of the data it was trained on, or
    None; checkpoints keep them, and predictions are named and coloured with them.
    """

    def __init__(
        self,
        *,
        backbone: Backbone,
        head: nn.Module,
        aux_head: nn.Module | None = None,
        num_classes: int,
        head_lr_mult: float = 1.0,
        spec: ModelSpec | None = None,
        class_names: Sequence[str] | None = None,
        palette: np.ndarray | None = None,
        align_corners: bool = False,
    ):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.aux_head = aux_head
        self.num_classes = num_classes
        self.head_lr_mult = head_lr_mult
        self.spec = spec
        self.align_corners = align_corners
        self.bn_stats_frozen = False
        self.class_names: list[str] | None = None
        self.palette: np.ndarray | None = None
        self.set_labels(class_names, palette)

    def set_labels(self, class_names: Sequence[str] | None, palette: np.ndarray | None) -> None:
        """Name and colour the classes (both optional; the palette may list more colours than classes)."""
        if class_names is not None and len(class_names) != self.num_classes:
            raise ValueError(f"{len(class_names)} class names for a model of {self.num_classes} classes")
        if palette is not None:
            palette = np.asarray(palette, dtype=np.uint8)
            if palette.ndim != 2 or palette.shape[1] != 3 or len(palette) < self.num_classes:
                raise ValueError(f"palette must be (>= {self.num_classes}, 3) RGB values, got shape {palette.shape}")
        self.class_names = list(class_names) if class_names is not None else None
        self.palette = palette

    def freeze_batchnorm(self, *, stats: bool = True) -> None:
        """Stop training every BatchNorm: affine parameters always, running statistics too when ``stats``.

        Frozen statistics are what DeepLab-v2's batch size 1-10 training means: BN layers stay in eval mode
        when the model is put in train mode.
        """
        for module in self.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.requires_grad_(False)
        self.bn_stats_frozen = stats
        self.train(self.training)

    def train(self, mode: bool = True) -> Segmenter:
        super().train(mode)
        if self.bn_stats_frozen:
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    @property
    def normalization(self) -> InputNormalization:
        """The input normalisation the backbone's weights expect (ImageNet RGB or Caffe BGR)."""
        return self.backbone.normalization

    @property
    def output_stride(self) -> int:
        return self.backbone.output_stride

    def head_logits(self, images: torch.Tensor) -> torch.Tensor:
        """The main head's logits at its own resolution (stride 4 to 16), before the upsampling of ``forward``."""
        return self.head(self.backbone(images))

    def forward(self, images: torch.Tensor) -> SegmentationOutput:
        """images: (N, 3, H, W) float32, normalised with ``self.normalization`` -> ``SegmentationOutput``."""
        size = images.shape[-2:]
        features = self.backbone(images)
        upsample = {"size": size, "mode": "bilinear", "align_corners": self.align_corners}
        logits = F.interpolate(self.head(features), **upsample)
        aux_logits = None
        if self.aux_head is not None:
            aux_logits = F.interpolate(self.aux_head(features), **upsample)
        return SegmentationOutput(logits, aux_logits)

    def optim_parameters(self, lr: float) -> list[dict[str, Any]]:
        """SGD parameter groups: backbone at ``lr``, heads at ``lr * head_lr_mult``; frozen parameters left out.

        The name and behaviour of the DeepLab-v2 port's method (there: 1x backbone, 10x classifier).
        """
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        heads = [p for name, p in self.named_parameters() if not name.startswith("backbone.") and p.requires_grad]
        return [{"params": backbone, "lr": lr}, {"params": heads, "lr": lr * self.head_lr_mult}]
