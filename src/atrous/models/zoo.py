"""The model zoo: ``zoo.yaml`` (shipped in the package) names published checkpoints; ``zoo_file`` fetches one into
the torch hub cache, checking the publisher's hash, and says offline which file to put where. ``locate_weights``
finds a published file the user names by its file name in that cache, where torchvision keeps its downloads too."""

from __future__ import annotations

import functools
import hashlib
import logging
import re
import urllib.error
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import yaml

from ..errors import ConfigError, MissingFileError, WeightsError
from .spec import ModelSpec

log = logging.getLogger(__name__)


def _labels(name: str) -> tuple[list[str], np.ndarray]:
    from ..data.cityscapes import CITYSCAPES_PALETTE
    from ..data.classes import ADE20K_CLASSES, CITYSCAPES_CLASSES, COCO_STUFF_CLASSES, COCO_STUFF_IDS, VOC_CLASSES
    from ..data.labels import voc_palette

    tables = {
        "voc": (list(VOC_CLASSES), voc_palette()),
        "cityscapes": (list(CITYSCAPES_CLASSES), CITYSCAPES_PALETTE),
        "ade20k": (list(ADE20K_CLASSES), voc_palette()),
        "coco_stuff_171": (list(COCO_STUFF_CLASSES), voc_palette()),  # the used classes, in id order
        "coco_stuff_182": (list(COCO_STUFF_IDS), voc_palette()),  # every label id 0-181 (kazuto1011's outputs)
    }
    if name not in tables:
        raise ConfigError(f"zoo labels {name!r} unknown; choose from {sorted(tables)}")
    return tables[name]


@dataclass(frozen=True)
class ZooEntry:
    """One published checkpoint: where it is, what it is, what it scored and where that was published."""

    name: str
    publisher: str
    url: str | None  # None: no direct download (``download`` says how to get the file by hand)
    hash: str | None
    dataset: str
    spec: ModelSpec
    labels: str | None = None
    eval: str = ""
    published: dict = field(default_factory=dict)
    file: str | None = None  # the file name, where the URL does not end with it
    download: str | None = None  # where to get the file by hand, for entries without a direct URL
    kind: Literal["model", "backbone_init"] = "model"  # backbone_init: for pretrained_backbone, not a segmenter

    def __post_init__(self) -> None:
        if self.kind not in ("model", "backbone_init"):
            raise ConfigError(f"zoo entry {self.name}: unknown kind {self.kind!r}; choose from ['model', 'backbone_init']")
        if self.url is None and (self.file is None or self.download is None):
            raise ConfigError(f"zoo entry {self.name}: without a url it needs file and download")

    @property
    def filename(self) -> str:
        return self.file or self.url.rsplit("/", 1)[-1]

    def class_names_and_palette(self) -> tuple[list[str] | None, np.ndarray | None]:
        return _labels(self.labels) if self.labels is not None else (None, None)


@functools.cache
def zoo() -> dict[str, ZooEntry]:
    """Every catalogue entry by name."""
    from . import PRESETS

    text = (resources.files("atrous") / "models" / "zoo.yaml").read_text()
    entries = {}
    for name, values in yaml.safe_load(text).items():
        spec = values.pop("spec")
        spec = PRESETS[spec] if isinstance(spec, str) else ModelSpec.from_dict(spec, source=f"zoo entry {name}")
        entries[name] = ZooEntry(name=name, spec=spec, **values)
    return entries


def _check_hash(path: Path, entry: ZooEntry | PublishedFile) -> None:
    """A cached file still is the publisher's: a byte flipped on disk (or a file put there by hand that is another
    one) would otherwise load as silently wrong weights. About 0.2 s for a 170 MB file."""
    if entry.hash is None:
        return
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    if not digest.hexdigest().startswith(entry.hash):
        raise WeightsError(f"{path}: its sha256 starts {digest.hexdigest()[:len(entry.hash)]}, not {entry.hash} as "
                           f"{entry.name}'s publisher's does: the file is damaged or another one. Delete it to "
                           "download it again (or put the right file there)")  # fmt: skip


