"""Hugging Face transformers' DeepLabV3 models: ``MobileNetV2ForSemanticSegmentation`` (Google's MobileNetV2
DeepLabV3, built as Google's own: ``deeplabv3_google``), ``MobileViTForSemanticSegmentation`` and
``MobileViTV2ForSemanticSegmentation`` (Apple's, on timm's networks as transformers computes them); their
``save_pretrained`` folders and Hub repositories (``hf-hub:org/name``), and the Hub models in its zoo. Facts:
``docs/hub-facts.md``."""

from ...models.architecture import Architecture
from ...models.backbones.base import BackboneEntry
from ...models.heads.deeplab import FCNHead
from .. import Publisher, zoo_beside
from .format import FORMATS
from .heads import DeepLabV3TransformersHead
from .layers import HF_BGR_UNIT
from .mobilevit import V1_NETWORKS, V2_NETWORKS, TransformersMobileViT


def _entry(timm_name: str) -> BackboneEntry:
    return BackboneEntry(
        build=lambda **kwargs: TransformersMobileViT(timm_name, **kwargs), normalization=HF_BGR_UNIT,
        imagenet_hint=f"Apple's ImageNet {timm_name} is on the Hub as a transformers classifier; its segmentation "
        "models (atrous models --pretrained) start from it",
    )  # fmt: skip


BACKBONES: dict[str, BackboneEntry] = {name: _entry(timm_name) for name, timm_name in {**V1_NETWORKS, **V2_NETWORKS}.items()}


def _fixed_rates(output_stride: int) -> tuple[int, ...]:
    return (6, 12, 18)  # transformers keeps the config's rates at every output stride


ARCHITECTURES: dict[str, Architecture] = {
    f"deeplabv3_transformers_{width}": Architecture(
        lambda width=width, **kwargs: DeepLabV3TransformersHead(width=width, **kwargs), FCNHead,
        backbone=backbone, output_stride=16, default_rates=_fixed_rates, separable=False,
    )
    for width, backbone in ((256, "mobilevit_s_hf"), (512, "mobilevitv2_100_hf"))
}  # fmt: skip

PUBLISHER = Publisher("Hugging Face transformers", backbones=BACKBONES, architectures=ARCHITECTURES, formats=FORMATS,
                      zoo=zoo_beside(__file__))  # fmt: skip
