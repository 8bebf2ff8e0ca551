"""Published checkpoints: each publisher's ``zoo.yaml`` (``read_zoo``) names them; ``zoo_file`` fetches one into the
torch hub cache, checking the publisher's hash, and says offline which file to put where. ``atrous.registry.zoo()``
gathers every publisher's entries."""

from __future__ import annotations

import hashlib
import logging
import re
import urllib.error
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import yaml

from ..data.classes import ADE20K_CLASSES, CITYSCAPES_CLASSES, COCO_STUFF_CLASSES, COCO_STUFF_IDS, VOC_CLASSES
from ..data.labels import CITYSCAPES_PALETTE, voc_palette
from ..errors import ConfigError, WeightsError
from ..models.spec import ModelSpec
from ..paths import hub_checkpoints

log = logging.getLogger(__name__)


def _labels(name: str) -> tuple[list[str], np.ndarray]:
    tables = {
        "voc": (list(VOC_CLASSES), voc_palette()),
        "cityscapes": (list(CITYSCAPES_CLASSES), CITYSCAPES_PALETTE),
        "ade20k": (list(ADE20K_CLASSES), voc_palette()),
        # Google's ADE20K models keep the dataset's label 0 ("other", its ignore label: never a training target)
        # as channel 0; channel k is class k - 1 of the 150.
        "ade20k_151": (["other", *ADE20K_CLASSES], voc_palette()),
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


def read_zoo(path: Path, presets: Mapping[str, ModelSpec]) -> dict[str, ZooEntry]:
    """The entries of one publisher's ``zoo.yaml``; an entry's ``spec`` is a preset name or ``ModelSpec`` fields."""
    entries = {}
    for name, values in yaml.safe_load(path.read_text()).items():
        spec = values.pop("spec")
        spec = presets[spec] if isinstance(spec, str) else ModelSpec.from_dict(spec, source=f"zoo entry {name}")
        entries[name] = ZooEntry(name=name, spec=spec, **values)
    return entries


def check_hash(path: Path, entry: ZooEntry | PublishedFile) -> None:
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


def zoo_file(entry: ZooEntry) -> Path:
    """The entry's file in the torch hub cache (``$TORCH_HOME/hub/checkpoints``), downloaded with a progress bar and
    checked against the publisher's hash when it is not there yet."""
    path = hub_checkpoints() / entry.filename
    if path.is_file():
        check_hash(path, entry)
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


def torchvision_hash(filename: str) -> str | None:
    """torchvision's file names carry their sha256 prefix, as torch.hub checks it: ``resnet50-0676ba61.pth``."""
    match = re.search(r"-([0-9a-f]{8,})\.", filename)
    return match[1] if match else None