def hub_checkpoints() -> Path:
    """The torch hub cache's checkpoints folder (``$TORCH_HOME/hub/checkpoints``), where torchvision and the zoo keep
    their downloads."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def zoo_file(entry: ZooEntry) -> Path:
    """The entry's file in the torch hub cache (``$TORCH_HOME/hub/checkpoints``), downloaded with a progress bar and
    checked against the publisher's hash when it is not there yet."""
    path = hub_checkpoints() / entry.filename
    if path.is_file():
        _check_hash(path, entry)
        return path
    if entry.url is None:
        raise WeightsError(f"{entry.name} has no direct download: {entry.download}. Put the file {entry.filename} at "
                           f"{path} (the torch hub cache; set TORCH_HOME to move it), or pass the file's path")  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(entry.url, str(path), hash_prefix=entry.hash, progress=True)
    except (urllib.error.URLError, OSError) as error:
        raise WeightsError(
            f"could not download {entry.url} ({error}). Offline? Put the file {entry.filename} at {path} (the torch "
            "hub cache; set TORCH_HOME to move it), or pass the file's path instead of the zoo name"
        ) from error
    except RuntimeError as error:  # torch.hub's hash check
        raise WeightsError(f"{entry.url}: the download does not match the published hash {entry.hash}: {error}") from error
    return path


@dataclass(frozen=True)
class PublishedFile:
    """A weights file a publisher distributes under its file name: what it is and how to get it."""

    name: str  # the zoo entry's name, or torchvision's weights name
    what: str  # what it is, in words
    url: str | None
    hash: str | None  # the sha256 prefix its file name carries, checked before a cached copy is used
    download: str | None  # how to get it by hand, where there is no url
    fetch: str  # how atrous downloads it itself, as the user would type it


def _torchvision_hash(filename: str) -> str | None:
    """torchvision's file names carry their sha256 prefix, as torch.hub checks it: ``resnet50-0676ba61.pth``."""
    match = re.search(r"-([0-9a-f]{8,})\.", filename)
    return match[1] if match else None


@functools.cache
def published_files() -> dict[str, PublishedFile]:
    """Every file atrous knows a publisher of, by file name: the zoo's entries and torchvision's ImageNet backbones."""
    import torchvision

    from .backbones import BACKBONES

    files = {}
    for entry in zoo().values():
        fetch = (f"--weights {entry.name} (atrous.from_pretrained({entry.name!r}))" if entry.kind == "model" else
                 f"model.pretrained_backbone={entry.name} (pretrained_backbone={entry.name!r} in Python)")  # fmt: skip
        what = f"the file of the zoo entry {entry.name} (published by {entry.publisher})"
        files[entry.filename] = PublishedFile(entry.name, what, entry.url, entry.hash, entry.download, fetch)
    for backbone, entry in BACKBONES.items():
        if entry.imagenet_weights is not None:
            url = torchvision.models.get_weight(entry.imagenet_weights).url
            filename = url.rsplit("/", 1)[-1]
            files.setdefault(filename, PublishedFile(
                entry.imagenet_weights, f"torchvision's ImageNet weights of {backbone}", url, _torchvision_hash(filename),
                None,
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
        _check_hash(cached, published)
        log.info("%s does not exist: using %s from the torch hub cache, %s", path, published.what, cached)
        return cached
    where = f"{cached.parent} (the torch hub cache, where atrous looks for it by name; set TORCH_HOME to move it)"
    if published.url is None:
        raise MissingFileError(f"weights file not found: {path}. It is {published.what}, which has no direct download: "
                               f"{published.download}. Put {path.name} in {where}, or pass the file's path")  # fmt: skip
    raise MissingFileError(f"weights file not found: {path}. It is {published.what}: download {published.url} into "
                           f"{where}, or let atrous download it: {published.fetch}")  # fmt: skip
