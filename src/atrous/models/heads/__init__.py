"""Heads: each maps the backbone's feature dict to logits (``atrous.models.architecture.HeadBuilder``). The papers'
are in ``deeplab``; the building blocks in ``atrous.models.layers``; publishers' variants in their folders."""

from ..layers import (
    ASPP,
    ConvBNReLU,
    DepthwiseSeparableConv,
    ImagePooling,
    PairSeparableConvBNReLU,
    SeparableConvBNReLU,
    conv3x3_bn_relu,
)
from .deeplab import ARCHITECTURES, DeepLabV2Head, DeepLabV3Head, DeepLabV3PlusHead, FCNHead

__all__ = ["ARCHITECTURES", "ASPP", "ConvBNReLU", "DeepLabV2Head", "DeepLabV3Head", "DeepLabV3PlusHead",
           "DepthwiseSeparableConv", "FCNHead", "ImagePooling", "PairSeparableConvBNReLU", "SeparableConvBNReLU",
           "conv3x3_bn_relu"]  # fmt: skip
