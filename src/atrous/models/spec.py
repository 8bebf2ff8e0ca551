"""``ModelSpec``: the one description of a model. It is ``build_model``'s arguments, ``Config.model``, what every
checkpoint stores (as a plain dict) and what the command line edits with ``dataclasses.replace``.

A leaf: it checks the values it holds by themselves (ranges, types). Whether its names exist (an architecture, a
backbone, a stride that backbone reaches) is the registry's to say (``atrous.registry.check_spec``), since the
publishers register names of their own; ``build_model``, configs and ``from_pretrained`` check through it."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..errors import ConfigError

FirstBlockDilation = Literal["previous", "stage"]
OutputStride = Literal[4, 8, 16, 32]
FrozenBN = Literal["none", "affine", "all"]

FROZEN_BN_CHOICES: tuple[str, ...] = ("none", "affine", "all")
MAX_CLASSES = 65535  # masks hold class indices in at most 16 bits (255 stays the ignore label below that)
# Where the starting weights come from: not part of the architecture. A built model's ``spec`` has them cleared,
# since from then on its state dict holds the weights (and a checkpoint must not download anything to rebuild).
INIT_FIELDS = ("pretrained_backbone", "weights")


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


@dataclass(frozen=True)
class ModelSpec:
    """A DeepLab model. ``None`` fields take the architecture's default (see ``atrous.models.MODELS``).

    name: the head layout, ``deeplabv2`` | ``deeplabv3`` | ``deeplabv3plus``, or a publisher's (``atrous.list_models()``).
    backbone: a name from ``atrous.list_backbones()``; default ``resnet101_caffe`` for deeplabv2, else ``resnet50``.
    output_stride: 8, 16 or 32 (the HRNets: 4 only); default 8 for deeplabv2, 16 otherwise, the HRNets' 4.
    atrous_rates: default (6, 12, 18, 24) for deeplabv2; (6, 12, 18) at OS16 for V3/V3+, scaled with the stride.
        An empty list: an ASPP of its 1x1 and image-pooling branches only (Google's MobileNetV2 models).
    multi_grid: per-block dilation multipliers of the backbone's last stage, e.g. (1, 2, 4).
    multi_grid_absolute: ``multi_grid`` gives the last stage's dilations themselves, not multipliers of its own
        (mmsegmentation's ``d16-mg124``: layer4 dilations 1, 2, 4 at output stride 16).
    separable: atrous-separable (depthwise + pointwise) convs in ASPP and decoder (V3/V3+).
    frozen_bn: "none", "affine" (BN affine parameters not trained) or "all" (statistics frozen too: BN stays in
        eval mode in training). Default "all" for deeplabv2, "none" otherwise.
    head_lr_mult: learning-rate multiplier of the heads; default 10 for deeplabv2, 1 otherwise.
    first_block_dilation: the dilation of a dilated stage's first block, "previous" (torchvision's rule) or "stage"
        (segmentation_models_pytorch's, DeepLab-v2's); None: the backbone's own rule.
    align_corners: of the bilinear upsampling of the logits, and of the features inside heads that upsample them
        (True in segmentation_models_pytorch and jfzhang95).
    pretrained_backbone: None, "imagenet" (the backbone's published ImageNet weights) or a weights file.
    weights: a weights file of any format ``load_weights`` reads, loaded into the whole model after building.
    pad_to: (height, width): inputs are padded at the bottom and right to at least this size with the value their
        normalisation maps the mean pixel to (0), run through the network, and the logits cut back to the input's
        size: how Google's TensorFlow DeepLab evaluates (its ``crop_size``, e.g. 513x513 for VOC). The image
        pooling then averages over the padded canvas, as Google's does. None: no padding.
    """

    name: str = "deeplabv3"
    backbone: str | None = None
    num_classes: int = 21
    output_stride: OutputStride | None = None
    aux: bool = False
    atrous_rates: tuple[int, ...] | None = None
    multi_grid: tuple[int, ...] | None = None
    multi_grid_absolute: bool = False
    separable: bool = False
    frozen_bn: FrozenBN | None = None
    head_lr_mult: float | None = None
    first_block_dilation: FirstBlockDilation | None = None
    align_corners: bool = False
    pretrained_backbone: str | None = None
    weights: str | None = None
    pad_to: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        for name in ("atrous_rates", "multi_grid", "pad_to"):  # lists from YAML or JSON; frozen: set through object
            value = getattr(self, name)
            if value is not None:
                if not isinstance(value, (list, tuple)):
                    raise ConfigError(f"{name} must be a list of integers, got {value!r}")
                object.__setattr__(self, name, tuple(value))
        for name in INIT_FIELDS:
            if isinstance(getattr(self, name), Path):
                object.__setattr__(self, name, str(getattr(self, name)))
        for name in ("name", "backbone"):
            value = getattr(self, name)
            if not (isinstance(value, str) or (name == "backbone" and value is None)):
                raise ConfigError(f"{name} must be a name (a string), got {value!r}")
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or not 1 <= self.num_classes <= MAX_CLASSES:
            raise ConfigError(f"num_classes must be an integer in [1, {MAX_CLASSES}], got {self.num_classes!r}")
        if self.frozen_bn is not None and self.frozen_bn not in FROZEN_BN_CHOICES:
            raise ConfigError(f"unknown frozen_bn {self.frozen_bn!r}; choose from {list(FROZEN_BN_CHOICES)}")
        if self.atrous_rates is not None and not all(_is_count(v) for v in self.atrous_rates):
            raise ConfigError(f"atrous_rates must be a list of integers >= 1 (empty: no atrous branches), got "
                              f"{list(self.atrous_rates)}")  # fmt: skip
        if self.multi_grid is not None and (not self.multi_grid or not all(_is_count(v) for v in self.multi_grid)):
            raise ConfigError(f"multi_grid must be a non-empty list of integers >= 1, got {list(self.multi_grid)}")
        if self.pad_to is not None and (len(self.pad_to) != 2 or not all(_is_count(v) for v in self.pad_to)):
            raise ConfigError(f"pad_to must be [height, width], two integers >= 1, got {list(self.pad_to)}")
        if self.multi_grid_absolute and self.multi_grid is None:
            raise ConfigError("multi_grid_absolute needs multi_grid (the last stage's dilations)")
        if self.first_block_dilation not in (None, "previous", "stage"):
            raise ConfigError(f"unknown first_block_dilation {self.first_block_dilation!r}; choose from ['previous', "
                              "'stage']")  # fmt: skip
        if self.head_lr_mult is not None and not (
            isinstance(self.head_lr_mult, (int, float)) and 0 < self.head_lr_mult < math.inf  # NaN fails too
        ):
            raise ConfigError(f"head_lr_mult must be a finite number > 0, got {self.head_lr_mult}")

    def architecture(self) -> ModelSpec:
        """The spec without where its starting weights came from (``INIT_FIELDS`` cleared)."""
        return dataclasses.replace(self, **{name: None for name in INIT_FIELDS})

    def to_dict(self) -> dict[str, Any]:
        """Plain values only (lists, not tuples): YAML- and ``torch.load(weights_only=True)``-safe."""
        return {key: list(value) if isinstance(value, tuple) else value for key, value in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, source: str = "model spec") -> ModelSpec:
        """The inverse of ``to_dict``; unknown keys are an error naming them and the valid ones."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown model spec key {unknown[0]!r}; valid keys: {sorted(known)}")
        return cls(**values)

    def with_overrides(self, **overrides: Any) -> ModelSpec:
        """``dataclasses.replace`` with the fields whose value is not None: an unset command-line flag never
        overwrites a saved value."""
        return dataclasses.replace(self, **{key: value for key, value in overrides.items() if value is not None})
