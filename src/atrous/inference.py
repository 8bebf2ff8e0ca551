"""Inference modes: whole image, sliding window, multi-scale + flip, and DenseCRF post-processing.

All functions take normalised images (N, 3, H, W) float32 and return results at the input's resolution.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .errors import ConfigError, MissingDependencyError
from .install import extra_command


def model_input(images: Sequence[np.ndarray], model: torch.nn.Module, device: torch.device) -> torch.Tensor:
    """Equal-sized (H, W, 3) uint8 RGB arrays -> the model's normalised (N, 3, H, W) float32 batch on ``device``."""
    batch = torch.stack([torch.from_numpy(np.array(image)).permute(2, 0, 1) for image in images])  # copies: arrays may be read-only
    return model.normalization(batch.to(device))


@torch.no_grad()
def whole_logits(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) logits of one forward pass."""
    return model(images).logits


def slide_windows(height: int, width: int, *, crop: int, stride: int) -> list[tuple[int, int, int, int]]:
    """(top, left, bottom, right) of the ``crop`` x ``crop`` windows every ``stride`` pixels, row by row (the last
    of a row or column flush with the border); one window of the image's size along a side shorter than ``crop``."""
    if stride < 1 or crop < 1:
        raise ConfigError(f"crop and stride must be >= 1, got crop={crop}, stride={stride}")
    if stride > crop:
        raise ConfigError(f"stride {stride} is larger than crop {crop}: the pixels between windows get no prediction")
    rows = max(height - crop + stride - 1, 0) // stride + 1
    cols = max(width - crop + stride - 1, 0) // stride + 1
    boxes = []
    for row in range(rows):
        for col in range(cols):
            bottom, right = min(row * stride + crop, height), min(col * stride + crop, width)
            boxes.append((max(bottom - crop, 0), max(right - crop, 0), bottom, right))
    return boxes


# Windows per model call when none is asked for. On the CPU batching gains no time and costs memory (measured with
# ``atrous bench --only slide``, 769 windows of DeepLabV3+-R18 through ONNX Runtime on a 2048x4096 image: 0.62 s a
# window one at a time, 0.65 four at a time, 1.3 GiB more peak memory); a GPU needs the batch to be busy.
WINDOW_BATCH = {"cpu": 1, "cuda": 4}


def default_window_batch(device: torch.device) -> int:
    return WINDOW_BATCH.get(device.type, WINDOW_BATCH["cuda"])


def _window_logits(model, images: torch.Tensor, boxes, window_batch: int | None, normalization=None):
    """Each box with its (N, C, h, w) logits, in ``boxes``' order, the model run on ``window_batch`` boxes at a
    time (the windows of all N images of a box in one call), each window normalised first if ``normalization``."""
    batch = images.shape[0]
    window_batch = default_window_batch(images.device) if window_batch is None else window_batch
    if window_batch < 1:
        raise ConfigError(f"window_batch must be >= 1 (windows per model call), got {window_batch}")
    for start in range(0, len(boxes), window_batch):
        chunk = boxes[start : start + window_batch]
        windows = torch.cat([images[:, :, t:b, l:r] for t, l, b, r in chunk])
        if normalization is not None:
            windows = normalization(windows)
        yield from zip(chunk, model(windows).logits.split(batch))


@torch.no_grad()
def slide_logits(
    model: torch.nn.Module, images: torch.Tensor, *, crop: int, stride: int, window_batch: int | None = None
) -> torch.Tensor:
    """Sliding-window logits: ``crop`` x ``crop`` windows every ``stride`` pixels (the last flush with the border),
    evaluated ``window_batch`` at a time (default: ``default_window_batch``); overlapping logits are averaged.
    Images smaller than ``crop`` along a side use one window of the image's size there. Holds (N, C, H, W) float32
    logits: for labels alone, ``slide_labels`` gives the same result in a fraction of the memory."""
    batch, _, height, width = images.shape
    summed = counts = None
    boxes = slide_windows(height, width, crop=crop, stride=stride)
    for (t, l, b, r), window_logits in _window_logits(model, images, boxes, window_batch):
        if summed is None:
            summed = images.new_zeros((batch, window_logits.shape[1], height, width))
            counts = images.new_zeros((1, 1, height, width))
        summed[:, :, t:b, l:r] += window_logits
        counts[:, :, t:b, l:r] += 1
    return summed.div_(counts)  # in place: a second (N, C, H, W) copy is what large images cannot afford


