"""Crash-safe checkpoints: written to a temporary file, fsynced, renamed; read back with weights_only=True."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

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
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises several types for damaged files
        raise ValueError(f"{path}: cannot read checkpoint (truncated or corrupt?): {error}") from error


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


def load_trained_model(path: str | Path, *, spec: dict | None = None, map_location="cpu"):
    """(model in eval mode, class names or None) from an atrous checkpoint, or from any weights file ``load_weights``
    reads when ``spec`` (``build_model`` arguments) says which architecture to build."""
    from .models import build_model_from_spec
    from .models.weights import load_weights, read_state_dict, unwrap_state_dict

    path = Path(path)
    raw = {} if path.suffix == ".safetensors" else load_checkpoint(path, map_location=map_location)
    saved_spec = raw.get("spec") if isinstance(raw, dict) else None
    if saved_spec is None and spec is None:
        raise ValueError(
            f"{path} holds no model description (not an atrous checkpoint): pass --model, --backbone and "
            "--num-classes to say which architecture the weights are for"
        )
    model = build_model_from_spec({**(saved_spec or {}), **(spec or {})})
    state = read_state_dict(path) if path.suffix == ".safetensors" else unwrap_state_dict(raw, source=str(path))
    load_weights(model, state)
    return model.eval(), raw.get("class_names") if isinstance(raw, dict) else None
