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

    @property
    def scale(self) -> tuple[float, ...]:
        """(x - mean) / std as x * scale + shift, per channel of the weights' order."""
        return tuple(1.0 / std for std in self.std)

    @property
    def shift(self) -> tuple[float, ...]:
        return tuple(-mean / std for mean, std in zip(self.mean, self.std))

    def __call__(self, images: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
        """images: (N, 3, H, W) or (3, H, W), RGB, uint8 or float in 0..255 -> float32 normalised, same shape.

        Never modifies ``images``; ``out`` (float32, same shape, may be a view) receives the result if given.
        """
        if images.shape[-3] != 3:
            raise ValueError(f"expected 3 RGB channels in dimension -3, got shape {tuple(images.shape)}")
        if out is None:
            out = torch.empty(images.shape, dtype=torch.float32, device=images.device)
        for channel in range(3):
            # The weights' channel c reads RGB channel c, or 2 - c for BGR weights (no flipped copy).
            source = 2 - channel if self.channel_order == "BGR" else channel
            # One fused op per channel, x * scale + shift: the fastest form on CPU, and this runs once per sample.
            shift = torch.tensor(self.shift[channel], dtype=torch.float32, device=images.device)
            torch.add(shift, images[..., source, :, :], alpha=self.scale[channel], out=out[..., channel, :, :])
        return out


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
