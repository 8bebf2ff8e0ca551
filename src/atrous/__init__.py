"""atrous: DeepLab (V2, V3, V3+) semantic segmentation for PyTorch."""

import os

# OpenMP threads that finish a kernel spin for a while before sleeping (libgomp's default: 300,000 spins). Alone on
# the machine that costs nothing measurable; beside another CPU-heavy process, the spinning threads take the cores
# that process needs and the demo's training slowed 2.4-10x instead of about 2x. 10,000 spins keeps the speed alone
# and the slowdown near proportional (benchmarks/shared_machine.py). Read once, when torch first starts OpenMP: set
# before importing torch; a value of the user's (or OMP_WAIT_POLICY) is kept.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")

from .build import build_model
from .data import build_dataset
from .errors import AtrousError, ConfigError, DataError, WeightsError
from .models import ModelSpec, SegmentationOutput, Segmenter
from .publishers.deeplabv2.port import get_deeplab_v2
from .registry import PRESETS, list_backbones, list_models, list_presets
from .version import __version__ as __version__
from .weights.load import WeightsReport, load_weights
from .weights.pretrained import from_pretrained, load_trained_model
from .weights.publish import ModelCard

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
    "ModelCard",
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
