"""The one owner of the checkpoint format. Crash-safe: written to a temporary file, fsynced, renamed; read back
with ``weights_only=True``.

A checkpoint is a dict of plain values and tensors:
- the model (``model_checkpoint``): ``model`` (state dict), ``spec`` (``ModelSpec.to_dict()``), ``class_names`` and
  ``palette`` (lists, or None);
- a training run adds (``training_state``): ``optimizer``, ``scheduler``, ``scaler``, ``iteration``,
  ``best_metric``, ``rng`` (one entry per process) and ``config``;
- ``checksum``: of the model's tensors (``weights_checksum``), so that a file changed or damaged after it was written
  is refused (``verify_checksum``) rather than loaded.

A save that fails (a full disk) removes its half-written temporary file, and says how much space it needed.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import pickle
import random
import re
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .atomic import written_by_live_process, written_whole
from .errors import ConfigError, MissingFileError, StorageError, WeightsError

if TYPE_CHECKING:
    from .engine import TrainingRun
    from .models import ModelSpec, Segmenter

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
    for stale in directory.glob(".*.tmp"):  # left by a process killed mid-write; never another's live one
        if not written_by_live_process(stale):
            stale.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | Path, *, map_location="cpu") -> dict:
    """What ``path`` holds, read without running any code from it, its ``checksum`` verified when it has one.

    Raises ``MissingFileError``, or ``WeightsError`` for a file that is damaged, changed after it was written, or
    holds Python objects (which could run code when unpickled: such a file is refused, never loaded)."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"checkpoint not found: {path}")
    try:
        contents = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        refused = _refused_by_torch(error)
        if refused is None:
            raise WeightsError(f"{path}: cannot read checkpoint (truncated or damaged file?): {error}") from error
        raise WeightsError(
            f"{path}: refused to load: the file holds Python code or objects, not only tensors and plain values, and "
            f"unpickling them could run code on this machine ({refused}). atrous checkpoints never hold any; if this "
            "is another project's weights file, model.weights=PATH reads its tensors without running its code"
        ) from None  # torch's message would advise loading the file unsafely
    except Exception as error:  # torch and zipfile raise several types for damaged files
        raise WeightsError(f"{path}: cannot read checkpoint (truncated or damaged file?): {error}") from error
    verify_checksum(contents, str(path))
    return contents


def _refused_by_torch(error: pickle.UnpicklingError) -> str | None:
    """What torch's weights-only unpickler refused in a file ("Trying to load unsupported GLOBAL posix.system ..."),
    without torch's advice to turn the protection off; None when ``error`` is not such a refusal (a damaged file)."""
    text = str(error)
    if "Weights only load failed" not in text:
        return None
    details = [part for part in re.split(r"\n\s*\n", text)[1:] if part.strip() and "weights_only" not in part]
    return " ".join(" ".join(details).split()) or "objects its safe loader does not accept"