@torch.no_grad()
def slide_labels(
    model: torch.nn.Module,
    images: torch.Tensor,
    *,
    crop: int,
    stride: int,
    window_batch: int | None = None,
    normalization: Callable[[torch.Tensor], torch.Tensor] | None = None,
    dtype: torch.dtype = torch.int64,
) -> torch.Tensor:
    """(N, H, W) labels: exactly ``slide_logits(...).argmax(1)`` (same windows, same sums in the same order),
    without ever holding the image's logits.

    images: (N, 3, H, W) float32, normalised; or, given the model's ``normalization``, uint8 RGB 0..255, each window
    normalised as it is cut, so the image is never held as float32 (12 bytes a pixel). dtype: the labels' (uint8
    saves 7 bytes a pixel where the classes fit).

    Windows come row by row, and a row of windows never reaches above the row before it, so once a window starting
    at row ``t`` arrives every pixel row above ``t`` has all its windows: those rows are averaged, argmax-ed and
    dropped, and the rows still open move to the top of the band. Memory: one band of ``crop`` rows of logits,
    N x C x crop x W x 4 bytes, whatever the image's height, plus the labels -- for 19 classes on a 2048 x 4096
    image 240 MB, where ``slide_logits`` holds 640 MB.
    """
    batch, _, height, width = images.shape
    labels = torch.empty((batch, height, width), dtype=dtype, device=images.device)
    band_top = 0  # the image row of the band's first row
    summed = counts = None
    boxes = slide_windows(height, width, crop=crop, stride=stride)
    for (t, l, b, r), window_logits in _window_logits(model, images, boxes, window_batch, normalization):
        if summed is None:  # the band: every window spans at most min(crop, height) rows
            summed = window_logits.new_zeros((batch, window_logits.shape[1], min(crop, height), width))
            counts = window_logits.new_zeros((1, 1, summed.shape[2], width))
        if t > band_top:  # no later window reaches above t (stride <= crop: the band holds every row up to t)
            _finish_rows(summed, counts, t - band_top, labels[:, band_top:t])
            band_top = t
        summed[:, :, t - band_top : b - band_top, l:r] += window_logits
        counts[:, :, t - band_top : b - band_top, l:r] += 1
    _finish_rows(summed, counts, height - band_top, labels[:, band_top:])
    return labels


_ROWS_AT_ONCE = 32  # rows averaged and argmax-ed together: their quotient is the only temporary the size of a row


def _finish_rows(summed: torch.Tensor, counts: torch.Tensor, rows: int, labels: torch.Tensor) -> None:
    """Labels of the band's first ``rows`` rows, then the rows still open moved to the band's top and the rest
    zeroed. Moved ``rows`` at a time: the source and target of each copy never overlap, so nothing is cloned."""
    for start in range(0, rows, _ROWS_AT_ONCE):
        end = min(start + _ROWS_AT_ONCE, rows)
        labels[:, start:end] = (summed[:, :, start:end] / counts[:, :, start:end]).argmax(1)
    height = summed.shape[2]
    for band in (summed, counts):
        for start in range(0, height - rows, rows):
            end = min(start + rows, height - rows)
            band[:, :, start:end] = band[:, :, start + rows : end + rows]
        band[:, :, max(height - rows, 0) :] = 0


