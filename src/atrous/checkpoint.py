"""The one owner of the checkpoint format. Crash-safe: written to a temporary file, fsynced, renamed; read back
with ``weights_only=True``.

A checkpoint is a dict of plain values and tensors:
- the model (``model_checkpoint``): ``model`` (state dict), ``spec`` (``ModelSpec.to_dict()``), ``class_names`` and
  ``palette`` (lists, or None);
- a training run adds (``training_state``): ``optimizer``, ``scheduler``, ``scaler``, ``iteration``,
  ``best_metric``, ``rng`` (one entry per process) and ``config``.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .errors import MissingFileError, WeightsError

if TYPE_CHECKING:
    from .engine import TrainingRun
    from .models import ModelSpec, Segmenter

log = logging.getLogger(__name__)

LAST, BEST = "last.pt", "best.pt"


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_save(obj, path: str | Path) -> Path:
    """Write ``obj`` so that ``path`` always holds either the previous complete file or the new complete file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        torch.save(obj, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync_directory(path.parent)
    return path


def _atomic_alias(source: Path, alias: Path) -> None:
    """Make ``alias`` another complete name of ``source`` (hard link, else copy), atomically."""
    tmp = alias.with_name(f".{alias.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
    os.replace(tmp, alias)
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
    for stale in directory.glob(".*.tmp"):  # left by a process killed mid-write
        if not stale.name.endswith(f".{os.getpid()}.tmp"):
            stale.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | Path, *, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises several types for damaged files
        raise WeightsError(f"{path}: cannot read checkpoint (truncated or corrupt?): {error}") from error


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
    return {
        "model": model.state_dict(),
        "spec": model.spec.to_dict() if model.spec is not None else None,  # None: a Segmenter composed by hand
        "class_names": model.class_names,
        "palette": model.palette.tolist() if model.palette is not None else None,
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


def restore_training_state(run: TrainingRun, state: dict[str, Any]) -> None:
    """Put a run back where ``training_state`` left it: weights, optimizer, schedule, scaler, iteration, best score and
    this rank's random streams (which restart when the number of processes changed)."""
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.scaler.load_state_dict(state["scaler"])
    run.iteration, run.best = state["iteration"], state["best_metric"]
    rng_states = state["rng"]
    if len(rng_states) == run.dist.world_size:
        restore_rng(rng_states[run.dist.rank])
    elif run.dist.is_main:
        log.warning("resuming on %d processes from %d: random streams restart", run.dist.world_size, len(rng_states))


def load_trained_model(
    path: str | Path, *, spec: ModelSpec | None = None, overrides: dict[str, Any] | None = None
) -> Segmenter:
    """The model in eval mode, with its class names and palette when the file has them.

    path: an atrous checkpoint (it says which model it holds), or any weights file ``from_pretrained`` reads.
    spec: the architecture to build instead of the one the file describes. overrides: ``ModelSpec`` fields to
    change; None values change nothing.
    """
    from .models.pretrained import from_pretrained

    return from_pretrained(path, spec=spec, **(overrides or {}))
