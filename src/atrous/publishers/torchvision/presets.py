"""torchvision's DeepLabV3 models as named specs: OS8 for the ResNets, OS16 for MobileNetV3, rates (12, 24, 36) at
both strides, an aux head (load their files with ``from_pretrained`` or ``--preset NAME --weights FILE``)."""

from __future__ import annotations

from ...models.spec import ModelSpec

PRESETS: dict[str, ModelSpec] = {
    "deeplabv3_resnet50": ModelSpec(name="deeplabv3", backbone="resnet50", output_stride=8, atrous_rates=(12, 24, 36), aux=True),
    "deeplabv3_resnet101": ModelSpec(name="deeplabv3", backbone="resnet101", output_stride=8, atrous_rates=(12, 24, 36), aux=True),
    "deeplabv3_mobilenet_v3_large": ModelSpec(
        name="deeplabv3", backbone="mobilenet_v3_large", output_stride=16, atrous_rates=(12, 24, 36), aux=True
    ),
}  # fmt: skip
