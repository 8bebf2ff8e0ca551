"""torchvision's DeepLabV3 files (``deeplabv3_resnet50/101``, ``deeplabv3_mobilenet_v3_large``): positional
``DeepLabHead`` / ``FCNHead`` Sequentials; the MobileNetV3 backbone an IntermediateLayerGetter over ``features``."""

from __future__ import annotations

from ...models.normalization import IMAGENET_RGB
from ...weights.format import Format
from ...weights.keys import aspp_keys, classes, rename_all, resnet, under
from .presets import PRESETS

HEAD_KEYS = [
    *under(r"^classifier\.0\.", aspp_keys(r"0", r"1"), "head.aspp."),
    (r"^classifier\.1\.", "head.conv.conv."), (r"^classifier\.2\.", "head.conv.bn."), (r"^classifier\.4\.", "head.classifier."),
    (r"^aux_classifier\.0\.", "aux_head.conv.conv."), (r"^aux_classifier\.1\.", "aux_head.conv.bn."),
    (r"^aux_classifier\.4\.", "aux_head.classifier."),
    (r"^backbone\.(\d+)\.", r"backbone.features.\1."),  # MobileNetV3: IntermediateLayerGetter over `features`
]  # fmt: skip
_STRIDE = {"torchvision_deeplabv3_resnet": 8, "torchvision_deeplabv3_mobilenet_v3_large": 16}


def _deeplabv3(state) -> bool:
    return any(key.startswith("classifier.0.convs.") for key in state)


def _describe(state, contents, source):
    name = f"deeplabv3_{resnet(state)}" if "backbone.conv1.weight" in state else "deeplabv3_mobilenet_v3_large"
    aux = any(key.startswith("aux_classifier.") for key in state)
    # The file records neither the output stride nor the rates, but torchvision's builders fix both: they are implied,
    # not assumed, and a model asked with others computes something else (``from_pretrained`` says so).
    return PRESETS[name].with_overrides(num_classes=classes(state, "classifier.4.weight"), aux=aux), []


def _translate(state, model):
    return rename_all(state, HEAD_KEYS), ""


def _hints(name: str):
    def hints(model) -> list[str]:
        """torchvision's weights carry no dilation: say when the model will not reproduce its outputs."""
        from torch import nn

        aspp = getattr(model.head, "aspp", None)
        if aspp is None:
            return []
        rates = tuple(b.conv.dilation[0] for b in aspp.atrous_branches if isinstance(getattr(b, "conv", None), nn.Conv2d))
        if rates == (12, 24, 36) and model.output_stride == _STRIDE[name]:
            return []
        hint = (
            f"torchvision's model runs at output stride {_STRIDE[name]} with ASPP rates (12, 24, 36); this one at "
            f"{model.output_stride} with {rates}, so its outputs differ from torchvision's (build it from the preset of "
            "the same name, atrous.models.PRESETS or --preset, to reproduce them)"
        )
        return [hint]

    return hints


FORMATS = [
    Format("torchvision_deeplabv3_resnet", lambda state, source: _deeplabv3(state) and "backbone.conv1.weight" in state,
           _translate, _describe, IMAGENET_RGB, _hints("torchvision_deeplabv3_resnet")),
    Format("torchvision_deeplabv3_mobilenet_v3_large", lambda state, source: _deeplabv3(state), _translate, _describe,
           IMAGENET_RGB, _hints("torchvision_deeplabv3_mobilenet_v3_large")),
]  # fmt: skip
