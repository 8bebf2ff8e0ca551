"""torchvision's DeepLabV3 files and presets (``deeplabv3_resnet50/101``, ``deeplabv3_mobilenet_v3_large``): positional
``DeepLabHead`` / ``FCNHead`` Sequentials; the MobileNetV3 backbone an IntermediateLayerGetter over ``features``."""

from __future__ import annotations

from torch import nn

from ...models.normalization import IMAGENET_RGB
from ...models.spec import ModelSpec
from ...weights.format import Format
from ...weights.keys import TORCHVISION_HEAD_KEYS, classes, rename_all, resnet

# Its DeepLabV3 models as named specs: OS8 for the ResNets, OS16 for MobileNetV3, rates (12, 24, 36) at both strides,
# an aux head (load their files with ``from_pretrained`` or ``--preset NAME --weights FILE``).
PRESETS: dict[str, ModelSpec] = {
    "deeplabv3_resnet50": ModelSpec(name="deeplabv3", backbone="resnet50", output_stride=8, atrous_rates=(12, 24, 36), aux=True),
    "deeplabv3_resnet101": ModelSpec(name="deeplabv3", backbone="resnet101", output_stride=8, atrous_rates=(12, 24, 36), aux=True),
    "deeplabv3_mobilenet_v3_large": ModelSpec(
        name="deeplabv3", backbone="mobilenet_v3_large", output_stride=16, atrous_rates=(12, 24, 36), aux=True
    ),
}  # fmt: skip

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
    return rename_all(state, TORCHVISION_HEAD_KEYS), ""


def _hints(name: str):
    def hints(model) -> list[str]:
        """torchvision's weights carry no dilation: say when the model will not reproduce its outputs."""
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
