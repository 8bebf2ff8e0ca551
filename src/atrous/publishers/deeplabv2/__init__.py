"""DeepLab-v2's Caffe-converted files and the widely used PyTorch port's checkpoints (``port.get_deeplab_v2`` keeps
the port's entry point). The architecture (``deeplabv2``) and the Caffe ResNet-101 are the core's: the paper's."""

from .. import Publisher, zoo_beside
from .format import FORMATS, PRESETS

PUBLISHER = Publisher("DeepLab-v2 (Caffe) and its PyTorch port", formats=FORMATS, presets=PRESETS,
                      zoo=zoo_beside(__file__))  # fmt: skip
