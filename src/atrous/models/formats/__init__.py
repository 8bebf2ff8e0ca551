"""Foreign checkpoint formats, one module per publisher. Each ``Format`` is three small functions:

- ``recognise(state, source) -> bool``: whether a state dict is in this layout (it may raise ``WeightsError`` for a
  layout of this publisher that atrous does not read yet, naming it);
- ``describe(state, contents, source) -> (ModelSpec, assumed)``: the model its keys, shapes and embedded description
  imply, and the fields it had to assume ([(field, why)]); None for files that hold a backbone only;
- ``translate(state, model) -> (state, scope)``: its keys renamed to atrous's, and the key prefix the file must fill.

``describe`` raises ``Undescribed`` for a file of its layout that does not say which model it holds.

A new format is one module here plus one line in ``FORMATS``. The model code never sees these names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from ...errors import WeightsError
from ..normalization import InputNormalization


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


class Undescribed(WeightsError):
    """A file that does not say which model its weights are for (a bare state dict): the caller has to."""


def registry() -> list[Format]:
    """Every format in detection order: the most specific layouts first, atrous's own and bare ImageNet backbones
    last."""
    from . import atrous, deeplabv2, imagenet, jfzhang95, kazuto, mmseg, smp, torchvision, vainf

    return [
        *deeplabv2.CAFFE, *mmseg.FORMATS, *jfzhang95.FORMATS, *smp.FORMATS, *kazuto.FORMATS, *deeplabv2.PORT,
        *vainf.FORMATS, *torchvision.FORMATS, *atrous.FORMATS, *imagenet.formats(),
    ]  # fmt: skip


def find(name: str) -> Format:
    for fmt in registry():
        if fmt.name == name:
            return fmt
    raise WeightsError(f"unknown format {name!r}; choose from {[f.name for f in registry()]}")


def detect(state: Mapping[str, torch.Tensor], *, source: str = "<state dict>") -> Format | None:
    """The first format that recognises ``state``, or None."""
    for fmt in registry():
        if fmt.recognise(state, source):
            return fmt
    return None
