"""segmentation_models_pytorch (0.4-0.6): encoder = torchvision's ResNet names under ``encoder.``; DeepLabV3 decoder
= aspp (torchvision's branch layout; separable branches as a depthwise-pointwise pair "0.0"/"0.1") + conv + bn;
DeepLabV3+ decoder = aspp.0 (ASPP), aspp.1/2 (separable conv, BN), block1 (48-channel projection), block2 (separable
conv, BN); ``segmentation_head.0`` the classifier. Its ``save_pretrained`` folders carry config.json. A timm encoder
("tu-NAME") is timm's ``features_only`` network under ``encoder.model.``: the same network as atrous's ``timm:NAME``
backbone, whose keys it then fills as they are."""

from __future__ import annotations

from collections.abc import Mapping

from ...errors import WeightsError
from ...models.normalization import IMAGENET_RGB
from ...models.spec import ModelSpec
from ...weights.format import Format, Undescribed
from ...weights.keys import aspp_keys, classes, rename_all, resnet, under

_ASPP = aspp_keys(r"0", r"1")
_KEYS = [
    (r"^encoder\.model\.", "backbone.body."),  # a timm encoder ("tu-NAME"): timm's features_only network, as ours
    (r"^encoder\.", "backbone."),
    *under(r"^decoder\.aspp\.0\.", _ASPP, "head.aspp."),
    *under(r"^decoder\.aspp\.", _ASPP, "head.aspp."),
    (r"^decoder\.aspp\.1\.0\.", "head.aspp_conv.conv.depthwise."), (r"^decoder\.aspp\.1\.1\.", "head.aspp_conv.conv.pointwise."),
    (r"^decoder\.aspp\.2\.", "head.aspp_conv.bn."),
    (r"^decoder\.block1\.0\.", "head.low_project.conv."), (r"^decoder\.block1\.1\.", "head.low_project.bn."),
    (r"^decoder\.block2\.0\.0\.", "head.fuse.conv.depthwise."), (r"^decoder\.block2\.0\.1\.", "head.fuse.conv.pointwise."),
    (r"^decoder\.block2\.1\.", "head.fuse.bn."),
    (r"^decoder\.conv\.", "head.conv.conv."), (r"^decoder\.bn\.", "head.conv.bn."),
    (r"^segmentation_head\.0\.", "head.classifier."),
]  # fmt: skip
_OLD_KEYS = [(r"^decoder\.0\.", "decoder.aspp."), (r"^decoder\.1\.", "decoder.conv."), (r"^decoder\.2\.", "decoder.bn.")]


def _smp(state, source) -> bool:
    if not ("segmentation_head.0.weight" in state and any(key.startswith("decoder.") for key in state)):
        return False
    if not any(key.startswith(("encoder.layer1.", "encoder.model.")) for key in state):
        raise WeightsError(f"{source}: a segmentation_models_pytorch file with an encoder atrous does not read yet (it "
                           "reads the ResNet encoders and the timm ones, tu-NAME)")  # fmt: skip
    return True


def _backbone(state, config, source, described) -> str:
    """The encoder as an atrous backbone: a ResNet by its keys, a timm encoder ("tu-NAME") by the name its config.json
    records (its keys are timm's, which do not say which timm model)."""
    if not _timm_encoder(state):
        return resnet(state, "encoder.")
    name = config.get("encoder_name") or ""
    if name.startswith("tu-"):
        return f"timm:{name[3:]}"
    raise Undescribed(f"{source}: an smp model with a timm encoder (keys encoder.model.*) whose name the file does "
                      f"not record (its save_pretrained folder's config.json does: encoder_name 'tu-NAME'): pass the "
                      f"folder, or spec=ModelSpec({described}, backbone='timm:NAME') with NAME the encoder's timm "
                      f"model")  # fmt: skip


def _describe(state, contents, source):
    """Its config.json (``save_pretrained`` folders) says everything; a bare state dict leaves its defaults to assume.
    Its ResNet encoder dilates every block of a dilated stage, and it upsamples with align_corners=True."""
    plus = "decoder.block1.0.weight" in state
    config = (contents.get("config") or {}) if isinstance(contents, Mapping) else {}
    separable = f"{'decoder.aspp.0.' if plus else 'decoder.aspp.'}convs.1.0.0.weight" in state
    if separable and not plus:
        raise WeightsError(f"{source}: smp DeepLabV3 with decoder_aspp_separable=True does not read yet (its "
                           "DeepLabV3+ does)")  # fmt: skip
    assumed = []
    stride = config.get("encoder_output_stride")
    if stride is None:
        stride = 16 if plus else 8
        assumed.append(("output_stride", f"output stride {stride}, smp's default (its config.json records it)"))
    rates = tuple(config.get("decoder_atrous_rates") or (12, 24, 36))
    if "decoder_atrous_rates" not in config:
        assumed.append(("atrous_rates", "rates (12, 24, 36), smp's default (its config.json records them)"))
    fields = {
        "name": "deeplabv3plus_smp" if plus else "deeplabv3", "output_stride": stride, "atrous_rates": rates,
        "num_classes": classes(state, "segmentation_head.0.weight"), "separable": separable,
        "first_block_dilation": "stage", "align_corners": True,
    }  # fmt: skip
    described = ", ".join(f"{key}={value!r}" for key, value in fields.items())
    return ModelSpec(backbone=_backbone(state, config, source, described), **fields), assumed


def _translate(state, model):
    kept = {key: value for key, value in state.items() if not key.startswith("classification_head.")}
    return rename_all(kept, _OLD_KEYS, _KEYS), ""


def _timm_encoder(state) -> bool:
    return any(key.startswith("encoder.model.") for key in state)


def _plus(state, source) -> bool:
    return _smp(state, source) and "decoder.block1.0.weight" in state


def _v3(state, source) -> bool:
    return _smp(state, source) and ("decoder.conv.weight" in state or "decoder.1.weight" in state)  # 1: smp < 0.4


# ResNet encoders take ImageNet's normalisation; a timm encoder ("tu-") takes its timm model's (smp's own
# preprocessing reads timm's pretrained_cfg), which the backbone carries.
FORMATS = [
    Format("smp_deeplabv3plus", lambda state, source: _plus(state, source) and not _timm_encoder(state), _translate,
           _describe, IMAGENET_RGB),
    Format("smp_deeplabv3", lambda state, source: _v3(state, source) and not _timm_encoder(state), _translate,
           _describe, IMAGENET_RGB),
    Format("smp_deeplabv3plus_timm", lambda state, source: _plus(state, source) and _timm_encoder(state), _translate,
           _describe),
    Format("smp_deeplabv3_timm", lambda state, source: _v3(state, source) and _timm_encoder(state), _translate,
           _describe),
]  # fmt: skip
