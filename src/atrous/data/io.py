"""Reading images and masks as users' files really are: EXIF rotation, odd modes, 16-bit, palette PNGs."""

from __future__ import annotations

import logging
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ..atomic import written_whole
from ..errors import DataError

log = logging.getLogger(__name__)

# Pillow's decompression-bomb limit stays at its default on purpose: never set Image.MAX_IMAGE_PIXELS = None.


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as (H, W, 3) uint8 RGB (a read-only array), EXIF orientation applied.

    Grayscale, RGBA (alpha dropped), palette, CMYK and 16-bit images are converted; of an animated or multi-page
    file the first frame is read (with a warning); a file that fails to decode, or a PNG whose data ends before its
    last row, raises ``DataError`` naming it.
    """
    require_complete_png(path, what="image")
    try:
        with Image.open(path) as image:
            frames = getattr(image, "n_frames", 1)
            if frames > 1:  # an animated GIF or WebP, a multi-page TIFF: one image is predicted, and the user told
                log.warning("%s: %s of %d frames: the first is used", path, image.format, frames)
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

    Colour (RGB) masks are refused: their classes are colours, and the dataset must say how to map them. A PNG whose
    data ends before its last row raises ``DataError`` (its missing rows would read as class 0).
    SBD's ``cls/*.mat`` files are read too (needs SciPy).
    """
    if Path(path).suffix == ".mat":
        return read_sbd_mat(path)
    require_complete_png(path, what="mask")
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


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel
# Adam7's passes: (first column, first row, column step, row step).
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
_INFLATE_BLOCK = 1 << 20  # bytes of image data inflated at a time: counted, never kept


def _png_chunks(data: memoryview):
    """(type, payload) of each complete chunk, in file order; stops where the file does."""
    position = len(_PNG_SIGNATURE)
    while position + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, position)
        yield kind, data[position + 8 : position + 8 + length]
        position += 12 + length


def _png_data_size(width: int, height: int, bits_per_pixel: int, interlaced: bool) -> tuple[int, int]:
    """(bytes of filtered image data the header promises, bytes per row when not interlaced)."""

    def size(columns: int, rows: int) -> int:
        return rows * (1 + (columns * bits_per_pixel + 7) // 8) if columns and rows else 0

    if not interlaced:
        return size(width, height), size(width, 1)
    passes = [size(max(0, -(-(width - x) // dx)), max(0, -(-(height - y) // dy))) for x, y, dx, dy in _ADAM7]
    return sum(passes), 0


def require_complete_png(path: str | Path, *, what: str) -> None:
    """Raise ``DataError`` when a PNG's image data ends before the size its header gives.

    Pillow decodes such a file without an error: a zlib stream that is complete but holds only the first rows (a
    damaged or half-written file) leaves the other rows zero, which would read as black pixels or class-0 labels.
    Only the compressed data is inflated here, counted and discarded, before Pillow allocates the image. Files that
    are not PNG, or cannot be opened, are left to Pillow.
    """
    try:
        with open(path, "rb") as handle:
            if handle.read(len(_PNG_SIGNATURE)) != _PNG_SIGNATURE:
                return
            data = memoryview(_PNG_SIGNATURE + handle.read())  # slices of it are views, not copies
    except OSError:
        return
    chunks = _png_chunks(data)
    kind, header = next(chunks, (None, b""))
    if kind != b"IHDR" or len(header) < 13:
        return  # Pillow says what is wrong with the header
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header[:13])
    if colour not in _PNG_CHANNELS:
        return
    expected, row = _png_data_size(width, height, depth * _PNG_CHANNELS[colour], interlace == 1)
    inflater, decoded = zlib.decompressobj(), 0
    try:
        for kind, payload in chunks:
            if kind != b"IDAT" or decoded >= expected:
                continue
            while payload and decoded < expected:
                decoded += len(inflater.decompress(payload, _INFLATE_BLOCK))
                payload = inflater.unconsumed_tail
    except zlib.error as error:
        raise DataError(f"{path}: cannot decode {what}: its compressed PNG data is damaged ({error})") from error
    if decoded < expected:
        if row:
            ends = f"after {decoded // row} of {height} rows"
        else:
            ends = f"after {decoded} of {expected} bytes (interlaced)"
        raise DataError(f"{path}: {what} data ends {ends}: a truncated or damaged PNG (its other rows would read as "
                        "zeros)")  # fmt: skip


def save_image(path: str | Path, image: np.ndarray | Image.Image, **options) -> Path:
    """Write ``image`` ((H, W[, 3]) uint8 or a PIL image) whole: under a temporary name renamed over ``path``, so an
    interrupted writer leaves the previous file or none, never a truncated one. The format follows the suffix;
    ``options`` go to PIL (``quality=92`` for a JPEG)."""
    path = Path(path)
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    image_format = Image.registered_extensions().get(path.suffix.lower())
    if image_format is None:
        raise ValueError(f"{path}: no image format has the suffix {path.suffix!r} (.png, .jpg, ...)")
    path.parent.mkdir(parents=True, exist_ok=True)
    with written_whole(path) as temporary:
        image.save(temporary, format=image_format, **options)
    return path


def save_mask(path: str | Path, mask: np.ndarray, palette: np.ndarray) -> None:
    """Write (H, W) uint8 class indices as a palette PNG (VOC style) with ``palette`` (256, 3), whole."""
    image = Image.fromarray(mask.astype(np.uint8))  # mode "L"; putpalette turns it into "P"
    image.putpalette(palette.astype(np.uint8).flatten().tolist())
    save_image(path, image)


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
