"""KerasHub's DeepLabV3+ (keras/deeplab_v3_plus_resnet50_pascalvoc and any ``DeepLabV3ImageSegmenter`` on its
ResNet-50, v1 or v2): its ResNet, its head (one 1x1 decoder conv, BatchNorm eps 1e-3), its Keras 3 ``.weights.h5``
files and preset folders (read with h5py: no Keras, no TensorFlow) and its Hub model in the zoo. Facts:
``docs/hub-facts.md``."""

from ...models.architecture import Architecture
from ...models.backbones.base import BackboneEntry
from ...models.heads.deeplab import FCNHead
from .. import Publisher, zoo_beside
from .format import FORMATS, KERAS_RAW_RGB
from .head import DeepLabV3PlusKerasHead
from .resnet import KerasHubResNet

_HINT = "KerasHub publishes its ImageNet ResNet-50 as a Keras preset (resnet_50_imagenet); atrous reads its segmenter"

BACKBONES: dict[str, BackboneEntry] = {
    name: BackboneEntry(build=lambda pre=pre, **kwargs: KerasHubResNet(pre_activation=pre, **kwargs),
                        normalization=KERAS_RAW_RGB, imagenet_hint=_HINT, output_strides=(32,))
    for name, pre in (("resnet50_keras_hub", False), ("resnet50_v2_keras_hub", True))
}  # fmt: skip

ARCHITECTURES: dict[str, Architecture] = {
    "deeplabv3plus_keras_hub": Architecture(DeepLabV3PlusKerasHead, FCNHead, backbone="resnet50_keras_hub",
                                            output_stride=32, default_rates=lambda output_stride: (6, 12, 18),
                                            separable=False),
}  # fmt: skip

PUBLISHER = Publisher("KerasHub (keras-team/keras-hub)", backbones=BACKBONES, architectures=ARCHITECTURES,
                      formats=FORMATS, zoo=zoo_beside(__file__))  # fmt: skip
