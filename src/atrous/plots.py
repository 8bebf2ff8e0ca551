"""PNG figures for runs: training curves, per-class IoU bars, normalised confusion matrix."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt


def read_log(path: str | Path) -> tuple[list[dict], list[dict]]:
    """(training rows, validation rows) of a run's metrics.jsonl."""
    train_rows, val_rows = [], []
    for line in Path(path).read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            (val_rows if "val" in row else train_rows).append(row)
    return train_rows, val_rows


def plot_training_curves(log_path: str | Path, out: str | Path) -> Path:
    """Loss, learning rate and validation mIoU against the iteration, side by side."""
    train_rows, val_rows = read_log(log_path)
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot([r["iteration"] for r in train_rows], [r["loss"] for r in train_rows], color="tab:blue")
    axes[0].set(title="training loss", xlabel="iteration")
    axes[1].plot([r["iteration"] for r in train_rows], [r["lr"] for r in train_rows], color="tab:orange")
    axes[1].set(title="learning rate (backbone)", xlabel="iteration")
    axes[2].plot([r["iteration"] for r in val_rows], [r["val"]["mIoU"] for r in val_rows], "o-", color="tab:green")
    axes[2].set(title="validation mIoU", xlabel="iteration", ylim=(0, 1))
    for axis in axes:
        axis.grid(alpha=0.3)
    figure.tight_layout()
    out = Path(out)
    figure.savefig(out, dpi=100)
    plt.close(figure)
    return out
