"""atrous: DeepLab (V2, V3, V3+) semantic segmentation for PyTorch."""

from .models import SegmentationOutput, Segmenter, build_model, list_backbones, list_models
from .models.deeplabv2_port import get_deeplab_v2
from .models.weights import WeightsError, WeightsReport, load_weights

__version__ = "0.1.0"

__all__ = [
    "SegmentationOutput",
    "Segmenter",
    "WeightsError",
    "WeightsReport",
    "build_model",
    "get_deeplab_v2",
    "list_backbones",
    "list_models",
    "load_weights",
]
