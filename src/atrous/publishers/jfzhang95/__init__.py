"""jfzhang95/pytorch-deeplab-xception: its MobileNetV2 variant (the padded one, with its own dilation rule), fyu's
DRN-D-54 and its Aligned Xception-65, read from its files (its DeepLabV3+ is the core's, with ``align_corners``)."""

from collections.abc import Mapping

import torch

from ...models.backbones.base import BackboneEntry, ImageNetFormat
from ...models.backbones.padded_mobilenet_v2 import PaddedMobileNetV2Backbone
from ...models.normalization import IMAGENET_RGB
from .. import Publisher
from .aligned_xception import AlignedXceptionBackbone
from .drn import drn_d_54
from .format import FORMATS


def _fyu_drn_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """fyu/drn's DRN-D keys -> atrous's: its single-conv layers are positional Sequentials (conv 0, BN 1, ReLU 2),
    atrous names them (``layer0.conv``, ``layer0.bn``); its "fc" classifier dropped."""
    renamed = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "fc":
            continue
        if parts[0] in ("layer0", "layer1", "layer2", "layer7", "layer8"):
            parts[1] = ("conv", "bn")[int(parts[1])]
        renamed[".".join(parts)] = value
    return renamed


FYU_DRN = ImageNetFormat(
    "fyu_drn",
    recognise=lambda state: "layer0.0.weight" in state and "layer8.0.weight" in state,
    translate=_fyu_drn_keys,
)

BACKBONES: dict[str, BackboneEntry] = {
    "mobilenet_v2_jfzhang95": BackboneEntry(
        build=lambda **kwargs: PaddedMobileNetV2Backbone(**kwargs, stem_padding=1, lagging=True),
        normalization=IMAGENET_RGB,
        imagenet_hint="jfzhang95 initialises it from its own mobilenet_v2-6a65762b.pth: pass that file's path",
    ),
    # fyu/drn's DRN-D-54 as jfzhang95 builds it (output stride 8 only).
    "drn_d_54": BackboneEntry(
        build=drn_d_54, normalization=IMAGENET_RGB, imagenet_format=FYU_DRN, output_strides=(8,),
        imagenet_hint="jfzhang95 initialises it from fyu/drn's http://dl.yf.io/drn/drn_d_54-0e0534ff.pth: pass that "
        "file's path",
    ),
    # Its Aligned Xception-65 (its own BN placement and in-place ReLUs).
    "xception65_jfzhang95": BackboneEntry(
        build=AlignedXceptionBackbone, normalization=IMAGENET_RGB,
        imagenet_hint="jfzhang95 initialises it, in part, from Cadene's Keras-converted Xception (not Xception-65), "
        "http://data.lip6.fr/cadene/pretrainedmodels/xception-b5690688.pth, which atrous does not read",
    ),
}

PUBLISHER = Publisher("jfzhang95/pytorch-deeplab-xception", backbones=BACKBONES, formats=FORMATS)
