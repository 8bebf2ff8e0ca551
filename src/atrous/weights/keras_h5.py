"""Keras 3 weights files (``*.weights.h5``, as ``model.save_weights`` and KerasHub's presets write them), read with
h5py: HDF5 holds arrays and names only, nothing in it runs. Each layer's variables sit in a ``.../vars`` group
(``0``, ``1``... in the layer's own order: a conv's kernel (HWIO) then bias, a BatchNorm's gamma, beta, moving mean,
moving variance); Keras 3 writes the layer's name as the group's ``name`` attribute.

Returned as ``{"<layer name>/<index>": tensor}``, or ``{"<group path>/<index>": tensor}`` for a group without the
attribute (the caller maps Keras's class-counter paths, ``layers/functional/layers/conv2d_3``, to layer names)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import WeightsError
from ..install import extra_command

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_MAX_VARIABLES = 100_000  # a weights file of more variables than any segmentation network has is refused


def is_keras_weights(path: Path) -> bool:
    """A file that starts as HDF5 does (Keras's ``.weights.h5`` and ``.h5`` files)."""
    try:
        with open(path, "rb") as handle:
            return handle.read(8) == HDF5_SIGNATURE
    except OSError:
        return False


def read_keras_weights(path: Path) -> dict[str, torch.Tensor]:
    """Every variable in ``path`` by its layer's name and index. Raises ``WeightsError`` naming the file when it is
    damaged, not a Keras weights file, or holds one name twice."""
    try:
        import h5py
    except ImportError:
        raise WeightsError(f"{path}: reading Keras weights files needs h5py: {extra_command('keras', 'h5py')}") from None
    tensors: dict[str, torch.Tensor] = {}
    try:
        with h5py.File(path, "r") as handle:
            groups: list[tuple[str, object]] = []
            handle.visititems(lambda name, item: groups.append((name, item)) if name.rsplit("/", 1)[-1] == "vars" else None)
            for name, group in groups:
                if not isinstance(group, h5py.Group):
                    continue
                layer = group.attrs.get("name", name)
                layer = layer.decode() if isinstance(layer, bytes) else str(layer)
                for index in sorted(group, key=lambda key: int(key) if key.isdigit() else -1):
                    dataset = group[index]
                    if not isinstance(dataset, h5py.Dataset) or not index.isdigit():
                        raise WeightsError(f"{path}: {name}/{index} is not a variable of a Keras weights file")
                    key = f"{layer}/{index}"
                    if key in tensors:
                        raise WeightsError(f"{path}: two layers are named {layer!r} (at {name}): cannot tell their "
                                           "variables apart")  # fmt: skip
                    tensors[key] = torch.from_numpy(np.array(dataset[()]))
                    if len(tensors) > _MAX_VARIABLES:
                        raise WeightsError(f"{path}: more than {_MAX_VARIABLES} variables: not a segmentation network")
    except WeightsError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as error:  # h5py's own errors for damaged files
        raise WeightsError(f"{path}: cannot read it as a Keras weights file (truncated or damaged?): {error}") from None
    if not tensors:
        raise WeightsError(f"{path}: an HDF5 file without Keras variables (no .../vars groups): not a Keras weights file")
    return tensors
