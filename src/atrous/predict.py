"""``atrous predict``: label PNGs and overlays for image files, folders and globs."""

from __future__ import annotations

import glob
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from .data.folder import IMAGE_EXTENSIONS
from .data.io import read_image, save_mask
from .errors import MissingFileError
from .inference import InferenceOptions, model_input, predict
from .visualize import overlay


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files, folders (searched recursively for images) and glob patterns -> sorted unique image paths."""
    found: set[Path] = set()
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found.update(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        elif path.is_file():
            found.add(path)
        else:
            matches = [Path(m) for m in glob.glob(item, recursive=True)]
            if not matches:
                raise MissingFileError(f"no such file, folder or matching glob: {item}")
            found.update(m for m in matches if m.is_file())
    return sorted(found)


def predict_files(
    model,
    paths: list[Path],
    out_dir: str | Path,
    *,
    palette: np.ndarray,
    options: InferenceOptions | None = None,
    batch_size: int = 4,
    device: torch.device | None = None,
    progress: bool = True,
) -> list[Path]:
    """Write ``<stem>.png`` (palette label image) and ``<stem>_overlay.jpg`` per input, at the image's own size
    (EXIF orientation applied). Images of equal size are batched together."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = device or torch.device("cpu")
    images = {path: read_image(path) for path in paths}
    stem_counts = defaultdict(int)
    for path in paths:
        stem_counts[path.stem] += 1
    # Same stem in two folders: prefix the folder name rather than overwrite.
    names = {path: path.stem if stem_counts[path.stem] == 1 else f"{path.parent.name}_{path.stem}" for path in paths}
    by_size: dict[tuple[int, int], list[Path]] = defaultdict(list)
    for path, image in images.items():
        by_size[image.shape[:2]].append(path)
    written = []
    bar = tqdm(total=len(paths), desc="predict", unit="img", disable=not progress)
    for group in by_size.values():
        for start in range(0, len(group), batch_size):
            chunk = group[start : start + batch_size]
            raw = [images[path] for path in chunk]
            labels = predict(model, model_input(raw, model, device), options, raw_images=raw).cpu().numpy()
            for path, image, label in zip(chunk, raw, labels):
                mask_path = out_dir / f"{names[path]}.png"
                save_mask(mask_path, label.astype(np.uint8), palette)
                Image.fromarray(overlay(image, label, palette)).save(out_dir / f"{names[path]}_overlay.jpg", quality=92)
                written.append(mask_path)
            bar.update(len(chunk))
    bar.close()
    return written
