"""Label conventions shared by every dataset: the ignore label, lookup tables, palettes."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..errors import ConfigError

# The one ignore label of atrous: void pixels in the data, padding in augmentation, ignored by losses/metrics.
IGNORE_INDEX = 255


def lookup_table(mapping: Mapping[int, int], *, default: int = IGNORE_INDEX) -> np.ndarray:
    """A 256-entry uint8 table: ``table[raw] = mapping.get(raw, default)``; 255 always maps to 255."""
    table = np.full(256, default, dtype=np.uint8)
    for raw, mapped in mapping.items():
        if not (0 <= raw <= 255 and (0 <= mapped < IGNORE_INDEX or mapped == IGNORE_INDEX)):
            raise ConfigError(f"label mapping {raw} -> {mapped} is outside 0..255")
        table[raw] = mapped
    table[IGNORE_INDEX] = mapping.get(IGNORE_INDEX, IGNORE_INDEX)
    return table


def identity_table(num_classes: int) -> np.ndarray:
    """Values 0..num_classes-1 and 255 are kept; every other raw value is invalid (see ``valid_raw_values``)."""
    return lookup_table({value: value for value in range(num_classes)})


def voc_palette(size: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map: class i's colour from the bits of i, interleaved over R, G, B. (size, 3) uint8."""
    palette = np.zeros((size, 3), dtype=np.uint8)
    for index in range(size):
        value, r, g, b = index, 0, 0, 0
        for bit in range(8):
            r |= ((value >> 0) & 1) << (7 - bit)
            g |= ((value >> 1) & 1) << (7 - bit)
            b |= ((value >> 2) & 1) << (7 - bit)
            value >>= 3
        palette[index] = (r, g, b)
    return palette


def palette_from_colors(colors: list[tuple[int, int, int]], *, void=(224, 224, 192)) -> np.ndarray:
    """A 256x3 palette whose first entries are ``colors`` and whose entry 255 is the void colour."""
    palette = voc_palette()
    palette[: len(colors)] = np.asarray(colors, dtype=np.uint8)
    palette[IGNORE_INDEX] = void
    return palette
