"""Evaluating a model on a dataset into a confusion matrix, exact under DDP (no sample counted twice)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from .metrics import ConfusionMatrix


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
