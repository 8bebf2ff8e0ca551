"""Where atrous's names are assembled, once, above the core and the publishers: the backbones, the architectures, the
checkpoint formats (in detection order), the presets and the model zoo. The core (``atrous.models``) knows no
publisher and each publisher (``atrous.publishers``) knows only the core; this module lists both. A new publisher is
one folder there plus one line in the list of publishers registered below (``register``).

It also answers what needs every name at once: whether a ``ModelSpec``'s names exist (``check_spec``), the spec
with its architecture's defaults written in (``resolved``), a backbone or a network built by name, and which
published file a missing path names (``locate_weights``: the zoo's files and the backbones' ImageNet files).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from torchvision.models import get_weight

from .errors import ConfigError, MissingFileError, WeightsError
from .install import extra_command
from .models.architecture import Architecture
from .models.backbones import caffe_resnet, mobilenet_v3, resnet
from .models.backbones.base import Backbone, BackboneEntry
from .models.backbones.timm import is_timm, timm_entry
from .models.heads.deeplab import ARCHITECTURES as PAPER_ARCHITECTURES
from .models.layers import adopt_dilated_convs
from .models.segmenter import Segmenter
from .models.spec import ModelSpec
from .paths import hub_checkpoints
from .publishers import (
    Publisher,
    deeplabv2,
    google,
    jfzhang95,
    kazuto,
    keras_hub,
    mmseg,
    smp,
    torchvision,
    transformers,
    vainf,
)
from .weights import atrous_format, imagenet_format
from .weights import zoo as zoo_files
from .weights.format import Format
from .weights.zoo import PublishedFile, ZooEntry, read_zoo

log = logging.getLogger(__name__)


@functools.cache
def zoo() -> dict[str, ZooEntry]:
    """Every published checkpoint atrous knows, by name, from each publisher's ``zoo.yaml``."""
    entries: dict[str, ZooEntry] = {}
    for publisher in PUBLISHERS:
        if publisher.zoo is not None:
            entries.update(read_zoo(publisher.zoo, PRESETS))
    return entries


BACKBONES: dict[str, BackboneEntry] = {**resnet.BACKBONES, **caffe_resnet.BACKBONES, **mobilenet_v3.BACKBONES}
MODELS: dict[str, Architecture] = dict(PAPER_ARCHITECTURES)
PRESETS: dict[str, ModelSpec] = {}
FORMATS: list[Format] = []
_PUBLISHERS_FORMATS: list[Format] = []  # FORMATS before the generic ones


def register(publisher: Publisher) -> None:
    """Add a publisher's names to the tables (in place: every module that imported them sees it). Its formats are
    tried after those already registered, and before the generic ones: atrous's own files and bare ImageNet backbones
    (whose keys are the most generic; their layouts come from the backbones, the publisher's included)."""
    clashes = sorted((set(publisher.backbones) & set(BACKBONES)) | (set(publisher.architectures) & set(MODELS))
                     | (set(publisher.presets) & set(PRESETS)))  # fmt: skip
    if clashes:
        raise ConfigError(f"publisher {publisher.name!r} registers names already taken: {clashes}")
    BACKBONES.update(publisher.backbones)
    MODELS.update(publisher.architectures)
    PRESETS.update(publisher.presets)
    _PUBLISHERS_FORMATS.extend(publisher.formats)
    FORMATS[:] = [*_PUBLISHERS_FORMATS, *atrous_format.FORMATS, *imagenet_format.formats(BACKBONES)]
    if publisher not in PUBLISHERS:
        PUBLISHERS.append(publisher)
    zoo.cache_clear()


PUBLISHERS: list[Publisher] = []
# In this order their zoo entries are listed and their formats tried (each publisher's most specific first).
for _publisher in (
    deeplabv2.PUBLISHER,
    torchvision.PUBLISHER,
    kazuto.PUBLISHER,
    mmseg.PUBLISHER,
    vainf.PUBLISHER,
    smp.PUBLISHER,
    jfzhang95.PUBLISHER,
    google.PUBLISHER,
    transformers.PUBLISHER,
    keras_hub.PUBLISHER,
):
    register(_publisher)
