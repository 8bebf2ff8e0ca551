"""The one evaluation core (training validation, ``atrous eval`` and the demo all use ``evaluate``) and the one
report writer (``write_run_report``)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .atomic import write_text_whole
from .data.io import save_image
from .errors import ConfigError, DataError
from .folder_lock import output_folder
from .inference import InferenceOptions, model_input, predict
from .metrics import ConfusionMatrix
from .paths import check_writable_dir
from .progress import progress_bar
from .visualize import colorize

log = logging.getLogger(__name__)

REPORT_SAMPLES = 8  # images shown in a report's prediction grid


@dataclass
class ReportSample:
    """One row of a report's prediction grid: (H, W, 3) uint8 image, (H, W) ground truth and prediction."""

    name: str
    image: np.ndarray
    truth: np.ndarray
    prediction: np.ndarray


@dataclass
class Evaluation:
    """A confusion matrix summed over every process, and the first samples of rank 0 for the report."""

    matrix: ConfusionMatrix
    samples: list[ReportSample] = field(default_factory=list)

    @property
    def scores(self) -> dict:
        return self.matrix.scores()


def shard(length: int, rank: int, world_size: int) -> list[int]:
    """Every ``world_size``-th index from ``rank``: each sample on exactly one rank, no padding duplicates."""
    return list(range(rank, length, world_size))


def _sample_name(dataset, index: int) -> str:
    """The image file's name for ``SegmentationDataset``s; the index for other datasets."""
    samples = getattr(dataset, "samples", None)
    return Path(samples[index][0]).name if samples is not None else f"sample {index}"


class _Shard(Dataset):
    """``dataset``'s items at ``indices`` as (index, (image, mask)), or (index, None) for a sample that fails to load
    when the dataset skips bad samples (``on_error="skip"``): evaluation leaves it out, where ``dataset[index]`` would
    stand the next sample in for it and count that one twice."""

    def __init__(self, dataset, indices: list[int]):
        self.dataset, self.indices = dataset, indices
        self.skips = getattr(dataset, "on_error", "raise") == "skip" and hasattr(dataset, "load")

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int):
        index = self.indices[position]
        if not self.skips:
            return index, self.dataset[index]
        try:
            return index, self.dataset.load(index)
        except DataError as error:
            log.warning("evaluation skips sample %d: %s", index, error)
            return index, None


def _as_batch(items: list) -> list:
    return items  # (image, mask) arrays of any size; ``model_input`` stacks them


@torch.no_grad()
def evaluate(
    model,
    dataset,
    *,
    device: torch.device,
    options: InferenceOptions | None = None,
    rank: int = 0,
    world_size: int = 1,
    batch_size: int = 1,
    workers: int = 0,
    channels_last: bool = False,
    progress: bool = True,
    keep_samples: int = REPORT_SAMPLES,
    on_prediction: Callable[[int, np.ndarray], None] | None = None,
) -> Evaluation:
    """Evaluate ``model`` on this rank's shard of ``dataset`` and sum the confusion matrix over ranks.

    dataset: items are untransformed ``(image, mask)`` arrays ((H, W, 3) uint8 RGB, (H, W) uint8 class indices with
    255 ignored), as ``build_dataset(..., transforms=None)`` gives them; the model's own normalisation is applied here.
    options: whole image by default; multi-scale, flip, sliding window and CRF as ``InferenceOptions`` says.
    batch_size > 1 needs images of one size. on_prediction(index, labels) is called for every prediction
    ((H, W) int64), e.g. to save it.
    """
    was_training = getattr(model, "training", False)
    if isinstance(model, torch.nn.Module):
        model.eval()
    indices = shard(len(dataset), rank, world_size)
    loader = DataLoader(
        _Shard(dataset, indices), batch_size=batch_size, num_workers=workers, collate_fn=_as_batch,
        generator=torch.Generator(),  # never draws from the global RNG (exact resume)
    )  # fmt: skip
    matrix = ConfusionMatrix(model.num_classes, device=device)
    samples: list[ReportSample] = []
    for batch in progress_bar(loader, desc="eval", disable=not progress or rank != 0, unit="batch", leave=False):
        batch = [(index, item) for index, item in batch if item is not None]
        if not batch:
            continue
        images, masks = [image for _, (image, _) in batch], [mask for _, (_, mask) in batch]
        if len({image.shape for image in images}) > 1:
            raise DataError(f"a validation batch of {batch_size} needs images of one size, got "
                            f"{sorted({image.shape[:2] for image in images})}: set data.val_batch_size=1")  # fmt: skip
        inputs = model_input(images, model, device)
        if channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        labels = predict(model, inputs, options, raw_images=images)
        matrix.update(labels, torch.from_numpy(np.stack(masks)).to(device).long())
        for (index, _), image, mask, label in zip(batch, images, masks, labels):
            if len(samples) < keep_samples or on_prediction is not None:
                label = label.cpu().numpy()
            if len(samples) < keep_samples:
                samples.append(ReportSample(_sample_name(dataset, index), image, mask, label))
            if on_prediction is not None:
                on_prediction(index, label)
    matrix.all_reduce()
    if isinstance(model, torch.nn.Module):
        model.train(was_training)
    return Evaluation(matrix, samples)


