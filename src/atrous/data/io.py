"""Reading images and masks as users' files really are: EXIF rotation, odd modes, 16-bit, palette PNGs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ..errors import DataError

# Pillow's decompression-bomb limit stays at its default on purpose: never set Image.MAX_IMAGE_PIXELS = None.


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as (H, W, 3) uint8 RGB (a read-only array), EXIF orientation applied.

    Grayscale, RGBA (alpha dropped), palette, CMYK and 16-bit images are converted; a file that fails to
    decode raises ``DataError`` naming it.
    """
    try:
        with Image.open(path) as image:
            image.load()
            ImageOps.exif_transpose(image, in_place=True)  # in place: no copy when there is nothing to rotate
            return _to_rgb_uint8(image)
    except Image.DecompressionBombError as error:
        raise DataError(f"{path}: refused: {error}") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise DataError(f"{path}: cannot decode image: {error}") from error


def _to_rgb_uint8(image: Image.Image) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit / 32-bit grayscale: scale the full range of the type down to 0..255 rather than clip.
        array = np.asarray(image)
        top = 65535.0 if image.mode.startswith("I;16") else max(float(array.max()), 1.0)
        gray = np.clip(array.astype(np.float32) * (255.0 / top), 0, 255).round().astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode != "RGB":
        image = image.convert("RGB")
    # Read-only view of Pillow's bytes (np.array would copy once more); transforms never write into it.
    return np.asarray(image)


def read_mask(path: str | Path) -> np.ndarray:
    """Read a label mask as (H, W) raw values: palette PNGs by index (never converted to RGB), 8- or 16-bit.

    Colour (RGB) masks are refused: their classes are colours, and the dataset must say how to map them.
    SBD's ``cls/*.mat`` files are read too (needs SciPy).
    """
    if Path(path).suffix == ".mat":
        return read_sbd_mat(path)
    try:
        with Image.open(path) as mask:
            if mask.mode in ("P", "L", "I;16", "I;16B", "I;16L", "I"):
                array = np.array(mask)
            elif mask.mode == "1":
                array = np.asarray(mask).astype(np.uint8)
            else:
                raise DataError(
                    f"{path}: mask has mode {mask.mode}; expected a single-channel label image "
                    "(palette 'P', 8-bit 'L' or 16-bit), one class index per pixel"
                )
    except Image.DecompressionBombError as error:
        raise DataError(f"{path}: refused: {error}") from error
    except (OSError, SyntaxError) as error:
        raise DataError(f"{path}: cannot decode mask: {error}") from error
    if array.dtype != np.uint8:
        if array.size and (array.min() < 0 or array.max() > 255):
            return array.astype(np.int64)
        array = array.astype(np.uint8)
    return array


def save_mask(path: str | Path, mask: np.ndarray, palette: np.ndarray) -> None:
    """Write (H, W) uint8 class indices as a palette PNG (VOC style) with ``palette`` (256, 3)."""
    image = Image.fromarray(mask.astype(np.uint8))  # mode "L"; putpalette turns it into "P"
    image.putpalette(palette.astype(np.uint8).flatten().tolist())
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def read_sbd_mat(path: str | Path) -> np.ndarray:
    """SBD class annotation: ``loadmat(f)["GTcls"][0]["Segmentation"][0]`` -> (H, W) uint8 0..20."""
    try:
        from scipy.io import loadmat
    except ImportError as error:
        raise DataError(f"{path}: reading SBD .mat annotations needs SciPy: pip install scipy") from error
    try:
        return np.asarray(loadmat(str(path))["GTcls"][0]["Segmentation"][0], dtype=np.uint8)
    except (OSError, ValueError, KeyError, IndexError, TypeError) as error:
        raise DataError(f"{path}: cannot read SBD annotation (expected GTcls.Segmentation): {error}") from error
