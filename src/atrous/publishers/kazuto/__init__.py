"""kazuto1011/deeplab-pytorch: its DeepLabV3 (ASPP straight into the classifier, as in the paper), the network of
DeepLab-v2's COCO-pretrained init file (its "DeepLabV1": the Caffe ResNet-101 at OS8 and a 1x1 classifier), its files
and its zoo (DeepLab-v2 on VOC and COCO-Stuff)."""

from ...models.architecture import Architecture
from ...models.heads.deeplab import FCNHead
from .. import Publisher, zoo_beside
from .format import FORMATS
from .heads import ClassifierHead, DeepLabV3PaperHead

ARCHITECTURES: dict[str, Architecture] = {
    "deeplabv1_kazuto": Architecture(ClassifierHead, FCNHead, backbone="resnet101_caffe", output_stride=8,
                                     default_rates=lambda output_stride: (), frozen_bn="all", head_lr_mult=10.0,
                                     separable=False),
    "deeplabv3_kazuto": Architecture(DeepLabV3PaperHead, FCNHead, backbone="resnet101_caffe", output_stride=16),
}  # fmt: skip

PUBLISHER = Publisher("kazuto1011/deeplab-pytorch", architectures=ARCHITECTURES, formats=FORMATS,
                      zoo=zoo_beside(__file__))  # fmt: skip
