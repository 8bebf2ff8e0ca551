"""Training order that survives restarts: every sample's augmentation is seeded by (seed, epoch, index).

The order within an epoch is ``DistributedSampler``'s (shuffled with seed + epoch, one shard per rank), so a
run can resume mid-epoch by starting the sampler at an offset, and the augmentations drawn do not depend on
the number of data-loading workers or on where the run was interrupted.
"""

from __future__ import annotations

import random

from torch.utils.data import Dataset, DistributedSampler, Sampler


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return (seed * 1_000_003 + epoch) * 10_000_019 + index


class TrainSampler(Sampler):
    """Yields ``(index, sample_seed)`` for one epoch of this rank, from sample ``start`` on.

    samples_per_epoch: how many samples this rank uses per epoch (whole iterations only).
    """

    def __init__(self, dataset_size: int, *, rank: int, world_size: int, seed: int, samples_per_epoch: int):
        self.order = DistributedSampler(
            range(dataset_size), num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
        self.seed = seed
        self.samples_per_epoch = samples_per_epoch
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.order.set_epoch(epoch)
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return self.samples_per_epoch - self.start

    def __iter__(self):
        for position, index in enumerate(self.order):
            if position >= self.samples_per_epoch:
                break
            if position >= self.start:
                yield index, sample_seed(self.seed, self.epoch, index)


class SeededDataset(Dataset):
    """Seeds Python's ``random`` (which the transforms draw from) per sample, then reads it."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]):
        index, seed = item
        random.seed(seed)
        return self.dataset[index]
