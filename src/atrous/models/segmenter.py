"""``Segmenter`` = backbone + head (+ aux head), and its one return type."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import Backbone
from .normalization import InputNormalization


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
    ``spec`` holds the ``build_model`` arguments, so checkpoints can rebuild the model.
    """

    def __init__(
        self,
        *,
        backbone: Backbone,
        head: nn.Module,
        aux_head: nn.Module | None = None,
        num_classes: int,
        head_lr_mult: float = 1.0,
        spec: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.aux_head = aux_head
        self.num_classes = num_classes
        self.head_lr_mult = head_lr_mult
        self.spec = dict(spec or {})
        self.bn_stats_frozen = False

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

    def forward(self, images: torch.Tensor) -> SegmentationOutput:
        """images: (N, 3, H, W) float32, normalised with ``self.normalization`` -> ``SegmentationOutput``."""
        size = images.shape[-2:]
        features = self.backbone(images)
        if self.head.uses_low_level:
            logits = self.head(features["out"], features["low"])
        else:
            logits = self.head(features["out"])
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        aux_logits = None
        if self.aux_head is not None:
            aux_logits = self.aux_head(features["aux"])
            aux_logits = F.interpolate(aux_logits, size=size, mode="bilinear", align_corners=False)
        return SegmentationOutput(logits, aux_logits)

    def optim_parameters(self, lr: float) -> list[dict[str, Any]]:
        """SGD parameter groups: backbone at ``lr``, heads at ``lr * head_lr_mult``; frozen parameters left out.

        The name and behaviour of the DeepLab-v2 port's method (there: 1x backbone, 10x classifier).
        """
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        heads = [p for name, p in self.named_parameters() if not name.startswith("backbone.") and p.requires_grad]
        return [{"params": backbone, "lr": lr}, {"params": heads, "lr": lr * self.head_lr_mult}]
