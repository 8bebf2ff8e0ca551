"""DeepLab-v2 as published: the Caffe ResNet-101 at OS8, rates 6-24, for PASCAL VOC's 21 classes."""

from __future__ import annotations

from ...models.spec import ModelSpec

PRESETS: dict[str, ModelSpec] = {
    "deeplabv2_resnet101_caffe": ModelSpec(name="deeplabv2", backbone="resnet101_caffe", num_classes=21),
}
