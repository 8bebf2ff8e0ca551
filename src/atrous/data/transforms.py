"""Joint image + mask transforms. Every transform is ``(image, mask) -> (image, mask)``.

``ToTensor`` comes first; the rest work on (3, H, W) uint8 image and (H, W) uint8 mask tensors.

The mask is resized only with nearest neighbour and padded only with the ignore label, so its values stay
within the input's values plus 255. Training: random scale -> random crop -> flip -> (photometric, blur)
-> normalise -> pad to the crop size. Evaluation: full resolution, normalise only.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from ..models.normalization import InputNormalization
from .labels import IGNORE_INDEX


class Compose:
    def __init__(self, transforms: Sequence[Callable]):
        self.transforms = list(transforms)

    def __call__(self, image, mask):
        for transform in self.transforms:
            image, mask = transform(image, mask)
        return image, mask

    def __repr__(self) -> str:
        return "Compose(" + ", ".join(type(t).__name__ for t in self.transforms) + ")"


class ToTensor:
    """(H, W, 3) uint8 array + (H, W) uint8 array -> (3, H, W) uint8 tensor + (H, W) uint8 tensor (no copy).

    ``read_image`` gives read-only arrays; every later step writes to new tensors, never into these.
    """

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            return torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(mask)


class RandomScaleCrop:
    """Scale by s ~ U(scale_range), then take a random crop of at most ``crop_size``; smaller results stay
    smaller (``PadTo`` pads them).

    Done in one step for speed: a random source window of about crop/s pixels, with integer bounds, is resized
    by s, so the cost does not grow with s^2 and image and mask share the exact same geometry (bilinear with
    antialiasing for the image, nearest for the mask). in/out: (3, H, W) uint8, (H, W) uint8 tensors.
    """

    def __init__(self, crop_size: int | tuple[int, int] = 513, scale_range: tuple[float, float] = (0.5, 2.0)):
        self.crop_h, self.crop_w = (crop_size, crop_size) if isinstance(crop_size, int) else crop_size
        self.scale_range = scale_range

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        height, width = mask.shape
        scale = random.uniform(*self.scale_range)
        window_h = min(height, max(1, round(self.crop_h / scale)))
        window_w = min(width, max(1, round(self.crop_w / scale)))
        top, left = random.randint(0, height - window_h), random.randint(0, width - window_w)
        size = (min(self.crop_h, max(1, round(window_h * scale))), min(self.crop_w, max(1, round(window_w * scale))))
        image = image[None, :, top : top + window_h, left : left + window_w]
        image = F.interpolate(image, size=size, mode="bilinear", antialias=True, align_corners=False)[0]
        # Nearest neighbour as two numpy gathers: the same pixels as mode="nearest-exact", at half the cost.
        rows = _nearest_indices(window_h, size[0]) + top
        cols = _nearest_indices(window_w, size[1]) + left
        mask = torch.from_numpy(mask.numpy().take(rows, axis=0).take(cols, axis=1))
        return image, mask


def _nearest_indices(source: int, target: int) -> np.ndarray:
    """Source index of each target pixel centre: floor((i + 0.5) * source / target), as "nearest-exact"."""
    return np.minimum(((np.arange(target) + 0.5) * (source / target)).astype(np.int64), source - 1)


class RandomHorizontalFlip:
    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, image: torch.Tensor, mask: torch.Tensor):
        if random.random() < self.p:
            return image.flip(-1), mask.flip(-1)
        return image, mask


class PhotometricDistortion:
    """Image only: random brightness, contrast, saturation and hue, each applied with probability 1/2
    (the usual DeepLab/mmseg ranges). Works on (3, H, W) uint8 tensors through torchvision."""

    def __init__(self, brightness: float = 32 / 255, contrast=(0.5, 1.5), saturation=(0.5, 1.5), hue: float = 18 / 360):
        self.brightness, self.contrast, self.saturation, self.hue = brightness, contrast, saturation, hue

    def __call__(self, image: torch.Tensor, mask):
        if random.random() < 0.5:
            image = TF.adjust_brightness(image, 1 + random.uniform(-self.brightness, self.brightness))
        if random.random() < 0.5:
            image = TF.adjust_contrast(image, random.uniform(*self.contrast))
        if random.random() < 0.5:
            image = TF.adjust_saturation(image, random.uniform(*self.saturation))
        if random.random() < 0.5:
            image = TF.adjust_hue(image, random.uniform(-self.hue, self.hue))
        return image, mask


class GaussianBlur:
    """Image only, with probability ``p``: Gaussian blur with sigma ~ U(sigma_range)."""

    def __init__(self, p: float = 0.5, sigma_range=(0.1, 2.0)):
        self.p, self.sigma_range = p, sigma_range

    def __call__(self, image: torch.Tensor, mask):
        if random.random() < self.p:
            sigma = random.uniform(*self.sigma_range)
            kernel = 2 * round(3 * sigma) + 1
            image = TF.gaussian_blur(image, [kernel, kernel], [sigma, sigma])
        return image, mask


class Normalize:
    """(3, H, W) uint8 RGB -> float32 normalised as the model's weights expect (``model.normalization``).

    With ``pad_to``, the image is written straight into a zero canvas of that size (0 = the mean after
    normalisation), saving the separate padding copy; ``PadTo`` then pads only the mask.
    """

    def __init__(self, normalization: InputNormalization, *, pad_to: int | tuple[int, int] | None = None):
        self.normalization = normalization
        self.pad_to = (pad_to, pad_to) if isinstance(pad_to, int) else pad_to

    def __call__(self, image: torch.Tensor, mask):
        if self.pad_to is None:
            return self.normalization(image), mask
        height, width = image.shape[-2:]
        canvas = image.new_empty((3, max(height, self.pad_to[0]), max(width, self.pad_to[1])), dtype=torch.float32)
        self.normalization(image, out=canvas[:, :height, :width])
        canvas[:, height:, :].zero_()
        canvas[:, :height, width:].zero_()
        return canvas, mask


class MaskToLong:
    """The mask as int64 class indices, the dtype losses and metrics index with."""

    def __call__(self, image, mask: torch.Tensor):
        return image, mask.long()


class PadTo:
    """Pad bottom/right to ``size``: the image with ``fill`` (0 = the mean after normalisation), the mask with 255.

    Image and mask are padded each as far as it falls short (``Normalize(pad_to=...)`` may have padded the image).
    """

    def __init__(self, size: int | tuple[int, int], fill: float = 0.0):
        self.height, self.width = (size, size) if isinstance(size, int) else size
        self.fill = fill

    def _pad(self, tensor: torch.Tensor, fill: float) -> torch.Tensor:
        height, width = tensor.shape[-2:]
        if height >= self.height and width >= self.width:
            return tensor
        padded = tensor.new_full((*tensor.shape[:-2], max(height, self.height), max(width, self.width)), fill)
        padded[..., :height, :width] = tensor
        return padded

    def __call__(self, image: torch.Tensor, mask: torch.Tensor):
        return self._pad(image, self.fill), self._pad(mask, IGNORE_INDEX)


def train_transforms(
    *,
    normalization: InputNormalization | None,
    crop_size: int | tuple[int, int] = 513,
    scale_range: tuple[float, float] = (0.5, 2.0),
    flip: bool = True,
    photometric: bool = False,
    blur: bool = False,
) -> Compose:
    """The DeepLab training pipeline -> (3, crop, crop) float32 normalised image, (crop, crop) int64 mask.

    ``normalization=None`` keeps uint8 images (to normalise later, on the device); padding is then black.
    """
    steps: list[Callable] = [ToTensor(), RandomScaleCrop(crop_size, scale_range)]
    if flip:
        steps.append(RandomHorizontalFlip())
    if photometric:
        steps.append(PhotometricDistortion())
    if blur:
        steps.append(GaussianBlur())
    if normalization is not None:
        steps.append(Normalize(normalization, pad_to=crop_size))
    steps += [PadTo(crop_size, fill=0.0), MaskToLong()]
    return Compose(steps)


def eval_transforms(*, normalization: InputNormalization | None) -> Compose:
    """Full resolution, no crop: tensors, normalised when ``normalization`` is given."""
    steps: list[Callable] = [ToTensor()]
    if normalization is not None:
        steps.append(Normalize(normalization))
    steps.append(MaskToLong())
    return Compose(steps)