def run_evaluation(
    model,
    dataset,
    *,
    out_dir: str | Path,
    device: torch.device,
    options: InferenceOptions | None = None,
    save_predictions: bool = False,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
    report: dict | None = None,
    training_log: str | Path | None = None,
    on_scores: Callable[[Evaluation], None] | None = None,
) -> Evaluation:
    """``evaluate`` and write ``metrics.json``, the figures and ``report.html`` (and coloured predictions) to
    ``out_dir`` on rank 0. ``report``: what the report states about the run (weights, mode, configuration).

    No evaluation is lost to its output folder. Before the first image, ``out_dir`` (on rank 0) and its
    ``predictions`` folder (on every rank, which all save theirs) are created and proven writable, else
    ``ConfigError`` naming the folder and the system's reason (under torchrun the failing rank ends the job).
    A second evaluation writing into ``out_dir`` meanwhile is refused (``folder_lock.output_folder``), and every
    file is written whole. ``on_scores(result)`` is called on rank 0 as soon as the scores exist, before any report
    file is written: the command line prints them there. A write that fails after that (a full disk) raises
    ``ConfigError`` naming the file and the mIoU.
    """
    out_dir = Path(out_dir)
    # Rank 0 holds the folder (the other ranks only add their saved predictions): a second evaluation into it is
    # refused rather than mixing its metrics with this one's report.
    with output_folder(out_dir, "evaluation") if rank == 0 else contextlib.nullcontext():
        predictions = out_dir / "predictions"
        if save_predictions:
            check_writable_dir(predictions, "folder for the saved predictions")

        def save(index: int, labels: np.ndarray) -> None:
            stem = Path(dataset.samples[index][0]).stem
            save_image(predictions / f"{stem}.png", colorize(labels, dataset.palette))

        result = evaluate(
            model, dataset, device=device, options=options, rank=rank, world_size=world_size, progress=progress,
            on_prediction=save if save_predictions else None,
        )  # fmt: skip
        if rank != 0:
            return result
        if on_scores is not None:
            on_scores(result)
        scores = result.scores
        metrics = {**scores, "class_names": dataset.class_names,
                   "confusion_matrix": result.matrix.matrix.cpu().tolist()}  # fmt: skip
        # The report says what ran the model and how, also for callers that do not say (the demo, Python scripts).
        details = {"runtime": getattr(model, "runtime", "eager"),
                   "inference": dataclasses.asdict(options or InferenceOptions()), **(report or {})}  # fmt: skip
        try:
            # metrics.json first: the one file scripts read
            write_text_whole(out_dir / "metrics.json", json.dumps(metrics, indent=2))
            write_run_report(
                out_dir, title=f"atrous evaluation: {dataset.name}", class_names=dataset.class_names,
                palette=dataset.palette, evaluation=result, training_log=training_log, details=details,
            )  # fmt: skip
        except OSError as error:
            raise ConfigError(f"the evaluation finished (mIoU {scores['mIoU']:.4f}) but writing its results failed: "
                              f"{error.filename or out_dir}: {error.strerror or error}") from error  # fmt: skip
        return result


def write_run_report(
    directory: str | Path,
    *,
    title: str,
    class_names: Sequence[str],
    palette: np.ndarray,
    evaluation: Evaluation | None = None,
    training_log: str | Path | None = None,
    details: dict | None = None,
) -> Path:
    """The report of a run or an evaluation: training curves (when ``training_log`` exists), the scores table,
    per-class IoU chart, confusion matrix and prediction grid (when ``evaluation`` is given), and ``details``, in
    ``directory/report.html`` beside its PNGs.

    details: ``weights`` (path), ``inference`` (``InferenceOptions`` as a dict) and ``runtime``, stated under the
    title, and the resolved configuration under ``config``, shown at the end; a dict with none of these keys is the
    configuration itself (a training run's report)."""
    # Here, not at the top: matplotlib (behind plots) adds 0.4 s to importing atrous (measured on 2 cores), which every
    # command would pay, reports or not.
    from .plots import plot_confusion_matrix, plot_per_class_iou, plot_training_curves
    from .report import EVALUATED, write_report

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    names = list(class_names)
    figures = {}
    if training_log is not None and Path(training_log).is_file():
        figures["training curves (loss, learning rate, validation mIoU)"] = plot_training_curves(
            training_log, directory / "curves.png"
        )
    scores = evaluation.scores if evaluation is not None else None
    if evaluation is not None:
        figures["per-class IoU"] = plot_per_class_iou(names, scores["per_class_iou"], directory / "per_class_iou.png")
        figures["confusion matrix"] = plot_confusion_matrix(
            names, evaluation.matrix.matrix.cpu().numpy(), directory / "confusion_matrix.png"
        )
    samples = [(s.name, s.image, s.truth, s.prediction) for s in evaluation.samples] if evaluation else None
    details = dict(details or {})
    evaluated = {key: details.pop(key) for key in EVALUATED if key in details}
    config = details.get("config") if evaluated or "config" in details else details or None
    return write_report(
        directory, title=title, class_names=names, palette=palette, evaluated=evaluated, config=config,
        scores=scores, figures=figures, samples=samples,
    )  # fmt: skip


def format_scores(scores: dict, class_names: list[str]) -> str:
    """The per-class table printed in the terminal."""
    width = max(len(name) for name in [*class_names, "class", "mean_class_accuracy"])
    lines = [f"{'class'.ljust(width)}  {'IoU':>7}  {'acc':>7}  {'dice':>7}", "-" * (width + 27)]
    for i, name in enumerate(class_names):
        cells = [scores[key][i] for key in ("per_class_iou", "per_class_accuracy", "per_class_dice")]
        lines.append(f"{name.ljust(width)}  " + "  ".join("    n/a" if math.isnan(c) else f"{c:7.4f}" for c in cells))
    lines.append("-" * (width + 27))
    for key in ("mIoU", "pixel_accuracy", "mean_class_accuracy", "fwIoU", "mean_dice"):
        lines.append(f"{key.ljust(width)}  {scores[key]:7.4f}")
    return "\n".join(lines)
