"""VainF/DeepLabV3Plus-Pytorch: its MobileNetV2 (the padded one it shares with jfzhang95), Xception and HRNetV2
backbones, its DeepLabV3+ decoder (low-level feature first, one 3x3 conv), its files and its Dropbox zoo."""

from ...models.architecture import Architecture
from ...models.backbones.base import BackboneEntry
from ...models.backbones.padded_mobilenet_v2 import PaddedMobileNetV2Backbone
from ...models.heads.deeplab import FCNHead
from ...models.normalization import IMAGENET_RGB
from .. import Publisher, zoo_beside
from .format import FORMATS
from .head import DeepLabV3PlusLowFirstHead
from .hrnet import hrnetv2
from .xception import xception_vainf

_HRNET_HINTS = {
    32: ("VainF initialises it from its model_best_epoch96_edit.pth (Google Drive only: https://drive.google.com/file/d/"
         "1NxCK7Zgn5PmeS7W1jYLt5J9E0RRZ2oyF; its keys under 'state_dict', with an ImageNet classifier 'bn_classifier'), "
         "which atrous does not read as a backbone file"),
    48: "VainF publishes no ImageNet weights for it (its hrnetv2.py: 'HRNetv2-48 not available yet')",
}  # fmt: skip

BACKBONES: dict[str, BackboneEntry] = {
    # Its own padding; ImageNet weights: torchvision's.
    "mobilenet_v2_vainf": BackboneEntry(
        build=PaddedMobileNetV2Backbone, normalization=IMAGENET_RGB,
        imagenet_hint="VainF initialises it from torchvision's mobilenet_v2 ImageNet file: pass that file's path",
    ),
    # Cadene's Keras port of Chollet's Xception. Normalisation: VainF's main.py feeds every model ImageNet mean/std,
    # this one too, although Cadene's ImageNet weights were trained on 0.5/0.5-normalised input; its files are
    # trained with (and expect) ImageNet mean/std.
    "xception_vainf": BackboneEntry(
        build=xception_vainf, normalization=IMAGENET_RGB,
        imagenet_hint="VainF initialises it from Cadene's http://data.lip6.fr/cadene/pretrainedmodels/xception-"
        "43020ad28.pth (keys without VainF's 'backbone.' prefix), which atrous does not read",
    ),
    # HRNetV2-W32/W48: features at stride 4, no other output stride.
    **{f"hrnetv2_w{width}": BackboneEntry(
        build=lambda width=width, **kwargs: hrnetv2(width, **kwargs), normalization=IMAGENET_RGB, output_strides=(4,),
        imagenet_hint=hint,
    ) for width, hint in _HRNET_HINTS.items()},
}  # fmt: skip

ARCHITECTURES: dict[str, Architecture] = {
    "deeplabv3plus_vainf": Architecture(DeepLabV3PlusLowFirstHead, FCNHead, backbone="resnet50", output_stride=16),
}

PUBLISHER = Publisher("VainF/DeepLabV3Plus-Pytorch", backbones=BACKBONES, architectures=ARCHITECTURES,
                      formats=FORMATS, zoo=zoo_beside(__file__))  # fmt: skip
