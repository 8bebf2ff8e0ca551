"""torchvision: its DeepLabV3 files and presets. Its ResNet and MobileNetV3 backbones are the core's
(``atrous.models.backbones``), since every other publisher builds on them."""

from .. import Publisher, zoo_beside
from .format import FORMATS, PRESETS

PUBLISHER = Publisher("torchvision", formats=FORMATS, presets=PRESETS, zoo=zoo_beside(__file__))
