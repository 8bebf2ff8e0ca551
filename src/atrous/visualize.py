"""Colour masks, overlays and legends for predictions."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Overlays tint each region with its class colour at this opacity over the photo's brightness (its grey levels), so the
# photo stays readable and every tinted pixel has its class's hue whatever the object's own colour (a tint over the
# colour photo mixes the two: an orange object of a navy class reads purple); each region's edge is drawn in the class
# colour itself (``edge_width``), exactly the legend's swatch.
OVERLAY_ALPHA = 0.6
# ITU-R BT.601 luma weights, PIL's own for RGB -> L.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
# A legend lists this many classes a column (ADE20K's 150 classes: 5 columns).
LEGEND_ROWS = 32


def colorize(labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """(H, W) class indices (255 = ignore) -> (H, W, 3) uint8 colours from a (256, 3) palette."""
    return palette[np.asarray(labels, dtype=np.int64).clip(0, 255)]


def edge_width(height: int, width: int) -> int:
    """Pixels of solid class colour along each side of a region edge: 1 up to 400 px images, thicker above, so that
    the edge stays visible when a large image is shown small."""
    return max(1, min(height, width) // 400)


def region_edges(labels: np.ndarray, width: int = 1) -> np.ndarray:
    """(H, W) bool: the pixels within ``width`` pixels (up, down, left or right) of a pixel of another label."""
    labels = np.asarray(labels)
    edges = np.zeros(labels.shape, dtype=bool)
    for shift in range(1, width + 1):
        rows = labels[shift:] != labels[:-shift]
        edges[shift:] |= rows
        edges[:-shift] |= rows
        columns = labels[:, shift:] != labels[:, :-shift]
        edges[:, shift:] |= columns
        edges[:, :-shift] |= columns
    return edges


def overlay(
    image: np.ndarray, labels: np.ndarray, palette: np.ndarray, *, alpha: float = OVERLAY_ALPHA, edge: int = 1
) -> np.ndarray:
    """Class colours over an (H, W, 3) uint8 image: regions tinted at ``alpha`` over the image's grey levels (so a
    pixel's hue is its class's), their edges (``edge`` pixels each side, 0 for none) in the exact palette colour;
    ignored pixels (255) keep the image in colour. (H, W, 3) uint8."""
    labels = np.asarray(labels)
    colours = colorize(labels, palette)
    grey = (image.astype(np.float32) @ _LUMA)[..., None]
    blended = (grey * (1 - alpha) + colours.astype(np.float32) * alpha).round().clip(0, 255).astype(np.uint8)
    if edge > 0:
        solid = region_edges(labels, edge)
        blended[solid] = colours[solid]
    keep = labels == 255
    blended[keep] = image[keep]
    return blended


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """DejaVu Sans (matplotlib ships it, so every install has it); PIL's bitmap font if FreeType is missing."""
    from matplotlib import font_manager

    try:
        return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size)
    except (OSError, ImportError):
        return ImageFont.load_default()


def legend(class_names: Sequence[str], palette: np.ndarray, *, swatch: int = 18) -> np.ndarray:
    """A swatch per class, filled with exactly its palette colour (a grey frame around it), then ``index name``;
    ``LEGEND_ROWS`` classes a column. (H, W, 3) uint8 on white."""
    font = _font(round(swatch * 0.8))
    labels = [f"{index}  {name}" for index, name in enumerate(class_names)]
    columns = [labels[start : start + LEGEND_ROWS] for start in range(0, len(labels), LEGEND_ROWS)]
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    pad, row = swatch // 2, swatch + swatch // 3
    _, ink_top, _, ink_bottom = font.getbbox("Hg")
    text_offset = (swatch - ink_top - ink_bottom) / 2  # centres the text on the swatch, for any font
    widths = [swatch + pad + max(round(measure.textlength(text, font=font)) for text in column) for column in columns]
    size = (pad + sum(width + 2 * pad for width in widths), pad * 2 + row * min(len(labels), LEGEND_ROWS))
    canvas = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(canvas)
    left = pad
    for number, (column, width) in enumerate(zip(columns, widths)):
        for position, text in enumerate(column):
            index, top = number * LEGEND_ROWS + position, pad + position * row
            colour = tuple(int(value) for value in palette[index])
            draw.rectangle([left - 1, top - 1, left + swatch, top + swatch], outline=(110, 110, 110))  # the frame
            draw.rectangle([left, top, left + swatch - 1, top + swatch - 1], fill=colour)  # inside it, exact
            draw.text((left + swatch + pad, top + text_offset), text, fill="black", font=font)
        left += width + 2 * pad
    return np.asarray(canvas)
