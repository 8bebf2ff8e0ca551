"""``Segmenter`` = backbone + head (+ aux head), and its one return type."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .backbones.base import Backbone
from .normalization import InputNormalization
from .spec import ModelSpec


class SegmentationOutput(NamedTuple):
    """What every atrous model returns, in train and eval mode alike.

    logits: (N, num_classes, H, W) float, pre-softmax, at the input's full resolution.
    aux_logits: the same shape from the auxiliary head, or None when the model has none.
    """

    logits: torch.Tensor
    aux_logits: torch.Tensor | None


def _at_least_zero(value: int) -> int:
    """max(0, value) in arithmetic: an exported graph computes it from each input's size (``max`` would freeze the
    example's)."""
    return (value + abs(value)) // 2


class Segmenter(nn.Module):
    """A DeepLab model: ``backbone`` features -> ``head`` (+ ``aux_head``) -> logits upsampled to the input size.

    ``head_lr_mult`` is the learning-rate multiplier of the heads in ``optim_parameters`` (10 for DeepLab-v2).
    ``spec``: the ``ModelSpec`` that builds this architecture, so checkpoints can rebuild the model.
    ``class_names`` and ``palette`` ((K, 3) uint8 RGB, K >= num_classes, usually 256): the labels of the data it was trained on, or
    None; checkpoints keep them, and predictions are named and coloured with them.
    ``pad_to`` ((height, width) or None): inputs are padded at the bottom and right to at least this canvas with
    zeros (the mean pixel, once normalised), the logits upsampled to the canvas and cut back to the input: how
    Google's TensorFlow DeepLab evaluates at its ``crop_size`` (``ModelSpec.pad_to``).
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
        pad_to: tuple[int, int] | None = None,
    ):
        super().__init__()
        self.pad_to = pad_to
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
        if self.pad_to is not None:
            # Its head resolution covers the padded canvas, not the input: no stride-exact way back.
            raise ConfigError(f"a model that pads its input to {tuple(self.pad_to)} has no head logits of the input "
                              "alone: max fusion of scales (--msc) cannot take it; mean fusion (--scales) can")  # fmt: skip
        return self.head(self.backbone(images))

    def forward(self, images: torch.Tensor) -> SegmentationOutput:
        """images: (N, 3, H, W) float32, normalised with ``self.normalization`` -> ``SegmentationOutput``."""
        height, width = images.shape[-2:]
        if self.pad_to is not None:
            # Bottom/right, as Google pads its crop: the padded rows and columns never shift the image's pixels.
            images = F.pad(images, (0, _at_least_zero(self.pad_to[1] - width), 0, _at_least_zero(self.pad_to[0] - height)))
        features = self.backbone(images)
        upsample = {"size": images.shape[-2:], "mode": "bilinear", "align_corners": self.align_corners}
        logits = self._without_padding(F.interpolate(self.head(features), **upsample), height, width)
        aux_logits = None
        if self.aux_head is not None:
            aux_logits = self._without_padding(F.interpolate(self.aux_head(features), **upsample), height, width)
        return SegmentationOutput(logits, aux_logits)

    def save_pretrained(self, folder, *, card=None, repo: str | None = None):
        """Write this model as a Hugging Face Hub folder (config.json, model.safetensors, README.md model card):
        ``atrous.from_pretrained(folder)`` reads it back exactly. ``card``: an ``atrous.ModelCard`` (data, recipe,
        scores, license); ``repo``: the "org/name" the card's loading line names."""
        from ..weights.publish import save_pretrained  # the Hub folder's format is the weights layer's

        return save_pretrained(self, folder, card=card, repo=repo)

    def push_to_hub(self, repo: str, *, private: bool | None = None, token: str | None = None, card=None,
                    commit_message: str | None = None) -> str:  # fmt: skip
        """Upload ``save_pretrained``'s folder to the Hub repository ``repo`` ("org/name"; created when missing) in
        one commit and return its URL; ``atrous.from_pretrained("hf-hub:org/name")`` reads it. Needs huggingface_hub
        and a token (``hf auth login``, HF_TOKEN or ``token``); refused offline before anything is written."""
        from ..weights.publish import push_to_hub

        return push_to_hub(self, repo, private=private, token=token, card=card, commit_message=commit_message)

    def _without_padding(self, logits: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """The logits of the input's own pixels, the padding to ``pad_to`` cut away."""
        return logits if self.pad_to is None else logits[..., :height, :width]

    def parameter_groups(
        self, *, lr: float, weight_decay: float | None = None, decay_norm_and_bias: bool = True
    ) -> list[dict[str, Any]]:
        """Optimizer parameter groups, the one rule atrous trains with: backbone at ``lr``, heads at ``lr *
        head_lr_mult``; frozen parameters left out. With ``decay_norm_and_bias=False`` the norm weights and biases
        (tensors of one dimension) of each part form a group of their own without weight decay.

        weight_decay: each decayed group's (None: the optimizer's own, no key set). Groups are named ("backbone",
        "backbone_no_decay", "head", "head_no_decay") and ordered as their (head, decayed) pair sorts, an order the
        optimizer state in checkpoints relies on."""
        groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            is_head = not name.startswith("backbone.")
            decayed = decay_norm_and_bias or param.ndim > 1
            groups.setdefault((is_head, decayed), []).append(param)
        result = []
        for (is_head, decayed), params in sorted(groups.items()):
            group = {"params": params, "lr": lr * (self.head_lr_mult if is_head else 1.0),
                     "name": f"{'head' if is_head else 'backbone'}{'' if decayed else '_no_decay'}"}  # fmt: skip
            if not decayed:
                group["weight_decay"] = 0.0
            elif weight_decay is not None:
                group["weight_decay"] = weight_decay
            result.append(group)
        return result

    def optim_parameters(self, lr: float) -> list[dict[str, Any]]:
        """SGD parameter groups: backbone at ``lr``, heads at ``lr * head_lr_mult``; frozen parameters left out.

        The name and behaviour of the DeepLab-v2 port's method (there: 1x backbone, 10x classifier): the groups of
        ``parameter_groups`` with every parameter decayed as the optimizer says."""
        return self.parameter_groups(lr=lr)
