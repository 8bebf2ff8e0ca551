"""Side-by-side timing (alternating A/B rounds, medians), the machine's convolution ceiling, and peak memory of
a workload run in its own process."""

from __future__ import annotations

import json
import math
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

# The clock and the pause every timing here uses (names of their own, so that tests can drive them).
_clock = time.perf_counter
_sleep = time.sleep
# Calls of one candidate in a row per sample, at most: enough for any path this bench times to last MIN_SECONDS.
MAX_REPEATS = 50
MIN_SECONDS = 0.25
# Quiet time before every sample. ONNX Runtime's worker threads spin for some 20-50 ms after a run: a bf16 forward
# of DeepLabV3-R50 OS16 right after an ORT run took 0.161 s, 0.133 s after a 20 ms pause, 0.124 s after 100 ms
# (Intel Xeon, 2 cores), so without a pause one candidate's leftover threads are timed as the next one's cost.
SETTLE_SECONDS = 0.1


def ab_medians(
    candidates: dict[str, Callable[[], object]],
    *,
    rounds: int = 5,
    warmup: int = 1,
    min_seconds: float = MIN_SECONDS,
    settle: float = SETTLE_SECONDS,
) -> dict[str, float]:
    """Median seconds per call of each candidate. Candidates alternate within every round, so a slow spell of a
    shared machine hits all of them alike; ``warmup`` calls each (caches, lazy initialisation) are not timed, and
    every sample starts ``settle`` seconds after the previous one ended.

    A candidate whose last warm-up call took less than ``min_seconds`` is called several times in a row in each
    round (enough to last ``min_seconds``, at most ``MAX_REPEATS``) and its sample is the mean of those calls:
    timed once per round, a 0.1 s path's figure hangs on single hiccups of a shared machine. Without warm-up, one
    call a round.
    """

    def sample(run: Callable[[], object], calls: int) -> float:
        _sleep(settle)
        start = _clock()
        for _ in range(calls):
            run()
        return _clock() - start

    repeats: dict[str, int] = {}
    for name, run in candidates.items():
        last = None
        for _ in range(warmup):
            last = sample(run, 1)
        short = last is not None and 0 < last < min_seconds
        repeats[name] = min(MAX_REPEATS, math.ceil(min_seconds / last)) if short else 1
    seconds: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, run in candidates.items():
            seconds[name].append(sample(run, repeats[name]) / repeats[name])
    return {name: statistics.median(values) for name, values in seconds.items()}


def conv_ceiling(*, rounds: int = 7) -> float:
    """GFLOP/s this machine reaches on large 3x3 convolutions (fp32, channels_last, oneDNN, batch 1): the best of
    two shapes of the size that dominates a DeepLab backbone. Matrix products are not used: on some CPUs they
    reach half of what the convolution kernels do."""
    best = 0.0
    with torch.no_grad():
        for channels, size in ((512, 65), (1024, 65)):
            conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False).eval()
            conv = conv.to(memory_format=torch.channels_last)
            x = torch.randn(1, channels, size, size).contiguous(memory_format=torch.channels_last)
            seconds = ab_medians({"conv": lambda conv=conv, x=x: conv(x)}, rounds=rounds, warmup=2)["conv"]
            best = max(best, 2 * channels * channels * 9 * size * size / seconds / 1e9)
    return best


def gemm_peak(*, rounds: int = 7) -> float:
    """GFLOP/s of the largest-throughput shape a CPU has: a 1x1 convolution that is one big matrix product
    (4096 pixels x 1024 -> 1024 channels, fp32, channels_last, oneDNN), the practical peak the networks are judged
    against."""
    with torch.no_grad():
        conv = nn.Conv2d(1024, 1024, 1, bias=False).eval().to(memory_format=torch.channels_last)
        x = torch.randn(1, 1024, 64, 64).contiguous(memory_format=torch.channels_last)
        seconds = ab_medians({"gemm": lambda: conv(x)}, rounds=rounds, warmup=2)["gemm"]
    return 2 * 1024 * 1024 * 64 * 64 / seconds / 1e9


def peak_rss_mib() -> float:
    """This process's peak resident memory so far, in MiB.

    Linux's VmHWM belongs to the process image, so it starts afresh in a child after exec; ``ru_maxrss`` does
    not (a child would report its parent's peak if that was higher).
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / (1024 if sys.platform == "darwin" else 1)


def run_child(module: str, task: dict) -> dict:
    """Run ``python -m module`` with ``task`` as JSON and return the JSON it prints last: a fresh process, so
    its peak memory is the workload's alone."""
    completed = subprocess.run(
        [sys.executable, "-m", module, json.dumps(task)], capture_output=True, text=True, check=False
    )
    if completed.returncode != 0:
        raise RuntimeError(f"benchmark child {module} {task} failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])
