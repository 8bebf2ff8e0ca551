"""Around the network: the training data pipeline, the confusion-matrix update and DenseCRF's use of the cores."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..data import SynthSpec, build_dataset, train_transforms, write_synthetic
from ..inference import dense_crf_batch
from ..metrics import ConfusionMatrix
from ..models.normalization import IMAGENET_RGB
from .timing import ab_medians


def _each(items, work) -> None:
    """Run ``work`` on every item, keeping no results (a list of 150 normalised 513x513 crops is 470 MB)."""
    for item in items:
        work(item)


def make_voc_sized_dataset(folder: Path, count: int) -> Path:
    """Synthetic samples resized to 500x375 (VOC's typical size) and written in the VOC layout."""
    root = write_synthetic(folder, SynthSpec(train=count, val=1, size=500), progress=False)
    for path in (root / "JPEGImages").glob("*.jpg"):
        Image.open(path).resize((500, 375), Image.BILINEAR).save(path, quality=90)
    for path in (root / "SegmentationClass").glob("*.png"):
        mask = Image.open(path)
        resized = mask.resize((500, 375), Image.NEAREST)
        resized.putpalette(mask.getpalette())
        resized.save(path)
    return folder


def torchvision_pipeline(crop: int = 513):
    """The same training pipeline in torchvision.transforms.v2: decode, random scale, crop/pad, flip, normalise."""
    from torchvision import tv_tensors
    from torchvision.io import decode_image
    from torchvision.transforms import v2

    transforms = v2.Compose(
        [
            v2.RandomResize(int(0.5 * 375), int(2.0 * 375)),  # shorter side in [0.5, 2.0] x 375
            v2.RandomCrop(crop, pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: 255}),
            v2.RandomHorizontalFlip(),
            v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64}, scale=True),
            v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )

    def load(image_path: Path, mask_path: Path):
        image = tv_tensors.Image(decode_image(str(image_path), mode="RGB"))
        mask = tv_tensors.Mask(torch.from_numpy(np.array(Image.open(mask_path))))
        return transforms(image, mask)

    return load


def data_pipeline(*, images: int = 150, rounds: int = 5) -> dict:
    """Images per second on one thread: atrous's training pipeline against torchvision.v2's, 500x375 -> 513."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory() as folder:
            make_voc_sized_dataset(Path(folder), images)
            ours = build_dataset("synthetic", folder, "train", transforms=train_transforms(normalization=IMAGENET_RGB))
            theirs = torchvision_pipeline()
            image, mask = ours[0]
            assert image.shape == (3, 513, 513) and image.dtype == torch.float32 and mask.dtype == torch.int64
            seconds = ab_medians({
                "atrous": lambda: _each(range(images), lambda i: ours[i]),
                "torchvision.v2": lambda: _each(range(images), lambda i: theirs(*ours.samples[i])),
            }, rounds=rounds)  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    return {name: images / value for name, value in seconds.items()}


def confusion_matrix_update(*, updates: int = 100, rounds: int = 7) -> dict:
    """Milliseconds per 513x513 update with 21 classes: atrous against torchmetrics (checked equal first)."""
    from torchmetrics.classification import MulticlassConfusionMatrix

    generator = torch.Generator().manual_seed(0)
    prediction = torch.randint(0, 21, (513, 513), generator=generator)
    target = torch.randint(0, 21, (513, 513), generator=generator)
    target[:20] = 255
    ours, theirs = ConfusionMatrix(21), MulticlassConfusionMatrix(21, ignore_index=255)
    ours.update(prediction, target)
    theirs.update(prediction, target)
    if not torch.equal(ours.matrix, theirs.compute()):
        raise AssertionError("atrous and torchmetrics confusion matrices differ")
    seconds = ab_medians({
        "atrous": lambda: _each(range(updates), lambda _: ours.update(prediction, target)),
        "torchmetrics": lambda: _each(range(updates // 10), lambda _: theirs.update(prediction, target)),
    }, rounds=rounds)  # fmt: skip
    return {"atrous": seconds["atrous"] / updates * 1000, "torchmetrics": seconds["torchmetrics"] / (updates // 10) * 1000}


def densecrf_cores(*, images: int = 4, size: int = 257) -> dict:
    """DenseCRF on ``images`` images: one process against all cores; the results must be identical."""
    generator = np.random.default_rng(0)
    raw = [generator.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(images)]
    probabilities = [generator.dirichlet(np.ones(21), size=(size, size)).transpose(2, 0, 1).astype(np.float32)
                     for _ in range(images)]  # fmt: skip
    cores = os.cpu_count() or 1
    timings, results = {}, {}
    for workers in (1, cores):
        start = time.perf_counter()
        results[workers] = dense_crf_batch(raw, probabilities, workers=workers)
        timings[workers] = time.perf_counter() - start
    if not all(np.array_equal(a, b) for a, b in zip(results[1], results[cores])):
        raise AssertionError("DenseCRF results differ between one process and several")
    return {"images": images, "workers": cores, "serial_s": timings[1], "parallel_s": timings[cores],
            "speedup": timings[1] / timings[cores]}  # fmt: skip
