"""The one owner of the checkpoint format. Crash-safe: written to a temporary file, fsynced, renamed; read back
by ``atrous.weights.torch_file`` (never running code from the file: one holding objects is refused).

A checkpoint is a dict of plain values and tensors:
- the model (``model_checkpoint``): ``model`` (state dict), ``spec`` (``ModelSpec.to_dict()``), ``class_names`` and
  ``palette`` (lists, or None);
- a training run adds (``atrous.training_state.training_state``): ``optimizer``, ``scheduler``, ``scaler``,
  ``iteration``, ``best_metric``, ``rng`` (one entry per process) and ``config``;
- ``checksum``: of the model's tensors (``weights_checksum``), so that a file changed or damaged after it was written
  is refused (``verify_checksum``) rather than loaded.

A save that fails (a full disk) removes its half-written temporary file, and says how much space it needed.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from .atomic import remove_dead_temporaries, written_whole
from .errors import StorageError
from .models.segmenter import Segmenter
from .weights.torch_file import read_torch_file, verify_checksum, weights_checksum

log = logging.getLogger(__name__)

LAST, BEST = "last.pt", "best.pt"
# What a checkpoint must hold to continue its run, beyond the model.
TRAINING_KEYS = ("optimizer", "scheduler", "scaler", "iteration", "best_metric", "rng")


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _disk_full(error: BaseException) -> bool:
    """Whether ``error``, or one it arose from, is a write that failed for want of space. torch.save reports a write
    its file object refused as RuntimeError ("unexpected pos", "file write failed") with the OSError as context."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if isinstance(error, RuntimeError) and "file write failed" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def _tensor_bytes(obj) -> int:
    """The bytes of every tensor in ``obj`` (dicts, lists and tuples searched): about what its checkpoint needs."""
    if isinstance(obj, torch.Tensor):
        return obj.nbytes
    if isinstance(obj, Mapping):
        return sum(_tensor_bytes(value) for value in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(value) for value in obj)
    return 0


def _size(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"


@contextmanager
def _temporary(path: Path, needed: int) -> Iterator[Path]:
    """A temporary name beside ``path`` to write it under (``atomic.written_whole``: renamed to ``path`` when the
    block ends, deleted if it fails, as a half-written file would fill the disk and confuse the next run); a full
    disk is re-raised as ``StorageError`` saying how much ``path`` needed (``needed`` bytes) and how much is free."""
    try:
        with written_whole(path) as temporary:
            yield temporary
    except BaseException as error:  # KeyboardInterrupt too
        if not _disk_full(error):
            raise
        free = shutil.disk_usage(path.parent).free
        storage_error = StorageError(
            f"disk full: cannot write {path}: it needs about {_size(needed)} and {path.parent} has {_size(free)} "
            f"free; free some space (or use another out_dir) and try again: {path.name} was left as it was"
        )
        storage_error.errno = errno.ENOSPC
        raise storage_error from error


def atomic_save(obj, path: str | Path) -> Path:
    """Write ``obj`` so that ``path`` always holds either the previous complete file or the new complete file.

    Raises ``StorageError`` when the disk is full; no partial file is left behind, whatever the failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _temporary(path, needed=_tensor_bytes(obj)) as temporary, open(temporary, "wb") as handle:
        torch.save(obj, handle)
        handle.flush()
        os.fsync(handle.fileno())
    _fsync_directory(path.parent)
    return path


def _atomic_alias(source: Path, alias: Path) -> None:
    """Make ``alias`` another complete name of ``source`` (hard link, else copy), atomically."""
    with _temporary(alias, needed=source.stat().st_size) as temporary:
        temporary.unlink(missing_ok=True)
        try:
            os.link(source, temporary)
        except OSError:
            shutil.copyfile(source, temporary)
            with open(temporary, "rb+") as handle:
                os.fsync(handle.fileno())
    _fsync_directory(alias.parent)


def save_checkpoint(state: dict, directory: str | Path, *, iteration: int, keep_last: int, is_best: bool) -> Path:
    """Write ``iter_XXXXXXX.pt``, point ``last.pt`` (and ``best.pt``) at it, then prune to ``keep_last`` files.

    Old files are deleted only after the new one is complete and linked.
    """
    directory = Path(directory)
    path = atomic_save(state, directory / f"iter_{iteration:07d}.pt")
    _atomic_alias(path, directory / LAST)
    if is_best:
        _atomic_alias(path, directory / BEST)
    snapshots = sorted(directory.glob("iter_*.pt"))
    for old in snapshots[: max(0, len(snapshots) - max(keep_last, 1))]:
        old.unlink(missing_ok=True)
    remove_dead_temporaries(directory)  # left by a process killed mid-write; never another's live one
    return path


def load_checkpoint(path: str | Path) -> dict:
    """What ``path`` holds, read without running any code from it (``atrous.weights.torch_file``), its ``checksum``
    verified when it has one; tensors on the CPU.

    Raises ``MissingFileError``, or ``WeightsError`` for a file that is damaged, changed after it was written, or
    holds Python objects (which could run code when unpickled: atrous's checkpoints never hold any, so such a file
    is refused, never loaded)."""
    contents, _ = read_torch_file(path, what="checkpoint", objects="refuse")
    verify_checksum(contents, str(path))
    return contents


def model_checkpoint(model: Segmenter) -> dict[str, Any]:
    """What rebuilds ``model`` with its labels: ``torch.save`` it, and ``load_trained_model`` reads it back."""
    weights = model.state_dict()
    return {
        "model": weights,
        "spec": model.spec.to_dict() if model.spec is not None else None,  # None: a Segmenter composed by hand
        "class_names": model.class_names,
        "palette": model.palette.tolist() if model.palette is not None else None,
        "checksum": weights_checksum(weights),
    }
