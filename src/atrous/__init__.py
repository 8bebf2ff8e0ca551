"""atrous: DeepLab (V2, V3, V3+) semantic segmentation for PyTorch."""

from .checkpoint import load_trained_model
from .data import build_dataset
from .errors import AtrousError, ConfigError, DataError, WeightsError
from .models import (
    PRESETS,
    ModelSpec,
    SegmentationOutput,
    Segmenter,
    build_model,
    list_backbones,
    list_models,
    list_presets,
)
from .models.deeplabv2_port import get_deeplab_v2
from .models.pretrained import from_pretrained
from .models.weights import WeightsReport, load_weights

__version__ = "0.1.0"

# Submodules README uses as `atrous.<module>.<name>` after a plain `import atrous`, imported on first use so that
# `import atrous` stays light (onnxruntime, matplotlib and the datasets load only when asked for).
_SUBMODULES = ("checkpoint", "config", "data", "engine", "evaluation", "export", "inference", "metrics", "models",
               "predict", "runtime")  # fmt: skip


def __getattr__(name: str):
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'atrous' has no attribute {name!r}")

__all__ = [
    "PRESETS",
    "AtrousError",
    "ConfigError",
    "DataError",
    "ModelSpec",
    "SegmentationOutput",
    "Segmenter",
    "WeightsError",
    "WeightsReport",
    "build_dataset",
    "build_model",
    "from_pretrained",
    "get_deeplab_v2",
    "list_backbones",
    "list_models",
    "list_presets",
    "load_trained_model",
    "load_weights",
]
