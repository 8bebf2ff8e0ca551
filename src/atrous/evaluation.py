"""Evaluating a model on a dataset into a confusion matrix, exact under DDP (no sample counted twice)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from .metrics import ConfusionMatrix

REPORT_SAMPLES = 8  # images shown in a report's prediction grid


def shard(dataset, rank: int, world_size: int) -> Subset:
    """Every ``world_size``-th sample from ``rank``: each sample on exactly one rank, no padding duplicates."""
    return Subset(dataset, list(range(rank, len(dataset), world_size)))


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    dataset,
    *,
    num_classes: int,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
    batch_size: int = 1,
    workers: int = 0,
    predict: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor] | None = None,
    channels_last: bool = False,
    progress: bool = True,
) -> ConfusionMatrix:
    """Confusion matrix of ``model`` on ``dataset`` (items: normalised image, int64 mask), summed over ranks.

    predict(model, images) -> (N, H, W) class indices; default: argmax of the full-resolution logits.
    """
    was_training = model.training
    model.eval()
    loader = DataLoader(
        shard(dataset, rank, world_size),
        batch_size=batch_size,
        num_workers=workers,
        generator=torch.Generator(),  # never draws from the global RNG (exact resume)
    )
    matrix = ConfusionMatrix(num_classes, device=device)
    for images, masks in tqdm(loader, desc="eval", disable=not progress, unit="batch", leave=False):
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        prediction = predict(model, images) if predict is not None else model(images).logits.argmax(dim=1)
        matrix.update(prediction, masks.to(device, non_blocking=True))
    matrix.all_reduce()
    model.train(was_training)
    return matrix


def run_evaluation(
    model,
    dataset,
    *,
    options,
    out_dir,
    device: torch.device,
    class_names: list[str],
    save_predictions: bool = False,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
    report_config: dict | None = None,
    training_log=None,
) -> dict:
    """Evaluate with any inference options (TTA, sliding window, CRF) on a raw dataset (uint8 images), and write
    ``metrics.json``, ``per_class_iou.png``, ``confusion_matrix.png``, ``report.html`` (and coloured predictions)
    to ``out_dir``."""
    import json
    from pathlib import Path

    import numpy as np
    from PIL import Image

    from .inference import model_input, predict
    from .plots import plot_confusion_matrix, plot_per_class_iou, plot_training_curves
    from .report import write_report
    from .visualize import colorize

    out_dir = Path(out_dir)
    matrix = ConfusionMatrix(len(class_names), device=device)
    indices = list(range(rank, len(dataset), world_size))
    samples = []
    for index in tqdm(indices, desc="eval", disable=not progress or rank != 0, unit="img"):
        image, mask = dataset[index]
        labels = predict(model, model_input([image], model, device), options, raw_images=[image])[0]
        matrix.update(labels, torch.from_numpy(np.ascontiguousarray(mask)).to(device))
        if len(samples) < REPORT_SAMPLES:
            samples.append((Path(dataset.samples[index][0]).name, image, mask, labels.cpu().numpy()))
        if save_predictions:
            stem = Path(dataset.samples[index][0]).stem
            (out_dir / "predictions").mkdir(parents=True, exist_ok=True)
            Image.fromarray(colorize(labels.cpu().numpy(), dataset.palette)).save(out_dir / "predictions" / f"{stem}.png")
    matrix.all_reduce()
    scores = matrix.scores()
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        report = {**scores, "class_names": class_names, "confusion_matrix": matrix.matrix.cpu().tolist()}
        (out_dir / "metrics.json").write_text(json.dumps(report, indent=2))
        figures = {}
        if training_log is not None and Path(training_log).is_file():  # the run that produced the weights
            figures["training curves"] = plot_training_curves(training_log, out_dir / "curves.png")
        figures |= {
            "per-class IoU": plot_per_class_iou(class_names, scores["per_class_iou"], out_dir / "per_class_iou.png"),
            "confusion matrix": plot_confusion_matrix(
                class_names, matrix.matrix.cpu().numpy(), out_dir / "confusion_matrix.png"
            ),
        }
        write_report(
            out_dir, title=f"atrous evaluation: {dataset.name}", class_names=class_names, palette=dataset.palette,
            scores=scores, figures=figures, samples=samples, config=report_config,
        )  # fmt: skip
    return scores


def format_scores(scores: dict, class_names: list[str]) -> str:
    """The per-class table printed in the terminal."""
    import math

    width = max(len(name) for name in [*class_names, "class", "mean_class_accuracy"])
    lines = [f"{'class'.ljust(width)}  {'IoU':>7}  {'acc':>7}  {'dice':>7}", "-" * (width + 27)]
    for i, name in enumerate(class_names):
        cells = [scores[key][i] for key in ("per_class_iou", "per_class_accuracy", "per_class_dice")]
        lines.append(f"{name.ljust(width)}  " + "  ".join("    n/a" if math.isnan(c) else f"{c:7.4f}" for c in cells))
    lines.append("-" * (width + 27))
    for key in ("mIoU", "pixel_accuracy", "mean_class_accuracy", "fwIoU", "mean_dice"):
        lines.append(f"{key.ljust(width)}  {scores[key]:7.4f}")
    return "\n".join(lines)
