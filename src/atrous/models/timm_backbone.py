"""Any timm model with ``features_only`` as a DeepLab backbone: ``backbone="timm:<model name>"``.

timm (PyTorch Image Models) builds the network, dilates it to the output stride (``output_stride=8|16``, for the
CNN families that support it) and reports each feature's channels and reduction (``feature_info``). The heads
take features by reduction: "low" is the first at stride 4 (the V3+ decoder's), "out" the deepest (ASPP's), "aux"
the one before it (the nominal stride-16 stage, the aux head's). The input normalisation is what timm's
``pretrained_cfg`` declares for the model (e.g. 0.5/0.5 for ``xception65``, ImageNet's for most).

timm is an optional extra (``pip install 'atrous[timm]'``), imported only when a ``timm:`` backbone is asked for.
"""

from __future__ import annotations

import functools

import torch

from ..errors import ConfigError, MissingDependencyError
from .backbones import Backbone, BackboneEntry
from .normalization import IMAGENET_RGB, InputNormalization

PREFIX = "timm:"
# Families whose timm models take output_stride (by dilation); named in the error for one that does not.
DILATABLE_FAMILIES = "ResNet/ResNet-D/ResNeXt/ResNeSt, RegNet, EfficientNet, MobileNetV3/V4, ConvNeXt, Xception"


def is_timm(name: str) -> bool:
    return name.startswith(PREFIX)


def _timm():
    try:
        import timm
    except ImportError as error:
        raise MissingDependencyError(
            "timm backbones need the timm package: pip install 'atrous[timm]' (or pip install timm)"
        ) from error
    return timm


@functools.cache
def timm_entry(name: str) -> BackboneEntry:
    """The registry entry of ``timm:<model>``; ``ConfigError`` for a name timm does not know."""
    timm = _timm()
    model_name = name[len(PREFIX) :]
    if not timm.is_model(model_name):
        close = timm.list_models(f"*{model_name.split('_')[0]}*")[:8]
        raise ConfigError(f"unknown timm model {model_name!r} (backbone {name!r}); "
                          f"{'similar: ' + ', '.join(close) + '; ' if close else ''}list them with "
                          "timm.list_models('*pattern*')")  # fmt: skip
    config = timm.models.get_pretrained_cfg(model_name)
    mean = getattr(config, "mean", None) or (0.485, 0.456, 0.406)
    std = getattr(config, "std", None) or (0.229, 0.224, 0.225)
    normalization = InputNormalization(
        name=f"timm_{model_name}", mean=tuple(255 * value for value in mean), std=tuple(255 * value for value in std),
        channel_order="RGB",
    )  # fmt: skip
    if (normalization.mean, normalization.std) == (IMAGENET_RGB.mean, IMAGENET_RGB.std):
        normalization = IMAGENET_RGB  # the same numbers: one name, so weights made for either are recognised
    return BackboneEntry(
        build=functools.partial(TimmBackbone, model_name), normalization=normalization, output_strides=(8, 16, 32),
        imagenet_hint=f"timm's {model_name} ImageNet weights are not read through atrous yet: build the model, then "
        "load timm.create_model(name, pretrained=True).state_dict() into model.backbone.body (strict=False)",
    )  # fmt: skip


class TimmBackbone(Backbone):
    """``timm.create_model(model_name, features_only=True, output_stride=...)`` as ``body``; returns its "low",
    "aux" and "out" features (see the module's docstring)."""

    def __init__(self, model_name: str, *, output_stride: int, multi_grid=None, **_rules):
        super().__init__()
        if multi_grid:
            raise ConfigError(f"multi_grid is not an option of timm backbones (timm:{model_name}): leave it unset")
        timm = _timm()
        stride = {} if output_stride == 32 else {"output_stride": output_stride}
        try:
            self.body = timm.create_model(model_name, features_only=True, pretrained=False, **stride)
        except (TypeError, AssertionError, RuntimeError) as error:
            if not stride:
                raise ConfigError(f"timm model {model_name!r} cannot give features (features_only): {error}") from error
            raise ConfigError(
                f"timm model {model_name!r} does not reach output_stride {output_stride} ({error}); families that "
                f"do (by dilation): {DILATABLE_FAMILIES}. Transformers with fixed patching keep their own stride"
            ) from error
        reductions = list(self.body.feature_info.reduction())
        channels = list(self.body.feature_info.channels())
        if reductions[-1] != output_stride:
            raise ConfigError(f"timm model {model_name!r} built for output_stride {output_stride} reaches stride "
                              f"{reductions[-1]} (its features: strides {reductions}): choose another output_stride")  # fmt: skip
        if len(reductions) < 3 or 4 not in reductions:
            raise ConfigError(f"timm model {model_name!r} has features at strides {reductions}: DeepLab's heads need "
                              "a stride-4 feature and two deeper stages")  # fmt: skip
        self.indices = {"low": reductions.index(4), "aux": len(reductions) - 2, "out": len(reductions) - 1}
        self.channels = {key: channels[index] for key, index in self.indices.items()}
        self.strides = {key: reductions[index] for key, index in self.indices.items()}
        self.output_stride = output_stride

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """images: (N, 3, H, W) float32, normalised -> {"low", "aux", "out"} feature maps."""
        features = self.body(images)
        return {key: features[index] for key, index in self.indices.items()}
