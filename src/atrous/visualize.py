"""Colour masks, overlays and legends for predictions."""

from __future__ import annotations

import numpy as np


def colorize(labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """(H, W) class indices (255 = ignore) -> (H, W, 3) uint8 colours from a (256, 3) palette."""
    return palette[np.asarray(labels, dtype=np.int64).clip(0, 255)]


def overlay(image: np.ndarray, labels: np.ndarray, palette: np.ndarray, *, alpha: float = 0.5) -> np.ndarray:
    """Blend the label colours over an (H, W, 3) uint8 image; ignored pixels (255) keep the image."""
    colours = colorize(labels, palette).astype(np.float32)
    blended = image.astype(np.float32) * (1 - alpha) + colours * alpha
    keep = np.asarray(labels) == 255
    blended[keep] = image[keep]
    return blended.round().astype(np.uint8)
