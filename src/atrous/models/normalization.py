"""The input normalisation a set of weights expects, carried by every model."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class InputNormalization:
    """How to turn an RGB image with values 0..255 into the model's input.

    ``mean`` and ``std`` are in 0..255 units and in the channel order the weights expect
    (``channel_order``), so both torchvision's and Caffe's conventions are one formula:
    ``(image[order] - mean) / std``.
    """

    name: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    channel_order: str  # "RGB" or "BGR"

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """images: (N, 3, H, W) or (3, H, W), RGB, uint8 or float in 0..255 -> float32 normalised, same shape."""
        if images.shape[-3] != 3:
            raise ValueError(f"expected 3 RGB channels in dimension -3, got shape {tuple(images.shape)}")
        if self.channel_order == "BGR":
            images = images.flip(-3)
        # (x - mean) / std as one multiply-add on a fresh float copy: this runs once per training sample.
        scale = torch.tensor([1.0 / s for s in self.std], device=images.device).view(3, 1, 1)
        shift = torch.tensor([-m / s for m, s in zip(self.mean, self.std)], device=images.device).view(3, 1, 1)
        return images.to(torch.float32, copy=True).mul_(scale).add_(shift)  # never alters the caller's tensor


# torchvision weights: RGB in [0, 1], ImageNet mean/std (here scaled to 0..255).
IMAGENET_RGB = InputNormalization(
    name="imagenet_rgb",
    mean=(0.485 * 255, 0.456 * 255, 0.406 * 255),
    std=(0.229 * 255, 0.224 * 255, 0.225 * 255),
    channel_order="RGB",
)
# DeepLab-v2 Caffe weights: BGR in 0..255, mean subtracted, no division.
CAFFE_BGR = InputNormalization(
    name="caffe_bgr",
    mean=(104.00698793, 116.66876762, 122.67891434),
    std=(1.0, 1.0, 1.0),
    channel_order="BGR",
)
