"""Label conventions shared by every dataset: the ignore label, lookup tables, palettes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..errors import ConfigError
from .classes import CITYSCAPES_COLORS

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


# Cityscapes' own colours for its 19 training classes (its labels.py), void black.
CITYSCAPES_PALETTE = palette_from_colors(CITYSCAPES_COLORS, void=(0, 0, 0))


def full_palette(palette: np.ndarray | Sequence[Sequence[int]] | None) -> np.ndarray:
    """The (256, 3) uint8 palette a label PNG is written with: ``palette``'s colours first (a model's may list only its
    classes), VOC's after them; VOC's whole when ``palette`` is None."""
    full = voc_palette()
    if palette is not None:
        colours = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)[:256]
        full[: len(colours)] = colours
    return full


def checked_class_names(names: Sequence[str], num_classes: int, *, key: str, count_from: str) -> list[str]:
    """``names`` as a list when there is one distinct, non-empty name per class, else ``ConfigError`` naming ``key``
    (``count_from`` says where the number of classes comes from, e.g. ``"model.num_classes"``)."""
    names = list(names)
    if len(names) != num_classes:
        raise ConfigError(f"{key} gives {len(names)} names for {num_classes} classes ({count_from}): "
                          "give one name per class, in class-index order")  # fmt: skip
    for index, name in enumerate(names):
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{key}[{index}]={name!r}: every class needs a name (a non-empty string)")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:  # reports and legends would show two classes under one name
        raise ConfigError(f"{key}: {repeated[0]!r} is given twice; each class needs its own name")
    return names


def checked_palette(colours: Sequence[Sequence[int]], num_classes: int, *, key: str, count_from: str) -> np.ndarray:
    """A (256, 3) uint8 palette (``full_palette``) from one [r, g, b] per class, integers 0..255, no colour given twice;
    else ``ConfigError`` naming ``key`` and the entry."""
    colours = list(colours)
    if len(colours) != num_classes:
        raise ConfigError(f"{key} gives {len(colours)} colours for {num_classes} classes ({count_from}): "
                          "give one [r, g, b] per class, in class-index order")  # fmt: skip
    for index, colour in enumerate(colours):
        channels = list(colour) if isinstance(colour, (list, tuple, np.ndarray)) else [colour]
        if len(channels) != 3 or not all(is_byte(value) for value in channels):
            raise ConfigError(f"{key}[{index}]={colour!r}: must be [r, g, b] with integers 0..255")
    seen: dict[tuple[int, ...], int] = {}
    for index, colour in enumerate(colours):
        first = seen.setdefault(tuple(int(value) for value in colour), index)
        if first != index:  # a colour that stands for two classes tells the reader neither
            raise ConfigError(f"{key}[{index}]: classes {first} and {index} have the same colour {list(colour)}; "
                              "give each class its own colour")  # fmt: skip
    return full_palette(colours)


def is_byte(value) -> bool:
    """An integer 0..255 (numpy's too; not a bool): one channel of a colour."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and 0 <= value <= 255
