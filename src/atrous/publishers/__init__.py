"""Each publisher of DeepLab weights in one folder, at the edge: the networks and head variants only its files use,
its checkpoint reader (``format.py``: recognise / describe / translate), its presets and its zoo entries
(``zoo.yaml``), gathered in its ``PUBLISHER``. A publisher imports the core (``atrous.models``, ``atrous.weights``);
the core never imports a publisher; ``atrous.registry`` lists them (a new publisher is one folder plus one line
there)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..models.architecture import Architecture
from ..models.backbones.base import BackboneEntry
from ..models.spec import ModelSpec
from ..weights.format import Format


@dataclass(frozen=True)
class Publisher:
    """What atrous knows of one publisher.

    name: as its files' users know it ("VainF/DeepLabV3Plus-Pytorch"). backbones / architectures: the names only its
    files use, with their builders. formats: its checkpoint layouts, most specific first. presets: named specs of its
    models. zoo: its ``zoo.yaml`` (published checkpoints: URL, hash, scores), or None.
    """

    name: str
    backbones: dict[str, BackboneEntry] = field(default_factory=dict)
    architectures: dict[str, Architecture] = field(default_factory=dict)
    formats: list[Format] = field(default_factory=list)
    presets: dict[str, ModelSpec] = field(default_factory=dict)
    zoo: Path | None = None


def zoo_beside(module_file: str) -> Path:
    """The ``zoo.yaml`` in the folder of ``module_file`` (a publisher's ``__init__.py``)."""
    return Path(module_file).with_name("zoo.yaml")
