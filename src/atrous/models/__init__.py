"""The core of a DeepLab model, publisher-free: the spec (``ModelSpec``), the layers, the backbones and heads of the
papers, the ``Segmenter`` that composes them.

The names that need every publisher's too (``build_model``, ``PRESETS``, ``MODELS``, ``BACKBONES``, ``list_*``) are
assembled above this package, by ``atrous.registry``, which imports these modules: this face forwards them on first
use (an import at its top would run before the registry exists, since importing any module of this package runs this
file first).
"""

from __future__ import annotations

import importlib

from .architecture import Architecture
from .backbones.base import Backbone
from .normalization import CAFFE_BGR, IMAGENET_RGB, InputNormalization
from .segmenter import SegmentationOutput, Segmenter
from .spec import ModelSpec

# name -> the module above this package that defines it
_ASSEMBLED = {
    **dict.fromkeys(("BACKBONES", "MODELS", "PRESETS", "TORCHVISION_DEEPLABV3", "list_backbones", "list_models",
                     "list_presets", "make_spec", "preset"), "atrous.registry"),
    "build_model": "atrous.build",
}


def __getattr__(name: str):
    if name in _ASSEMBLED:
        return getattr(importlib.import_module(_ASSEMBLED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BACKBONES",
    "CAFFE_BGR",
    "IMAGENET_RGB",
    "MODELS",
    "PRESETS",
    "TORCHVISION_DEEPLABV3",
    "Architecture",
    "Backbone",
    "InputNormalization",
    "ModelSpec",
    "SegmentationOutput",
    "Segmenter",
    "build_model",
    "list_backbones",
    "list_models",
    "list_presets",
    "make_spec",
    "preset",
]
