"""segmentation_models_pytorch: its DeepLabV3+ decoder (pair-separable convs, one decoder conv) and its files
(``torch.save`` state dicts and ``save_pretrained`` folders)."""

from ...models.architecture import Architecture
from ...models.heads.deeplab import FCNHead
from .. import Publisher
from .format import FORMATS
from .head import DeepLabV3PlusPairHead

ARCHITECTURES: dict[str, Architecture] = {
    "deeplabv3plus_smp": Architecture(DeepLabV3PlusPairHead, FCNHead, backbone="resnet50", output_stride=16,
                                      default_rates=lambda output_stride: (12, 24, 36), align_corners=True),
}  # fmt: skip

PUBLISHER = Publisher("segmentation_models_pytorch", architectures=ARCHITECTURES, formats=FORMATS)
