"""``atrous predict``: label PNGs and overlays for image files, folders and globs, and the legend of their colours.

Safe by construction: every output path is known, distinct from every other and checked against the inputs (and
any protected file, such as the weights) before the first image is read; images are decoded one batch at a time;
images above ``WHOLE_IMAGE_MAX_PIXELS`` are predicted in sliding windows, so memory stays bounded by the image
rather than by the network's activations on it.
"""

from __future__ import annotations

import dataclasses
import glob
import logging
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .data.folder import IMAGE_EXTENSIONS
from .data.io import read_image, save_image, save_mask
from .data.labels import full_palette
from .errors import ConfigError, DataError, MissingFileError
from .folder_lock import output_folder
from .inference import InferenceOptions, model_input, predict, slide_labels
from .paths import refuse_overwrite
from .progress import progress_bar
from .visualize import edge_width, legend, overlay

log = logging.getLogger(__name__)

# Above this many pixels an image is predicted in sliding windows (when the options ask for no windows of their own).
# A whole-image forward pass holds the network's activations at the image's full size — hundreds of bytes a pixel
# (a 6000 x 4000 photo: 7.6 GB with a ResNet-18 DeepLabV3) — and windows hold them for one window batch only.
# 2048 x 2048 keeps whole-image inference, and its exact results, for Cityscapes frames (2048 x 1024) and
# photos up to 4 megapixels. Batches of smaller images are capped at this many pixels too.
WHOLE_IMAGE_MAX_PIXELS = 2048 * 2048
# The windows then used: the CLI's --crop / --stride defaults (DeepLab's 513 training crop, 2/3 of it as stride).
AUTO_CROP, AUTO_STRIDE = 513, 341
# The overlay is blended this many pixels at a time: ``overlay`` makes float copies of what it blends.
OVERLAY_PIXELS_PER_STRIP = 1 << 20
LEGEND_NAME = "legend"  # legend.png beside the outputs (legend_1.png, ... when an input's outputs take the name)


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files, folders (searched recursively for images) and glob patterns -> sorted unique image paths.
    ``MissingFileError`` names an input that matches nothing, and a folder that holds no image."""
    found: set[Path] = set()
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            images = [p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS]
            if not images:
                raise MissingFileError(f"no images in the folder {item} (searched recursively for "
                                       f"{', '.join(sorted(IMAGE_EXTENSIONS))})")  # fmt: skip
            found.update(images)
        elif path.is_file():
            found.add(path)
        else:
            matches = [Path(m) for m in glob.glob(item, recursive=True)]
            if not matches:
                raise MissingFileError(f"no such file, folder or matching glob: {item}")
            found.update(m for m in matches if m.is_file())
    return sorted(found)


def refuse_output_among_inputs(inputs: Sequence[str | Path], out_dir: str | Path) -> None:
    """``ConfigError``, before any work, when ``out_dir`` is an input folder, lies inside one or holds one: a folder
    input is searched recursively, so outputs written there would mix with the inputs and be read as inputs by the
    next run (whose outputs would then clash with its own legend.png)."""
    out = Path(out_dir).resolve()
    for item in inputs:
        if not Path(item).is_dir():
            continue
        folder = Path(item).resolve()
        if out == folder:
            relation = "is"
        elif folder in out.parents:
            relation = "lies inside"
        elif out in folder.parents:
            relation = "holds"
        else:
            continue
        raise ConfigError(f"--out {out_dir} {relation} the input folder {item}: predictions never go among the inputs "
                          "(a folder is searched for images recursively); choose an --out folder outside it")  # fmt: skip


def output_names(paths: Sequence[Path]) -> dict[Path, str]:
    """The name each input's outputs get under the output folder (``<name>.png``, ``<name>_overlay.png``).

    The name is the file's stem (``photos/cat.jpg`` -> ``cat``), with two exceptions, so that no two inputs share
    outputs (names compared ignoring case, as macOS and Windows disks do):

    - files of one folder whose stems clash keep their extension: ``x.jpg``, ``x.png`` -> ``x.jpg``, ``x.png``
      (written ``x.jpg.png``, ``x.jpg_overlay.png``, ...);
    - files of different folders whose names clash get as many of their parent folders (below the inputs' common
      folder) as tell them apart, as subfolders: ``a/b/x.png``, ``c/b/x.png`` -> ``a/b/x``, ``c/b/x``.

    Unique by construction: within a folder file names are unique, and at the most a name is the input's whole path
    below the common folder.
    """
    paths = list(paths)
    root = Path(os.path.commonpath([path.absolute().parent for path in paths])) if paths else Path()
    folders = {path: path.absolute().parent.relative_to(root).parts for path in paths}
    base = {path: path.stem for path in paths}
    while True:  # a stem may clash with a stem, or with a file name ("x.jpg" and the stem of "x.jpg.png")
        clashing = [path for path in _clashing({p: (folders[p], base[p]) for p in paths}) if base[path] != path.name]
        if not clashing:
            break
        for path in clashing:
            base[path] = path.name
    depth = dict.fromkeys(paths, 0)  # how many parent folders a name carries
    while True:
        names = {path: "/".join([*folders[path][len(folders[path]) - depth[path] :], base[path]]) for path in paths}
        clashing = [path for path in _clashing(names) if depth[path] < len(folders[path])]
        if not clashing:
            break
        for path in clashing:
            depth[path] += 1
    # Still equal only if identical, or differing in letter case alone: then only a case-sensitive disk holds both.
    assert len(set(names.values())) == len(names), f"output names clash: {sorted(names.values())}"
    return names


def _clashing(keys: Mapping[Path, object]) -> list[Path]:
    """The paths whose key another path shares, letter case ignored."""
    holders = defaultdict(list)
    for path, key in keys.items():
        holders[str(key).casefold()].append(path)
    return [path for group in holders.values() if len(group) > 1 for path in group]


def output_paths(names: Mapping[Path, str], out_dir: Path) -> dict[Path, tuple[Path, Path]]:
    """Input -> (label PNG, overlay JPEG) under ``out_dir``."""
    return {path: (out_dir / f"{name}.png", out_dir / f"{name}_overlay.png") for path, name in names.items()}


def legend_path(outputs: Mapping[Path, tuple[Path, ...]], out_dir: Path) -> Path:
    """``out_dir/legend.png``, or the first of ``legend_1.png``, ``legend_2.png``, ... that no input's output takes
    (an input named ``legend.jpg`` writes ``legend.png``), letter case ignored."""
    taken = {str(file).casefold() for files in outputs.values() for file in files}
    candidates = (out_dir / f"{LEGEND_NAME}{f'_{number}' if number else ''}.png" for number in range(len(taken) + 1))
    return next(path for path in candidates if str(path).casefold() not in taken)


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) of the image ``read_image`` will return (EXIF rotation applied), from its header alone."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = image.getexif().get(0x0112, 1)  # the tag ImageOps.exif_transpose reads
    except Image.DecompressionBombError as error:
        raise DataError(f"{path}: refused: {error}") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise DataError(f"{path}: cannot read image header: {error}") from error
    return (width, height) if orientation in (5, 6, 7, 8) else (height, width)  # the transposing orientations


def predict_files(
    model,
    paths: list[Path],
    out_dir: str | Path,
    *,
    palette: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    options: InferenceOptions | None = None,
    batch_size: int = 4,
    device: torch.device | None = None,
    progress: bool = True,
    protected: Mapping[str | Path, str] | None = None,
    whole_image_max_pixels: int = WHOLE_IMAGE_MAX_PIXELS,
) -> list[Path]:
    """Write ``<name>.png`` (palette label image) and ``<name>_overlay.png`` per input, at the image's own size
    (EXIF orientation applied), ``<name>`` as ``output_names`` says, and ``legend.png`` (``legend_path``): a swatch of
    each class's colour with its index and name. Returns the label PNGs' paths.

    palette: (K, 3) uint8 RGB, the colours of the classes; the model's own (``model.palette``, the colours of the
    data it was trained on) when None, VOC's when the model has none. class_names: the legend's names; the model's
    when None, ``class_<i>`` when it has none.

    Before any image is decoded: ``ConfigError`` if an output would replace an input or a ``protected`` file (path
    -> what it is, e.g. ``{"model.pt": "the weights file"}``), if ``out_dir`` cannot be written, or if another
    process is writing its outputs there (``folder_lock.output_folder``: two predictions never mix in one folder).
    Every file is written whole (``save_image``): an interrupted prediction leaves whole files only, and the next
    one into the folder deletes the temporaries of a killed one.
    An input that cannot be read is named (a warning) and skipped; every other one is predicted; then
    ``UnreadableImagesError`` (a ``DataError``) says how many were written and names each unread one.

    Memory: images are grouped by size from their headers and decoded ``batch_size`` at a time (and at most
    ``whole_image_max_pixels`` pixels a batch). An image above ``whole_image_max_pixels`` goes alone, in sliding
    windows (``AUTO_CROP`` / ``AUTO_STRIDE``, logged at INFO) unless ``options`` set windows or max fusion. Plain
    sliding-window inference (no scales, flip or CRF) normalises window by window, so one image costs about 7
    bytes a pixel (the decoded image, its copy as a tensor, the uint8 labels; decoding briefly adds 7 more) plus
    two bands of ``crop`` rows of float32 logits (``slide_labels``) plus the network on one window batch.
    Multi-scale, flip and CRF hold the (N, 3, H, W) float32 input and (N, C, H, W) float32 probabilities on top.
    """
    paths = list(dict.fromkeys(Path(path) for path in paths))  # a file named twice is predicted once
    out_dir = Path(out_dir)
    outputs = output_paths(output_names(paths), out_dir)
    legend_file = legend_path(outputs, out_dir)
    never_write = {path: "the input image" for path in paths} | dict(protected or {})
    refuse_overwrite([*(file for pair in outputs.values() for file in pair), legend_file], never_write,
                     hint="choose another --out folder")  # fmt: skip
    palette, class_names = _labels_of(model, palette, class_names)
    options = options or InferenceOptions()
    device = device or torch.device("cpu")
    written: list[Path] = []
    unreadable: dict[Path, str] = {}  # input -> why it was not predicted
    with output_folder(out_dir, "prediction"), progress_bar(total=len(paths), desc="predict", unit="img",
                                                             disable=not progress) as bar:  # fmt: skip
        save_image(legend_file, legend(class_names, palette))
        batches, unreadable = _batches(paths, batch_size, whole_image_max_pixels)
        bar.update(len(unreadable))
        for batch in batches:
            done, failed = _predict_batch(model, batch, outputs, palette, options, device, whole_image_max_pixels)
            written += done
            unreadable |= failed
            bar.update(len(batch))
    if unreadable:
        raise UnreadableImagesError(written, unreadable, total=len(paths), out_dir=out_dir)
    return written


class UnreadableImagesError(DataError):
    """Some inputs could not be read; every other one was predicted and written. ``written``: the label PNGs
    written; ``unreadable``: input -> why."""

    def __init__(self, written: list[Path], unreadable: Mapping[Path, str], *, total: int, out_dir: Path) -> None:
        self.written, self.unreadable = written, dict(unreadable)
        reasons = "; ".join(unreadable.values())
        super().__init__(f"{len(written)} of {total} images predicted and written to {out_dir}; {len(unreadable)} "
                         f"could not be read: {reasons}")  # fmt: skip


def _predict_batch(model, batch, outputs, palette, options, device, max_pixels) -> tuple[list[Path], dict[Path, str]]:
    """Decode, predict and write one batch; its images and labels are freed on return, before the next is decoded.
    Returns (the label PNGs written, the inputs that could not be decoded -> why)."""
    decoded, unreadable = {}, {}
    for path in batch:
        try:
            decoded[path] = read_image(path)
        except DataError as error:
            log.warning("%s", error)  # named as it happens; the whole list comes at the end
            unreadable[path] = str(error)
    batch, images = list(decoded), list(decoded.values())
    written = []
    for shape in dict.fromkeys(image.shape for image in images):  # one shape unless a header misled us
        group = [(path, image) for path, image in zip(batch, images) if image.shape == shape]
        raw = [image for _, image in group]
        labels = _labels(model, raw, _options_for_size(options, shape[:2], max_pixels, group[0][0]), device)
        for (path, image), label in zip(group, labels.numpy()):
            mask_path, overlay_path = outputs[path]
            save_mask(mask_path, label, palette)
            _save_overlay(overlay_path, image, label, palette)
            written.append(mask_path)
    return written, unreadable


def _labels_of(model, palette, class_names) -> tuple[np.ndarray, list[str]]:
    """The (256, 3) palette and the class names to write with: those given, else the model's, else VOC's colours
    and ``class_<i>``."""
    palette = full_palette(palette if palette is not None else getattr(model, "palette", None))
    names = class_names if class_names is not None else getattr(model, "class_names", None)
    return palette, list(names) if names is not None else [f"class_{i}" for i in range(model.num_classes)]


def _batches(paths: list[Path], batch_size: int, max_pixels: int) -> tuple[list[list[Path]], dict[Path, str]]:
    """(inputs of one size, read from the headers, in batches of at most ``batch_size`` images and ``max_pixels``
    pixels (at least one image); the inputs whose header cannot be read -> why)."""
    by_size: dict[tuple[int, int], list[Path]] = defaultdict(list)
    unreadable = {}
    for path in paths:
        try:
            by_size[image_size(path)].append(path)
        except DataError as error:
            log.warning("%s", error)
            unreadable[path] = str(error)
    batches = []
    for (height, width), group in by_size.items():
        size = max(1, min(batch_size, max_pixels // (height * width)))
        batches += [group[start : start + size] for start in range(0, len(group), size)]
    return batches, unreadable


def _options_for_size(
    options: InferenceOptions, size: tuple[int, int], max_pixels: int, path: Path
) -> InferenceOptions:
    """``options``, with sliding windows for an image above ``max_pixels`` when they have none of their own."""
    height, width = size
    if height * width <= max_pixels or options.crop is not None:
        return options
    if options.fusion == "max":  # MSC runs whole images only
        log.warning("%s: %dx%d pixels with max fusion (MSC) runs on the whole image: memory grows with its size",
                    path, width, height)  # fmt: skip
        return options
    log.info("%s: %dx%d is over %d pixels: sliding-window inference (%dx%d windows every %d px) to bound memory",
             path, width, height, max_pixels, AUTO_CROP, AUTO_CROP, AUTO_STRIDE)  # fmt: skip
    return dataclasses.replace(options, crop=AUTO_CROP, stride=AUTO_STRIDE)


def _labels(model, images: list[np.ndarray], options: InferenceOptions, device: torch.device) -> torch.Tensor:
    """(N, H, W) uint8 labels on the CPU (``save_mask`` writes 8-bit PNGs) of equal-sized (H, W, 3) uint8 images."""
    if options.plain and not options.crf and options.crop is not None:
        # predict's sliding-window path, fed uint8: each window is normalised as it is cut, never the whole image.
        pixels = torch.from_numpy(np.stack(images)).to(device).permute(0, 3, 1, 2)
        return slide_labels(model, pixels, crop=options.crop, stride=options.window_stride,
                            window_batch=options.window_batch, normalization=model.normalization,
                            dtype=torch.uint8).cpu()  # fmt: skip
    return predict(model, model_input(images, model, device), options, raw_images=images).to("cpu", torch.uint8)


def _save_overlay(path: Path, image: np.ndarray, labels: np.ndarray, palette: np.ndarray) -> None:
    """``overlay`` strip by strip into one uint8 image: its float copies never hold more than a strip. Each strip
    is blended with ``edge`` rows of its neighbours, so region edges run through the strip boundaries unbroken."""
    height, width = image.shape[:2]
    edge = edge_width(height, width)
    blended = np.empty_like(image)
    rows = max(1, OVERLAY_PIXELS_PER_STRIP // width)
    for top in range(0, height, rows):
        start, stop = max(0, top - edge), min(height, top + rows + edge)
        strip = overlay(image[start:stop], labels[start:stop], palette, edge=edge)
        blended[top : top + rows] = strip[top - start : top - start + rows]
    # PNG, not JPEG: lossless, so an edge pixel is exactly its class's legend colour (a JPEG's blocks blur 1-pixel
    # edges into their neighbours).
    save_image(path, blended)
