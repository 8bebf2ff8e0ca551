"""open-mmlab/mmsegmentation: its ResNetV1c backbones, its ASPPHead and DepthwiseSeparableASPPHead (512 channels,
image pooling first, 3x3 bottleneck; the V3+ one always separable, the V3 one never), its files and its zoo."""

from ...models.architecture import Architecture
from ...models.heads.deeplab import FCNHead
from .. import Publisher, zoo_beside
from .format import FORMATS
from .heads import DeepLabV3BottleneckHead, DeepLabV3PlusBottleneckHead
from .resnet_v1c import BACKBONES

ARCHITECTURES: dict[str, Architecture] = {
    "deeplabv3_mmseg": Architecture(DeepLabV3BottleneckHead, FCNHead, backbone="resnet50_v1c", output_stride=8,
                                    separable=False),
    "deeplabv3plus_mmseg": Architecture(DeepLabV3PlusBottleneckHead, FCNHead, backbone="resnet50_v1c", output_stride=8,
                                        separable=False),
}  # fmt: skip

PUBLISHER = Publisher("open-mmlab/mmsegmentation", backbones=BACKBONES, architectures=ARCHITECTURES, formats=FORMATS,
                      zoo=zoo_beside(__file__))  # fmt: skip
