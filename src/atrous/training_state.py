"""A training run's state (``TrainingRun``) and its checkpoint: what ``training_state`` adds to the model's checkpoint
(optimizer, schedule, scaler, iteration, best score, every process's random streams, the config), how a run is put
back where it was (``restore_training_state``), and the check that a file can continue a run (``check_resumable``).
The engine makes and advances the run; ``atrous.checkpoint`` writes and reads the files."""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .checkpoint import TRAINING_KEYS, model_checkpoint
from .config import Config, config_to_dict
from .data.base import SegmentationDataset
from .distributed import DistInfo
from .errors import ConfigError, WeightsError
from .losses import SegmentationLoss
from .models.segmenter import Segmenter
from .models.spec import ModelSpec
from .registry import resolved

log = logging.getLogger(__name__)


@dataclass
class TrainingRun:
    """Everything a training step, a validation and a checkpoint need; ``prepare`` makes one from a config.

    model: the ``Segmenter`` itself (checkpoints and validation use it); wrapped: ``model`` in DDP when distributed;
    forward: ``wrapped``, compiled when ``train.compile``. batches: endless (images, masks) micro-batches of this rank.
    iteration: optimizer steps done; iterations: the schedule's length.
    """

    config: Config
    dist: DistInfo
    model: Segmenter
    wrapped: torch.nn.Module
    forward: torch.nn.Module
    loss_fn: SegmentationLoss
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]] | None
    iterations: int
    train_set: SegmentationDataset | None = None
    val_set: SegmentationDataset | None = None
    iteration: int = 0
    best: float = -math.inf

    @property
    def device(self) -> torch.device:
        return self.dist.device

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.config.train.channels_last else torch.contiguous_format


def check_resumable(contents: Any, source: str, spec: ModelSpec) -> None:
    """Raise unless ``contents`` is a training checkpoint (``training_state``) of the architecture ``spec``:
    ``WeightsError`` for a file that holds no training state, ``ConfigError`` when the config asks for another
    architecture than the one the checkpoint trained."""
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
        trained = resolved(ModelSpec.from_dict(dict(stored), source=f"{source}: spec")).architecture()
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


def training_state(run: TrainingRun) -> dict[str, Any]:
    """The checkpoint of a training run. Every process calls it (the random states of all ranks are gathered);
    rank 0 saves it."""
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