TORCHVISION_DEEPLABV3: dict[str, ModelSpec] = dict(torchvision.PUBLISHER.presets)


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
def published_files() -> dict[str, PublishedFile]:
    """Every file atrous knows a publisher of, by file name: the zoo's entries and torchvision's ImageNet backbones."""
    files = {}
    for entry in zoo().values():
        if entry.url is not None and entry.url.startswith("hf-hub:"):
            continue  # a Hub repository: huggingface_hub's cache keeps its files, under their own names
        fetch = (f"--weights {entry.name} (atrous.from_pretrained({entry.name!r}))" if entry.kind == "model" else
                 f"model.pretrained_backbone={entry.name} (pretrained_backbone={entry.name!r} in Python)")  # fmt: skip
        what = f"the file of the zoo entry {entry.name} (published by {entry.publisher})"
        files[entry.filename] = PublishedFile(entry.name, what, entry.url, entry.hash, entry.download, fetch)
    for backbone, entry in BACKBONES.items():
        if entry.imagenet_weights is not None:
            url = get_weight(entry.imagenet_weights).url
            filename = url.rsplit("/", 1)[-1]
            files.setdefault(filename, PublishedFile(
                entry.imagenet_weights, f"torchvision's ImageNet weights of {backbone}", url,
                zoo_files.torchvision_hash(filename), None,
                "model.pretrained_backbone=imagenet (pretrained_backbone='imagenet' in Python)",
            ))  # fmt: skip
    return files


def locate_weights(path: str | Path) -> Path:
    """``path``, or, when it does not exist and names a published file (``published_files``), that file in the torch
    hub cache, checked against its publisher's hash (the path used is logged at INFO level).

    Raises ``MissingFileError`` naming where to download a published file and the folder to put it in when the cache
    does not have it either; any other missing path comes back as it is, for its reader to say so."""
    path = Path(path)
    published = None if path.exists() else published_files().get(path.name)
    if published is None:
        return path
    cached = hub_checkpoints() / path.name
    if cached.is_file():
        zoo_files.check_hash(cached, published)  # looked up per call: tests stand in for the publisher's
        log.info("%s does not exist: using %s from the torch hub cache, %s", path, published.what, cached)
        return cached
    where = f"{cached.parent} (the torch hub cache, where atrous looks for it by name; set TORCH_HOME to move it)"
    if published.url is None:
        raise MissingFileError(f"weights file not found: {path}. It is {published.what}, which has no direct download: "
                               f"{published.download}. Put {path.name} in {where}, or pass the file's path")  # fmt: skip
    raise MissingFileError(f"weights file not found: {path}. It is {published.what}: download {published.url} into "
                           f"{where}, or let atrous download it: {published.fetch}")  # fmt: skip


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
                          f"({extra_command('timm', 'timm')}; timm.list_models('*pattern*') lists them)")  # fmt: skip
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
    if spec.atrous_rates == () and MODELS[spec.name].needs_rates:
        raise ConfigError(f"{spec.name} needs one atrous rate at least (its classifier is one conv per rate)")
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
    return _rates_of(resolved(spec))


def _rates_of(spec: ModelSpec) -> tuple[int, ...]:
    """``atrous_rates`` of a spec already resolved."""
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


def build_network(spec: ModelSpec, *, body: Backbone | None = None) -> Segmenter:
    """The randomly initialised model ``spec`` describes (its init fields, ``pretrained_backbone`` and ``weights``,
    are ``atrous.build_model``'s to load); ``spec`` as ``make_spec`` returns it. ``body``: the spec's backbone, built
    already (the model table counts every head on one backbone)."""
    spec = resolved(spec)
    arch = MODELS[spec.name]
    if body is None:
        body = build_backbone(spec.backbone, output_stride=spec.output_stride, multi_grid=spec.multi_grid,
                              multi_grid_absolute=spec.multi_grid_absolute,
                              first_block_dilation=spec.first_block_dilation)  # fmt: skip
        adopt_dilated_convs(body)  # the dilated stages' 3x3 convolutions skip dead taps and train fast on the CPU
    rates = _rates_of(spec)
    common = {"channels": body.channels, "num_classes": spec.num_classes, "atrous_rates": rates}
    options = {"separable": spec.separable} if arch.separable else {}
    options |= {"align_corners": spec.align_corners} if arch.align_corners else {}
    options |= {"output_stride": spec.output_stride} if arch.takes_output_stride else {}
    model = Segmenter(
        backbone=body,
        head=arch.head(**common, **options),
        aux_head=arch.aux_head(**common) if spec.aux else None,
        num_classes=spec.num_classes,
        head_lr_mult=spec.head_lr_mult,
        spec=spec.architecture(),
        align_corners=spec.align_corners,
        pad_to=spec.pad_to,
    )
    if spec.frozen_bn != "none":
        model.freeze_batchnorm(stats=spec.frozen_bn == "all")
    return model
