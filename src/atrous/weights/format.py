"""What a checkpoint format is. Each publisher's (``atrous.publishers.<name>.format``) is three small functions:

- ``recognise(state, source) -> bool``: whether a state dict is in this layout (it may raise ``WeightsError`` for a
  layout of this publisher that atrous does not read yet, naming it);
- ``describe(state, contents, source) -> (ModelSpec, assumed)``: the model its keys, shapes and embedded description
  imply, and the fields it had to assume ([(field, why)]); None for files that hold a backbone only;
- ``translate(state, model) -> (state, scope)``: its keys renamed to atrous's, and the key prefix the file must fill.

``describe`` raises ``Undescribed`` for a file of its layout that does not say which model it holds.

A publisher lists its formats in its ``PUBLISHER``; ``atrous.registry.FORMATS`` holds them all in detection order.
The model code never sees these names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import WeightsError
from ..models.normalization import InputNormalization


@dataclass(frozen=True)
class Format:
    name: str
    recognise: Callable[..., bool]
    translate: Callable[..., tuple[dict[str, torch.Tensor], str]]
    describe: Callable[..., tuple] | None = None
    normalization: InputNormalization | None = None  # the input its weights expect (checked against the model's)
    hints: Callable[..., list[str]] | None = None  # (model) -> notes for the loading report
    labels: Callable[..., tuple] | None = None  # (contents) -> (class names, palette) the file carries
    # Spec fields a user may set otherwise than the file says without changing what its weights mean; any other field
    # asked otherwise than the file implies builds a model that computes something else (``from_pretrained`` says so).
    free_fields: tuple[str, ...] = ()
    # (state) -> (the network's tensors, lines for the report): what a file holds besides the network (a training
    # run's optimizer slots and step counter), set aside before translation and named.
    aside: Callable[..., tuple[dict[str, torch.Tensor], list[str]]] | None = None


class Undescribed(WeightsError):
    """A file that does not say which model its weights are for (a bare state dict): the caller has to."""

