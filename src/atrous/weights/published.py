"""Published weights files the user names by their file name: ``published_files`` (every file the zoo and the backbone
registry know a publisher of) and ``locate_weights`` (a missing path that names one is read from the torch hub cache,
checked against its publisher's hash, or the error says where to download it)."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import torchvision

from ..errors import MissingFileError
from ..paths import hub_checkpoints
from ..registry import BACKBONES, zoo
from .zoo import PublishedFile, check_hash, torchvision_hash

log = logging.getLogger(__name__)


@functools.cache
def published_files() -> dict[str, PublishedFile]:
    """Every file atrous knows a publisher of, by file name: the zoo's entries and torchvision's ImageNet backbones."""
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
                entry.imagenet_weights, f"torchvision's ImageNet weights of {backbone}", url, torchvision_hash(filename),
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
        check_hash(cached, published)
        log.info("%s does not exist: using %s from the torch hub cache, %s", path, published.what, cached)
        return cached
    where = f"{cached.parent} (the torch hub cache, where atrous looks for it by name; set TORCH_HOME to move it)"
    if published.url is None:
        raise MissingFileError(f"weights file not found: {path}. It is {published.what}, which has no direct download: "
                               f"{published.download}. Put {path.name} in {where}, or pass the file's path")  # fmt: skip
    raise MissingFileError(f"weights file not found: {path}. It is {published.what}: download {published.url} into "
                           f"{where}, or let atrous download it: {published.fetch}")  # fmt: skip
