"""Where atrous's names are assembled, once, above the core and the publishers: the backbones, the architectures, the
checkpoint formats (in detection order), the presets and the model zoo. The core (``atrous.models``) knows no
publisher and each publisher (``atrous.publishers``) knows only the core; this module lists both. A new publisher is
one folder there plus one line in ``PUBLISHERS``.

It also answers what needs every name at once: whether a ``ModelSpec``'s names exist (``check_spec``), the spec
with its architecture's defaults written in (``resolved``), and a backbone or a network built by name.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence

from .errors import ConfigError, WeightsError
from .models.architecture import Architecture
from .models.atrous_conv import adopt_dilated_convs
from .models.backbones import caffe_resnet, mobilenet_v3, resnet
from .models.backbones.base import Backbone, BackboneEntry
from .models.backbones.timm import is_timm, timm_entry
from .models.heads.deeplab import ARCHITECTURES as PAPER_ARCHITECTURES
from .models.segmenter import Segmenter
from .models.spec import ModelSpec
from .publishers import Publisher, deeplabv2, jfzhang95, kazuto, mmseg, smp, torchvision, vainf
from .weights import atrous_format, imagenet_format
from .weights.format import Format
from .weights.zoo import ZooEntry, read_zoo

# In this order their zoo entries are listed and their formats tried (each publisher's most specific first).
PUBLISHERS: tuple[Publisher, ...] = (
    deeplabv2.PUBLISHER, torchvision.PUBLISHER, kazuto.PUBLISHER, mmseg.PUBLISHER, vainf.PUBLISHER, smp.PUBLISHER,
    jfzhang95.PUBLISHER,
)  # fmt: skip

BACKBONES: dict[str, BackboneEntry] = {
    **resnet.BACKBONES, **caffe_resnet.BACKBONES, **mobilenet_v3.BACKBONES,
    **{name: entry for publisher in PUBLISHERS for name, entry in publisher.backbones.items()},
}  # fmt: skip
MODELS: dict[str, Architecture] = {
    **PAPER_ARCHITECTURES,
    **{name: arch for publisher in PUBLISHERS for name, arch in publisher.architectures.items()},
}
PRESETS: dict[str, ModelSpec] = {name: spec for publisher in PUBLISHERS for name, spec in publisher.presets.items()}
TORCHVISION_DEEPLABV3: dict[str, ModelSpec] = dict(torchvision.PUBLISHER.presets)
# Publishers' layouts first; atrous's own files and bare ImageNet backbones (whose keys are the most generic) last.
FORMATS: list[Format] = [
    *(fmt for publisher in PUBLISHERS for fmt in publisher.formats),
    *atrous_format.FORMATS,
    *imagenet_format.formats(BACKBONES),
]


def list_models() -> list[str]:
    """The architecture names ``build_model`` accepts."""
    return sorted(MODELS)


def list_backbones() -> list[str]:
    """The backbone names ``build_model`` accepts."""
    return sorted(BACKBONES)


def list_presets() -> list[str]:
    return sorted(PRESETS)


def preset(name: str) -> ModelSpec:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose from {list_presets()}")
    return PRESETS[name]


@functools.cache
def zoo() -> dict[str, ZooEntry]:
    """Every published checkpoint atrous knows, by name, from each publisher's ``zoo.yaml``."""
    entries: dict[str, ZooEntry] = {}
    for publisher in PUBLISHERS:
        if publisher.zoo is not None:
            entries.update(read_zoo(publisher.zoo, PRESETS))
    return entries


# ------------------------------------------------------------------------------------------------- formats


def find_format(name: str) -> Format:
    for fmt in FORMATS:
        if fmt.name == name:
            return fmt
    raise WeightsError(f"unknown format {name!r}; choose from {[f.name for f in FORMATS]}")


def detect(state: Mapping, *, source: str = "<state dict>") -> Format | None:
    """The first format that recognises ``state``, or None."""
    for fmt in FORMATS:
        if fmt.recognise(state, source):
            return fmt
    return None


# ------------------------------------------------------------------------------------------------ backbones


def backbone_entry(name: str) -> BackboneEntry:
    """The registry entry of ``name``: one of ``BACKBONES``, or ``timm:<model name>`` (any timm CNN)."""
    if is_timm(name):
        return timm_entry(name)
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone {name!r}; choose from {sorted(BACKBONES)} or timm:<model name> "
                          "(pip install 'atrous[timm]'; timm.list_models('*pattern*') lists them)")  # fmt: skip
    return BACKBONES[name]


