"""Google's TensorFlow DeepLab (tensorflow/models ``research/deeplab``): the authors' own networks as its code builds
them (Xception-41/65/71, MobileNetV2 at depth 1.0 and 0.5, ResNet-v1-50/101-beta, MobileNetV3 large/small "seg",
EdgeTPU-MobileNet at 1.0 and 0.75; its DeepLabV3 head without the 3x3 conv, the dense prediction cell of its
Xception-71 Cityscapes models, the squeeze-and-excite head of its MobileNetV3 ones), its TensorFlow checkpoints (read
by ``atrous.weights.tf_bundle``, no TensorFlow) and its model zoo. Facts: ``docs/google-deeplab-facts.md``."""

from ...models.architecture import Architecture
from ...models.backbones.base import BackboneEntry
from ...models.heads.deeplab import FCNHead
from .. import Publisher, zoo_beside
from .format import FORMATS
from .heads import DeepLabV3GoogleHead, DPCDecoderHead, MobileNetV3SegHead
from .layers import GOOGLE_RGB
from .mobilenet_v2 import GoogleMobileNetV2
from .mobilenet_v3 import GoogleMobileNetV3
from .resnet_beta import GoogleResNetBeta
from .xception import GoogleXception


def _imagenet_hint(zoo_name: str) -> str:
    return f"Google publishes its ImageNet checkpoint as a TensorFlow tarball: pretrained_backbone={zoo_name}"


BACKBONES: dict[str, BackboneEntry] = {
    **{f"xception{depth}_google": BackboneEntry(
        build=lambda depth=depth, **kwargs: GoogleXception(depth, **kwargs), normalization=GOOGLE_RGB,
        imagenet_hint=_imagenet_hint(f"xception_{depth}_imagenet"),
    ) for depth in (41, 65, 71)},
    "mobilenet_v2_google": BackboneEntry(
        build=lambda **kwargs: GoogleMobileNetV2(1.0, **kwargs), normalization=GOOGLE_RGB,
        imagenet_hint="Google's DeepLab starts it from slim's mobilenet_v2_1.0_224 ImageNet checkpoint, which atrous "
        "reads as a TensorFlow checkpoint: pass its path (model.ckpt-... prefix or .index)",
    ),
    # DeepLab rounds no channel count at 0.5 (slim's ImageNet MobileNetV2-0.5 rounds to 8: its shapes differ).
    "mobilenet_v2_dm05_google": BackboneEntry(
        build=lambda **kwargs: GoogleMobileNetV2(0.5, **kwargs), normalization=GOOGLE_RGB,
        imagenet_hint="Google publishes no ImageNet weights of DeepLab's unrounded MobileNetV2-0.5",
    ),
    # Google publishes them trained on Cityscapes only (MobileNetV3: "No ImageNet"; EdgeTPU: its ImageNet init is
    # not in the DeepLab zoo).
    **{f"mobilenet_v3_{size}_seg_google": BackboneEntry(
        build=lambda size=size, **kwargs: GoogleMobileNetV3(f"{size}_seg", **kwargs), normalization=GOOGLE_RGB,
        imagenet_hint="Google's DeepLab MobileNetV3 models start from no ImageNet weights (model_zoo.md)",
    ) for size in ("large", "small")},
    **{name: BackboneEntry(
        build=lambda multiplier=multiplier, **kwargs: GoogleMobileNetV3("edgetpu", multiplier, **kwargs),
        normalization=GOOGLE_RGB,
        imagenet_hint="Google's EdgeTPU-DeepLab starts from an EdgeTPU-MobileNet ImageNet checkpoint of slim's, not in "
        "the DeepLab zoo: pass its path (a TensorFlow checkpoint)",
    ) for name, multiplier in (("mobilenet_edgetpu_google", 1.0), ("mobilenet_edgetpu_dm075_google", 0.75))},
    **{f"resnet{depth}_beta_google": BackboneEntry(
        build=lambda depth=depth, **kwargs: GoogleResNetBeta(depth, **kwargs), normalization=GOOGLE_RGB,
        imagenet_hint=_imagenet_hint(f"resnet_v1_{depth}_beta_imagenet"),
    ) for depth in (50, 101)},
}  # fmt: skip

ARCHITECTURES: dict[str, Architecture] = {
    "deeplabv3_google": Architecture(DeepLabV3GoogleHead, FCNHead, backbone="xception65_google", output_stride=16),
    # EdgeTPU-DeepLab-slim's: ASPP of 128 channels.
    "deeplabv3_google_slim": Architecture(lambda **kwargs: DeepLabV3GoogleHead(width=128, **kwargs), FCNHead,
                                          backbone="mobilenet_edgetpu_dm075_google", output_stride=16),
    "deeplabv3plus_mnv3_google": Architecture(MobileNetV3SegHead, FCNHead, backbone="mobilenet_v3_large_seg_google",
                                              output_stride=32, default_rates=lambda output_stride: (), separable=False,
                                              takes_output_stride=True),
    "deeplabv3plus_dpc_google": Architecture(DPCDecoderHead, FCNHead, backbone="xception71_google", output_stride=16,
                                             default_rates=lambda output_stride: (), separable=False,
                                             takes_output_stride=True),
}  # fmt: skip

PUBLISHER = Publisher("tensorflow/models research/deeplab (Google)", backbones=BACKBONES, architectures=ARCHITECTURES,
                      formats=FORMATS, zoo=zoo_beside(__file__))  # fmt: skip
