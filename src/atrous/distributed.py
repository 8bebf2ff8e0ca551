"""The only place that reads RANK / WORLD_SIZE / LOCAL_RANK (set by torchrun), and ATROUS_DIST_TIMEOUT."""

from __future__ import annotations

import contextlib
import datetime
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from .errors import ConfigError, DistributedTimeoutError

TIMEOUT_VARIABLE = "ATROUS_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(preference: str = "auto", local_rank: int = 0) -> torch.device:
    """"auto": CUDA when present, else CPU; "cuda" fails clearly without a GPU; "cpu" forces the CPU."""
    if preference not in ("auto", "cuda", "cpu"):
        raise ConfigError(f"unknown device {preference!r}; choose from ['auto', 'cpu', 'cuda']")
    if preference == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but no CUDA device is available")
    if preference != "cpu" and torch.cuda.is_available():
        gpus = torch.cuda.device_count()
        if local_rank >= gpus:  # torchrun started more processes on this machine than it has GPUs
            raise ConfigError(
                f"process LOCAL_RANK={local_rank} needs GPU {local_rank}, but this machine has {gpus} CUDA "
                f"device(s): start at most {gpus} process(es) per machine (torchrun --nproc_per_node={gpus}), or "
                "train on the CPU with train.device=cpu"
            )
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def collective_timeout() -> datetime.timedelta:
    """How long a process waits for the others in one collective (and at the start, for all to join):
    ``ATROUS_DIST_TIMEOUT`` seconds, default 1800 (30 min: longer than any validation or checkpoint a rank may be
    busy with while the others wait). A frozen or dead process then ends the run instead of hanging it forever."""
    text = os.environ.get(TIMEOUT_VARIABLE)
    if text is None:
        return datetime.timedelta(seconds=DEFAULT_TIMEOUT_S)
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds < math.inf:
        raise ConfigError(f"{TIMEOUT_VARIABLE}={text!r}: expected a number of seconds > 0, e.g. 1800")
    return datetime.timedelta(seconds=seconds)


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group torchrun describes (NCCL on GPUs, gloo on CPU); a single process otherwise.

    Collectives time out after ``collective_timeout()``: on gloo the waiting rank raises (``explain_timeouts``
    names it); on NCCL torch's watchdog ends the process with its own message."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    resolved = resolve_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        timeout = collective_timeout()
        if resolved.type == "cuda":
            torch.cuda.set_device(resolved)
        dist.init_process_group(backend="nccl" if resolved.type == "cuda" else "gloo", timeout=timeout)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=resolved)


@contextlib.contextmanager
def explain_timeouts() -> Iterator[None]:
    """Re-raise a collective that timed out as ``DistributedTimeoutError`` saying so, and what to do, instead of
    the backend's "Timed out waiting 1800000ms for recv operation to complete"."""
    try:
        yield
    except RuntimeError as error:  # gloo's errors, and torch's DistBackendError, are RuntimeErrors
        if not (dist.is_available() and dist.is_initialized()) or not re.search(r"timed out|timeout", str(error), re.IGNORECASE):
            raise
        seconds = collective_timeout().total_seconds()
        raise DistributedTimeoutError(
            f"rank {dist.get_rank()}: the other processes of the run did not answer within {seconds:g} s (the "
            f"collective timeout, {TIMEOUT_VARIABLE}): one of them stalled or died; see its log. Resume from the "
            f"last checkpoint with --resume once all can run ({' '.join(str(error).split())[:200]})"
        ) from error


def broadcast_from_main(value: Any) -> Any:
    """Rank 0's ``value`` (any picklable object) on every rank; ``value`` itself in a single process."""
    if dist.is_available() and dist.is_initialized():
        holder = [value]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]
    return value


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean over processes (identity for one process)."""
    if dist.is_available() and dist.is_initialized():
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        values /= dist.get_world_size()
    return values


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def parameters_in_sync(module: torch.nn.Module) -> bool:
    """Whether every rank holds the same parameters, compared by two float64 checksums per rank."""
    if not (dist.is_available() and dist.is_initialized()):
        return True
    flat = torch.cat([p.detach().double().flatten() for p in module.parameters()])
    position = torch.arange(1, flat.numel() + 1, dtype=torch.float64, device=flat.device) / flat.numel()
    checksum = torch.stack([flat.sum(), (flat * position).sum()])
    gathered = [torch.empty_like(checksum) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, checksum)
    return all(torch.equal(gathered[0], other) for other in gathered[1:])