def build_backbone(
    name: str,
    *,
    output_stride: int,
    multi_grid: Sequence[int] | None = None,
    multi_grid_absolute: bool = False,
    first_block_dilation: str | None = None,
) -> Backbone:
    """Build a randomly initialised backbone by name (see ``BACKBONES``), dilated to ``output_stride``."""
    entry = backbone_entry(name)
    if output_stride not in entry.output_strides:
        choices = list(entry.output_strides)
        raise ConfigError(f"unsupported output_stride {output_stride!r}; choose from {choices} on {name}")
    rule = {"first_block": first_block_dilation} if first_block_dilation is not None else {}
    if multi_grid_absolute:
        if not entry.absolute_multi_grid:
            supported = sorted(key for key, value in BACKBONES.items() if value.absolute_multi_grid)
            raise ConfigError(f"multi_grid_absolute is not an option of {name}; backbones with it: {supported}")
        rule["multi_grid_absolute"] = True
    backbone = entry.build(output_stride=output_stride, multi_grid=multi_grid, **rule)
    backbone.normalization = entry.normalization
    return backbone


# ---------------------------------------------------------------------------------------------------- specs


def check_spec(spec: ModelSpec) -> ModelSpec:
    """``spec``, once its names are known: its architecture, its backbone, the output stride on that backbone and the
    head options the architecture has. Raises ``ConfigError`` naming the choices."""
    if spec.name not in MODELS:
        raise ConfigError(f"unknown model {spec.name!r}; choose from {sorted(MODELS)}")
    if spec.backbone is not None:
        backbone_entry(spec.backbone)  # ConfigError for an unknown name
    backbone = spec.backbone or MODELS[spec.name].backbone
    strides = backbone_entry(backbone).output_strides
    if spec.output_stride is not None and spec.output_stride not in strides:
        raise ConfigError(f"unsupported output_stride {spec.output_stride!r}; choose from {list(strides)} on "
                          f"{backbone}")  # fmt: skip
    if spec.separable and not MODELS[spec.name].separable:
        raise ConfigError(f"separable convs are not an option of {spec.name}'s head (DeepLabV3/V3+ have it)")
    return spec


def resolved(spec: ModelSpec) -> ModelSpec:
    """``spec`` checked, with its architecture's defaults written in (what a model built from it reports)."""
    defaults = MODELS[check_spec(spec).name]
    backbone = spec.backbone or defaults.backbone
    strides = backbone_entry(backbone).output_strides  # a backbone without the default's (HRNet) gets its own
    output_stride = defaults.output_stride if defaults.output_stride in strides else strides[0]
    return dataclasses.replace(
        spec,
        backbone=backbone,
        output_stride=spec.output_stride or output_stride,
        frozen_bn=spec.frozen_bn or defaults.frozen_bn,
        head_lr_mult=spec.head_lr_mult if spec.head_lr_mult is not None else defaults.head_lr_mult,
    )


def atrous_rates(spec: ModelSpec) -> tuple[int, ...]:
    """The ASPP rates a model built from ``spec`` has: its own, or its architecture's default at its stride."""
    spec = resolved(spec)
    if spec.atrous_rates is not None:
        return spec.atrous_rates
    return tuple(MODELS[spec.name].default_rates(spec.output_stride))


def make_spec(spec: ModelSpec | str | None = None, /, **fields) -> ModelSpec:
    """``spec`` (a ``ModelSpec``, or an architecture name) with ``fields`` replaced, checked; see ``ModelSpec``."""
    if isinstance(spec, str):
        spec, fields = None, {"name": spec, **fields}
    try:
        made = dataclasses.replace(spec, **fields) if spec is not None else ModelSpec(**fields)
    except TypeError as error:  # an unknown field name
        names = [f.name for f in dataclasses.fields(ModelSpec)]
        raise ConfigError(f"{error}; the model fields are {names}") from error
    return check_spec(made)


def build_network(spec: ModelSpec) -> Segmenter:
    """The randomly initialised model ``spec`` describes (its init fields, ``pretrained_backbone`` and ``weights``,
    are ``atrous.build_model``'s to load); ``spec`` as ``make_spec`` returns it."""
    spec = resolved(spec)
    arch = MODELS[spec.name]
    body = build_backbone(spec.backbone, output_stride=spec.output_stride, multi_grid=spec.multi_grid,
                          multi_grid_absolute=spec.multi_grid_absolute,
                          first_block_dilation=spec.first_block_dilation)  # fmt: skip
    adopt_dilated_convs(body)  # the dilated stages' 3x3 convolutions skip dead taps and train fast on the CPU
    rates = spec.atrous_rates if spec.atrous_rates is not None else arch.default_rates(spec.output_stride)
    common = {"channels": body.channels, "num_classes": spec.num_classes, "atrous_rates": rates}
    options = {"separable": spec.separable} if arch.separable else {}
    options |= {"align_corners": spec.align_corners} if arch.align_corners else {}
    model = Segmenter(
        backbone=body,
        head=arch.head(**common, **options),
        aux_head=arch.aux_head(**common) if spec.aux else None,
        num_classes=spec.num_classes,
        head_lr_mult=spec.head_lr_mult,
        spec=spec.architecture(),
        align_corners=spec.align_corners,
    )
    if spec.frozen_bn != "none":
        model.freeze_batchnorm(stats=spec.frozen_bn == "all")
    return model
