"""Confusion-matrix update cost for one 513x513 image with 21 classes: atrous vs torchmetrics, side by side.

    python benchmarks/metrics_update.py [--rounds 7] [--updates 200]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torchmetrics.classification import MulticlassConfusionMatrix

from atrous.metrics import ConfusionMatrix


def milliseconds_per_update(update, prediction, target, count: int) -> float:
    start = time.perf_counter()
    for _ in range(count):
        update(prediction, target)
    return (time.perf_counter() - start) / count * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--updates", type=int, default=200)
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    prediction = torch.randint(0, 21, (513, 513), generator=generator)
    target = torch.randint(0, 21, (513, 513), generator=generator)
    target[:20] = 255
    ours, theirs = ConfusionMatrix(21), MulticlassConfusionMatrix(21, ignore_index=255)
    for _ in range(5):
        ours.update(prediction, target)
        theirs.update(prediction, target)
    timings = {"atrous": [], "torchmetrics": []}
    for _ in range(args.rounds):
        timings["atrous"].append(milliseconds_per_update(ours.update, prediction, target, args.updates))
        timings["torchmetrics"].append(milliseconds_per_update(theirs.update, prediction, target, args.updates // 10))
    check_ours, check_theirs = ConfusionMatrix(21), MulticlassConfusionMatrix(21, ignore_index=255)
    check_ours.update(prediction, target)
    check_theirs.update(prediction, target)
    assert torch.equal(check_ours.matrix, check_theirs.compute()), "the two confusion matrices differ"
    median = {name: statistics.median(values) for name, values in timings.items()}
    print(f"confusion-matrix update, 513x513, 21 classes, {torch.get_num_threads()} threads, median of {args.rounds}:")
    for name, value in median.items():
        print(f"  {name:<13} {value:6.3f} ms")
    print(f"  speed-up: {median['torchmetrics'] / median['atrous']:.1f}x")


if __name__ == "__main__":
    main()
