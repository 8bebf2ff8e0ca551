"""Feature extractors: the base class and ``dilate()`` (``base``), one module per family the core keeps (torchvision's
ResNets and MobileNetV3, DeepLab-v2's Caffe ResNet-101, the padded MobileNetV2 two publishers share, any timm CNN).
Publishers' own backbones live in their folders (``atrous.publishers``).

``BACKBONES``, ``backbone_entry`` and ``build_backbone`` know every publisher's backbones too: they are
``atrous.registry``'s, forwarded on first use (the registry imports this package's modules, so this face cannot
import it at its top).
"""

from __future__ import annotations

import importlib

from .base import OUTPUT_STRIDES, Backbone, BackboneEntry, ImageNetFormat, dilate

_ASSEMBLED = ("BACKBONES", "backbone_entry", "build_backbone")


def __getattr__(name: str):
    if name in _ASSEMBLED:
        return getattr(importlib.import_module("atrous.registry"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["BACKBONES", "OUTPUT_STRIDES", "Backbone", "BackboneEntry", "ImageNetFormat", "backbone_entry",
           "build_backbone", "dilate"]  # fmt: skip
