"""Training data pipeline throughput on one core: atrous vs an equivalent torchvision transforms.v2 pipeline.

Both decode a 500x375 JPEG + palette PNG pair (VOC's typical size), random-scale it in [0.5, 2.0], crop/pad to
513, flip, and normalise with ImageNet mean/std. Runs alternate A/B; the median of the rounds is reported.

    python benchmarks/data_pipeline.py [--rounds 5] [--images 200]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.io import decode_image
from torchvision.transforms import v2

from atrous.data import SynthSpec, build_dataset, train_transforms, write_synthetic
from atrous.models.normalization import IMAGENET_RGB


def make_voc_sized_dataset(folder: Path, count: int) -> Path:
    """Synthetic samples resized to 500x375 and written in the VOC layout."""
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
    mean = [0.485, 0.456, 0.406]
    std = [0.229, 0.224, 0.225]
    transforms = v2.Compose(
        [
            v2.RandomResize(int(0.5 * 375), int(2.0 * 375)),  # shorter side in [0.5, 2.0] x 375
            v2.RandomCrop(crop, pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: 255}),
            v2.RandomHorizontalFlip(),
            v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64}, scale=True),
            v2.Normalize(mean, std),
        ]
    )

    def load(image_path: Path, mask_path: Path):
        image = tv_tensors.Image(decode_image(str(image_path), mode="RGB"))
        mask = tv_tensors.Mask(torch.from_numpy(np.array(Image.open(mask_path))))
        return transforms(image, mask)

    return load


def images_per_second(run, count: int) -> float:
    start = time.perf_counter()
    for index in range(count):
        run(index)
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--images", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        make_voc_sized_dataset(Path(folder), args.images)
        ours = build_dataset("synthetic", folder, "train", transforms=train_transforms(normalization=IMAGENET_RGB))
        theirs = torchvision_pipeline()
        image, mask = ours[0]
        assert image.shape == (3, 513, 513) and image.dtype == torch.float32 and mask.dtype == torch.int64
        rates = {"atrous": [], "torchvision.v2": []}
        for _ in range(args.rounds):
            rates["atrous"].append(images_per_second(lambda i: ours[i], args.images))
            rates["torchvision.v2"].append(images_per_second(lambda i: theirs(*ours.samples[i]), args.images))
    median = {name: statistics.median(values) for name, values in rates.items()}
    print(f"train pipeline, 500x375 JPEG+PNG -> 513x513 normalised, 1 thread, median of {args.rounds} rounds:")
    for name, value in median.items():
        print(f"  {name:<15} {value:7.1f} images/s")
    print(f"  ratio atrous / torchvision.v2: {median['atrous'] / median['torchvision.v2']:.2f}x")


if __name__ == "__main__":
    main()