@dataclass
class InferenceOptions:
    """How to predict. ``scales=(1.0,)`` and ``flip=False`` is plain inference; ``crop`` enables sliding window.

    fusion: how scales combine: "mean" of the probabilities at full resolution, or "max" of the logits at the head's
    resolution before one upsampling (the MSC of DeepLab-v2 and kazuto1011/deeplab-pytorch: scales (1, 0.75, 0.5),
    images resized by scale factor; eager models only, no flip, no sliding window).
    """

    scales: Sequence[float] = (1.0,)
    flip: bool = False
    fusion: str = "mean"
    crop: int | None = None
    stride: int | None = None
    window_batch: int | None = None  # windows per model call; None: default_window_batch of the images' device
    crf: bool = False
    crf_params: dict = field(default_factory=dict)

    @property
    def plain(self) -> bool:
        return tuple(self.scales) == (1.0,) and not self.flip

    @property
    def window_stride(self) -> int | None:
        """The sliding windows' step: ``stride``, or 2/3 of ``crop``; None without windows."""
        if self.crop is None:
            return None
        return self.stride or max(1, self.crop * 2 // 3)

    def __post_init__(self) -> None:
        if self.fusion not in ("mean", "max"):
            raise ConfigError(f"unknown fusion {self.fusion!r}; choose from ['mean', 'max']")
        if self.fusion == "max" and (self.flip or self.crop is not None):
            raise ConfigError("max fusion (MSC) combines scales only: no flip, no sliding window")


def _logits(model, images, options: InferenceOptions) -> torch.Tensor:
    if options.crop is None:
        return whole_logits(model, images)
    stride, window_batch = options.window_stride, options.window_batch
    return slide_logits(model, images, crop=options.crop, stride=stride, window_batch=window_batch)


@torch.no_grad()
def max_fused_logits(model: torch.nn.Module, images: torch.Tensor, scales: Sequence[float]) -> torch.Tensor:
    """MSC: the element-wise max of the head logits of every scale, each resized to the scale-1 head's resolution,
    then upsampled to the input (bilinear, ``align_corners=False``). (N, C, H, W)."""
    head_logits = getattr(model, "head_logits", None)
    if head_logits is None:
        raise ConfigError("max fusion needs the model's head logits: run it eagerly (--runtime eager)")
    base = head_logits(images)
    fused = base
    for scale in scales:
        if scale != 1.0:
            scaled = F.interpolate(images, scale_factor=scale, mode="bilinear", align_corners=False)
            logits = F.interpolate(head_logits(scaled), size=base.shape[-2:], mode="bilinear", align_corners=False)
            fused = torch.maximum(fused, logits)
    return F.interpolate(fused, size=images.shape[-2:], mode="bilinear", align_corners=False)


@torch.no_grad()
def predict_probabilities(model: torch.nn.Module, images: torch.Tensor, options: InferenceOptions) -> torch.Tensor:
    """(N, C, H, W) class probabilities, averaged over scales (and horizontal flips) at the input's resolution, or
    from the max-fused logits (``options.fusion == "max"``)."""
    if options.fusion == "max":
        return max_fused_logits(model, images, options.scales).float().softmax(dim=1)
    height, width = images.shape[-2:]
    total = None
    for scale in options.scales:
        scaled = images
        if scale != 1.0:
            size = (max(1, round(height * scale)), max(1, round(width * scale)))
            scaled = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        for flipped in (False, True) if options.flip else (False,):
            view = scaled.flip(-1) if flipped else scaled
            logits = _logits(model, view, options)
            if flipped:
                logits = logits.flip(-1)
            if logits.shape[-2:] != (height, width):
                logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
            probabilities = logits.float().softmax(dim=1)
            total = probabilities if total is None else total + probabilities
    return total / (len(options.scales) * (2 if options.flip else 1))


@torch.no_grad()
def predict(
    model: torch.nn.Module, images: torch.Tensor, options: InferenceOptions | None = None, *, raw_images=None
) -> torch.Tensor:
    """(N, H, W) int64 labels. ``raw_images`` ((N, H, W, 3) uint8 RGB) are needed for ``options.crf``."""
    options = options or InferenceOptions()
    if options.plain and not options.crf:
        if options.crop is None:
            return whole_logits(model, images).argmax(dim=1)
        stride, window_batch = options.window_stride, options.window_batch
        return slide_labels(model, images, crop=options.crop, stride=stride, window_batch=window_batch)
    probabilities = predict_probabilities(model, images, options)
    if options.crf:
        if raw_images is None:
            raise ValueError("CRF post-processing needs the original uint8 images (raw_images)")
        refined = dense_crf_batch(list(raw_images), list(probabilities.cpu().numpy()), **options.crf_params)
        return torch.from_numpy(np.stack(refined)).to(images.device)
    return probabilities.argmax(dim=1)


# ---------------------------------------------------------------------------------------------- DenseCRF

# DeepLab's defaults (as in its released scripts and the common PyTorch port).
CRF_DEFAULTS = {"iterations": 10, "pos_w": 3.0, "pos_xy_std": 1.0, "bi_w": 4.0, "bi_xy_std": 67.0, "bi_rgb_std": 3.0}


def _densecrf_module():
    try:
        from pydensecrf import densecrf
    except ImportError as error:
        raise MissingDependencyError(
            f"DenseCRF post-processing needs pydensecrf2: {extra_command('crf', 'pydensecrf2')}"
        ) from error
    return densecrf


def dense_crf(image: np.ndarray, probabilities: np.ndarray, **params) -> np.ndarray:
    """Fully connected CRF (Krähenbühl & Koltun) on one image.

    image: (H, W, 3) uint8 RGB; probabilities: (C, H, W) float, summing to 1 over C -> (H, W) int64 labels.
    """
    densecrf = _densecrf_module()
    unknown = set(params) - set(CRF_DEFAULTS)
    if unknown:
        raise ConfigError(f"unknown CRF parameters {sorted(unknown)}; choose from {sorted(CRF_DEFAULTS)}")
    p = {**CRF_DEFAULTS, **params}
    classes, height, width = probabilities.shape
    crf = densecrf.DenseCRF2D(width, height, classes)
    unary = -np.log(np.clip(probabilities, 1e-8, 1.0)).reshape(classes, -1).astype(np.float32)
    crf.setUnaryEnergy(np.ascontiguousarray(unary))
    crf.addPairwiseGaussian(sxy=p["pos_xy_std"], compat=p["pos_w"])
    rgb = np.require(image, dtype=np.uint8, requirements=["C", "W"])  # the extension wants a writable buffer
    crf.addPairwiseBilateral(sxy=p["bi_xy_std"], srgb=p["bi_rgb_std"], rgbim=rgb, compat=p["bi_w"])
    q = np.array(crf.inference(int(p["iterations"]))).reshape(classes, height, width)
    return q.argmax(axis=0).astype(np.int64)


def _dense_crf_star(arguments):
    image, probabilities, params = arguments
    return dense_crf(image, probabilities, **params)


def dense_crf_batch(images: list, probabilities: list, *, workers: int | None = None, **params) -> list[np.ndarray]:
    """``dense_crf`` over several images in parallel processes (all cores by default)."""
    _densecrf_module()  # fail early, in this process, with the install hint
    workers = workers or os.cpu_count() or 1
    jobs = [(np.asarray(i), np.asarray(p), params) for i, p in zip(images, probabilities)]
    if workers == 1 or len(jobs) == 1:
        return [_dense_crf_star(job) for job in jobs]
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
        return list(pool.map(_dense_crf_star, jobs, chunksize=max(1, math.ceil(len(jobs) / (4 * workers)))))