def weights_checksum(state_dict: Mapping[str, Any]) -> str:
    """sha256 (hex) over each tensor's name, dtype, shape and bytes (C order), in sorted name order: the same for
    the same values wherever the tensors live and whatever their memory format. Non-tensor entries are not in it."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name]
        if not isinstance(tensor, torch.Tensor):
            continue
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def verify_checksum(contents: Mapping, source: str) -> None:
    """Raise ``WeightsError`` naming ``source`` when ``contents`` has a ``checksum`` its ``model`` tensors do not
    match. Contents without one (older atrous files, other projects' files) pass."""
    stored = contents.get("checksum") if isinstance(contents, Mapping) else None
    if stored is None:
        return
    weights = contents.get("model")
    if not isinstance(weights, Mapping) or weights_checksum(weights) != stored:
        raise WeightsError(
            f"{source}: the weights do not match the checksum stored with them: the file was changed or damaged "
            "after it was written (if you edited its weights on purpose, delete its 'checksum' entry)"
        )


def check_resumable(contents: Any, source: str, spec: ModelSpec) -> None:
    """Raise unless ``contents`` is a training checkpoint (``training_state``) of the architecture ``spec``:
    ``WeightsError`` for a file that holds no training state, ``ConfigError`` when the config asks for another
    architecture than the one the checkpoint trained."""
    from .models import ModelSpec

    if not isinstance(contents, Mapping):
        raise WeightsError(f"{source} holds a {type(contents).__name__}, not a training checkpoint: to start a run "
                           f"from its weights use model.weights={source}")  # fmt: skip
    if any(key not in contents for key in TRAINING_KEYS) or "model" not in contents:
        raise WeightsError(f"{source} holds weights only (no optimizer state or iteration): to start a run from it "
                           f"use model.weights={source}")  # fmt: skip
    stored = contents.get("spec")
    if stored is None:  # a Segmenter composed by hand: its state dict is checked when it is loaded
        return
    if not isinstance(stored, Mapping):
        raise WeightsError(f"{source}: its 'spec' is a {type(stored).__name__} ({str(stored)[:60]!r}), not the "
                           "mapping atrous writes (ModelSpec.to_dict()): the file was not written by atrous train, "
                           f"or was edited; to start a run from its weights use model.weights={source}")  # fmt: skip
    try:
        trained = ModelSpec.from_dict(dict(stored), source=f"{source}: spec").resolved().architecture()
    except ConfigError as error:
        raise WeightsError(f"{source}: its 'spec' does not describe a model atrous can build: {error}") from error
    if trained != spec:
        changed = [f"{key} {getattr(trained, key)!r} -> {getattr(spec, key)!r}"
                   for key in trained.to_dict() if getattr(trained, key) != getattr(spec, key)]  # fmt: skip
        raise ConfigError(
            f"checkpoint {source} was trained as {_describe(trained)}, the config asks {_describe(spec)} "
            f"({', '.join(changed)}): resume with the run's own config, or start a new run with model.weights={source}"
        )


def _describe(spec: ModelSpec) -> str:
    return f"{spec.name} {spec.backbone} OS{spec.output_stride} with {spec.num_classes} classes"


def capture_rng() -> dict:
    """Python, NumPy, torch and CUDA generator states, as tensors and plain values (weights_only-loadable)."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["kind"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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


def training_state(run: TrainingRun) -> dict[str, Any]:
    """The checkpoint of a training run. Every process calls it (the random states of all ranks are gathered);
    rank 0 saves it."""
    from .config import config_to_dict

    rng_states = [capture_rng()]
    if run.dist.distributed:
        rng_states = [None] * run.dist.world_size
        torch.distributed.all_gather_object(rng_states, capture_rng())
    return {
        **model_checkpoint(run.model),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict(),
        "iteration": run.iteration,
        "best_metric": run.best,
        "rng": rng_states,
        "config": config_to_dict(run.config),
    }


def restore_training_state(run: TrainingRun, state: dict[str, Any], *, source: str = "checkpoint") -> None:
    """Put a run back where ``training_state`` left it: weights, optimizer, schedule, scaler, iteration, best score and
    this rank's random streams (which restart when the number of processes changed). ``check_resumable`` first.

    source: the file, named by the ``WeightsError`` raised when its weights or optimizer do not fit the run."""
    try:
        run.model.load_state_dict(state["model"])
        run.optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError) as error:  # torch's mismatch reports: keys, shapes, parameter groups
        raise WeightsError(f"{source} does not fit the run the config describes: {error}") from error
    run.scheduler.load_state_dict(state["scheduler"])
    run.scaler.load_state_dict(state["scaler"])
    run.iteration, run.best = state["iteration"], state["best_metric"]
    rng_states = state["rng"]
    if len(rng_states) == run.dist.world_size:
        restore_rng(rng_states[run.dist.rank])
    elif run.dist.is_main:
        log.warning("resuming on %d processes from %d: random streams restart", run.dist.world_size, len(rng_states))


def load_trained_model(
    path: str | Path,
    *,
    spec: ModelSpec | None = None,
    overrides: dict[str, Any] | None = None,
    other_architecture: str = "warn",
) -> Segmenter:
    """The model in eval mode, with its class names and palette when the file has them.

    path: an atrous checkpoint (it says which model it holds), or any weights file ``from_pretrained`` reads.
    spec: the architecture to build instead of the one the file describes (needed for a file without a description).
    overrides: ``ModelSpec`` fields to change; None values change nothing; ``name`` with the others builds a file
    without a description. other_architecture: "warn" or "refuse" (the command line) a spec or overrides that ask for
    a model computing otherwise than the one the file implies (see ``from_pretrained``).
    """
    from .models.pretrained import from_pretrained

    return from_pretrained(path, spec=spec, other_architecture=other_architecture, **(overrides or {}))
