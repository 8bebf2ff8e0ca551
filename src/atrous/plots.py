"""PNG figures for runs: training curves, per-class IoU bars, normalised confusion matrix."""

from __future__ import annotations

import json
import math
from pathlib import Path

# The object-oriented API (Figure, not pyplot) renders to files without choosing a backend: importing atrous never
# changes the backend of a notebook or an application.
from matplotlib.figure import Figure

from .atomic import written_whole


def read_log(path: str | Path) -> tuple[list[dict], list[dict]]:
    """(training rows, validation rows) of a run's metrics.jsonl."""
    train_rows, val_rows = [], []
    for line in Path(path).read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            (val_rows if "val" in row else train_rows).append(row)
    return train_rows, val_rows


def save_figure(figure: Figure, out: str | Path) -> Path:
    """``figure`` as a PNG at ``out``, written whole (an interrupted run leaves the previous figure or none)."""
    out = Path(out)
    with written_whole(out) as temporary:
        figure.savefig(temporary, format="png", dpi=100)
    return out


def plot_training_curves(log_path: str | Path, out: str | Path) -> Path:
    """Loss, learning rate and validation mIoU against the iteration, side by side."""
    train_rows, val_rows = read_log(log_path)
    # Shown about 700 px wide on a narrow screen: its text is set larger than matplotlib's default to stay legible.
    figure = Figure(figsize=(12, 3.6))
    axes = figure.subplots(1, 3)
    axes[0].plot([r["iteration"] for r in train_rows], [r["loss"] for r in train_rows], color="tab:blue")
    axes[0].set(title="training loss", xlabel="iteration")
    axes[1].plot([r["iteration"] for r in train_rows], [r["lr"] for r in train_rows], color="tab:orange")
    axes[1].set(title="learning rate (backbone)", xlabel="iteration")
    axes[2].plot([r["iteration"] for r in val_rows], [r["val"]["mIoU"] for r in val_rows], "o-", color="tab:green")
    axes[2].set(title="validation mIoU", xlabel="iteration", ylim=(0, 1))
    axes[1].ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))  # 1.5 x 1e-3, not 0.00150
    for axis in axes:
        axis.grid(alpha=0.3)
        axis.title.set_fontsize(13)
        axis.xaxis.label.set_fontsize(12)
        axis.tick_params(labelsize=11)
    figure.tight_layout()
    return save_figure(figure, out)


# A bar at least this long carries its value inside its end (white on the bar); a shorter one just past its end, in
# the empty part of the axes. Either way the label never straddles the bar's end or leaves the axes.
LABEL_INSIDE_FROM = 0.2


def per_class_iou_figure(class_names: list[str], iou: list[float]) -> Figure:
    """Horizontal bars of per-class IoU with their values (absent classes shown as 'n/a')."""
    height = max(3.0, 0.28 * len(class_names) + 1)
    figure = Figure(figsize=(7, height))
    axis = figure.subplots()
    values = [0.0 if math.isnan(v) else v for v in iou]
    positions = list(range(len(class_names)))
    axis.barh(positions, values, color="tab:blue")
    for position, value in zip(positions, iou):
        if math.isnan(value):
            axis.text(0.01, position, "n/a", va="center", ha="left", fontsize=8, color="dimgray")
        elif value >= LABEL_INSIDE_FROM:
            axis.text(value - 0.01, position, f"{value:.3f}", va="center", ha="right", fontsize=8, color="white")
        else:
            axis.text(value + 0.01, position, f"{value:.3f}", va="center", ha="left", fontsize=8)
    axis.set_yticks(positions, class_names, fontsize=8)
    axis.invert_yaxis()
    axis.set(xlim=(0, 1), xlabel="IoU", title="per-class IoU")
    figure.tight_layout()
    return figure


def plot_per_class_iou(class_names: list[str], iou: list[float], out: str | Path) -> Path:
    """``per_class_iou_figure`` as a PNG."""
    return save_figure(per_class_iou_figure(class_names, iou), out)


def plot_confusion_matrix(class_names: list[str], matrix, out: str | Path) -> Path:
    """Row-normalised confusion matrix (rows: ground truth) as a heatmap."""
    import numpy as np

    counts = np.asarray(matrix, dtype=np.float64)
    normalised = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = max(4.0, 0.35 * len(class_names) + 2)
    figure = Figure(figsize=(size, size))
    axis = figure.subplots()
    image = axis.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    ticks = list(range(len(class_names)))
    axis.set_xticks(ticks, class_names, rotation=90, fontsize=7)
    axis.set_yticks(ticks, class_names, fontsize=7)
    axis.set(xlabel="prediction", ylabel="ground truth", title="confusion matrix (row-normalised)")
    figure.colorbar(image, fraction=0.046, pad=0.04)
    figure.tight_layout()
    return save_figure(figure, out)
