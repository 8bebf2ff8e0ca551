"""Checks made before any work on where a command will write, so that no input, weights file or result is lost to
an output path: nothing is written over a file the user gave us, and a folder that cannot be written is found
before the hours of work whose results it was meant to hold."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from .errors import ConfigError


def hub_checkpoints() -> Path:
    """The torch hub cache's checkpoints folder (``$TORCH_HOME/hub/checkpoints``), where torchvision, timm's non-hub
    files and atrous's model zoo keep their downloads."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def refuse_overwrite(outputs: Iterable[str | Path], protected: Mapping[str | Path, str], *, hint: str) -> None:
    """Raise ``ConfigError`` when any of ``outputs`` is one of the ``protected`` files (path -> what it is, for the
    message: ``{"model.pt": "the weights file"}``).

    Files are compared by identity (device and inode), not by spelling: a relative path, a symbolic link, a hard
    link or another letter case on a case-insensitive disk all name the same file. Protected paths that do not exist
    (a model zoo name rather than a file) protect nothing, and an output that does not exist yet overwrites nothing.
    """
    identities = {}
    for path, what in protected.items():
        identity = _identity(path)
        if identity is not None:
            identities.setdefault(identity, (Path(path), what))
    clashes = []
    for output in outputs:
        identity = _identity(output)
        if identity in identities:
            clashes.append((Path(output), *identities[identity]))
    if clashes:
        output, path, what = clashes[0]
        more = f" (and {len(clashes) - 1} more output(s) like it)" if len(clashes) > 1 else ""
        raise ConfigError(f"refusing to write {output}: it is {what} {path}{more}; {hint}")


def _identity(path: str | Path) -> tuple[int, int] | None:
    try:
        status = os.stat(path)  # follows links: writing through a link replaces its target
    except (FileNotFoundError, NotADirectoryError):
        return None
    return status.st_dev, status.st_ino


def check_writable_dir(path: str | Path, what: str) -> Path:
    """Create the folder ``path`` (and its parents) if needed and prove it writable by creating and deleting a file
    in it; ``ConfigError`` naming ``what`` (e.g. "evaluation output folder"), the folder and the system's reason
    otherwise. Permission bits alone would not tell: ACLs, read-only mounts and root's privileges all override them.
    Returns ``path`` as a ``Path``."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path, prefix=".atrous-write-check-"):
            pass
    except OSError as error:
        reason = error.strerror or str(error)
        raise ConfigError(f"cannot write the {what} {path}: {reason}; choose a folder you can write (--out)") from error
    return path
