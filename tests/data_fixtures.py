"""Tiny datasets written in each real on-disk layout (the loaders never see anything else)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from atrous.data.io import save_mask
from atrous.data.labels import voc_palette


def write_jpeg(path: Path, height: int, width: int, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path, quality=90)
    return path


def write_png(path: Path, array: np.ndarray, *, palette: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if palette:
        save_mask(path, array, voc_palette())
    else:
        Image.fromarray(array).save(path)
    return path


def make_disc_folder(root: Path, *, foreground: int = 255, train: int = 8, val: int = 2, size=(48, 64)) -> Path:
    """A folder dataset (``<split>/images/*.jpg``, ``<split>/masks/*.png``): bright discs on dark noise, each image's
    disc shifted a little; masks 0 (background) / ``foreground``, as a binary-mask tool writes them with 255."""
    height, width = size
    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("val", val)):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        for index in range(count):
            rows, cols = np.mgrid[0:height, 0:width]
            disc = (rows - height // 2) ** 2 + (cols - width // 3 - width // 16 * index) ** 2 < (height // 4) ** 2
            image = rng.integers(0, 60, (height, width, 3)).astype(np.uint8)
            image[disc] = 220
            Image.fromarray(image).save(root / split / "images" / f"{split}_{index}.jpg")
            Image.fromarray((disc * foreground).astype(np.uint8)).save(root / split / "masks" / f"{split}_{index}.png")
    return root


def make_voc(root: Path, *, train=("a", "b", "c"), val=("d", "e"), size=(24, 32), num_classes=21) -> Path:
    voc = root / "VOCdevkit" / "VOC2012"
    rng = np.random.default_rng(0)
    for index, image_id in enumerate([*train, *val]):
        write_jpeg(voc / "JPEGImages" / f"{image_id}.jpg", *size, seed=index)
        mask = rng.integers(0, num_classes, size, dtype=np.uint8)
        mask[0, :] = 255  # void boundary, as VOC draws it
        write_png(voc / "SegmentationClass" / f"{image_id}.png", mask, palette=True)
    split_dir = voc / "ImageSets" / "Segmentation"
    split_dir.mkdir(parents=True, exist_ok=True)
    (split_dir / "train.txt").write_text("\n".join(train) + "\n")
    (split_dir / "val.txt").write_text("\n".join(val) + "\n")
    (split_dir / "trainval.txt").write_text("\n".join([*train, *val]) + "\n")
    return voc


def make_sbd(root: Path, *, train=("b", "f", "d"), val=("g",), size=(24, 32)) -> Path:
    from scipy.io import savemat

    sbd = root / "benchmark_RELEASE" / "dataset"
    rng = np.random.default_rng(1)
    for index, image_id in enumerate([*train, *val]):
        write_jpeg(sbd / "img" / f"{image_id}.jpg", *size, seed=100 + index)
        segmentation = rng.integers(0, 21, size, dtype=np.uint8)
        (sbd / "cls").mkdir(parents=True, exist_ok=True)
        savemat(sbd / "cls" / f"{image_id}.mat", {"GTcls": {"Segmentation": segmentation, "Boundaries": np.zeros(1)}})
    (sbd / "train.txt").write_text("\n".join(train) + "\n")
    (sbd / "val.txt").write_text("\n".join(val) + "\n")
    return sbd


def make_cityscapes(root: Path, mask: np.ndarray, *, split="train", cities=("aachen", "bremen")) -> list[Path]:
    masks = []
    for index, city in enumerate(cities):
        stem = f"{city}_000000_0000{index}9"
        image = root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png"
        write_png(image, np.random.default_rng(index).integers(0, 256, (*mask.shape, 3), dtype=np.uint8))
        masks.append(write_png(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", mask))
    return masks
