"""Reading what holds weights, once: a torch file (``atrous.weights.torch_file``: no code from it runs), a
``.safetensors`` file, a Keras ``.weights.h5`` file (``atrous.weights.keras_h5``), a TensorFlow checkpoint
(``atrous.weights.tf_bundle``: its prefix, ``.index`` or data file, or the tarball holding it), a ``save_pretrained``
folder (weights beside ``config.json``; a KerasHub preset) or a mapping already in memory; then the tensors unwrapped
from whatever container a training run kept them in (``unwrap_state_dict``)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..errors import WeightsError
from .keras_h5 import is_keras_weights, read_keras_weights
from .tf_bundle import is_tf_checkpoint, is_tf_tarball, read_tf_checkpoint
from .torch_file import module_state_dict, placeholders_in, read_torch_file, refusal, refuse_what_is_not_a_file

_FIRST_KEYS_SHOWN = 5


def first(items: list[str]) -> str:
    """The first few of ``items``, and how many more, for a message."""
    more = f" ... and {len(items) - _FIRST_KEYS_SHOWN} more" if len(items) > _FIRST_KEYS_SHOWN else ""
    return ", ".join(items[:_FIRST_KEYS_SHOWN]) + more


@dataclass
class Source:
    """What one weights file, folder or mapping holds: ``contents`` as read, ``inert`` the names of the objects in it
    read as placeholders, ``name`` for messages."""

    name: str
    contents: object
    inert: list[str] = field(default_factory=list)


def read_source(source: str | Path | Mapping) -> Source:
    """Read ``source`` once: a weights file (``read_weights_file``), a ``save_pretrained`` folder (``read_folder``) or
    what a file holds, already in memory."""
    if not isinstance(source, (str, Path)):
        return Source("<state dict>", source)
    if Path(source).is_dir():
        contents, inert = read_folder(Path(source))
    else:
        contents, inert = read_weights_file(source)
    return Source(str(source), contents, inert)


def read_weights_file(path: str | Path) -> tuple[object, list[str]]:
    """(what a ``.pt``/``.pth``/``.pth.tar``/``.bin``, ``.safetensors`` file or TensorFlow checkpoint holds, the names in
    it that were read as inert placeholders). Never runs code from the file (see ``atrous.weights.torch_file``)."""
    path = Path(path)
    if is_tf_checkpoint(path) or is_tf_tarball(path):
        return read_tf_checkpoint(path), []
    if path.suffix == ".h5" and path.is_file() and is_keras_weights(path):
        return read_keras_weights(path), []
    if path.suffix != ".safetensors":
        return read_torch_file(path)
    refuse_what_is_not_a_file(path, "weights file")
    try:
        return load_file(str(path)), []
    except Exception as error:  # safetensors raises its own types for damaged files
        raise WeightsError(f"{path}: cannot read weights (truncated or damaged file?): {error}") from error


# A folder's weights file, most wanted first: save_pretrained's (atrous, smp, transformers) and KerasHub's task preset.
FOLDER_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "task.weights.h5")
# The JSON files beside them that describe the model, read when present (KerasHub's task.json, transformers' image
# processor): each under its name in the contents.
FOLDER_DESCRIPTIONS = ("task.json", "preprocessor.json", "preprocessor_config.json", "metadata.json")
_MAX_JSON_BYTES = 1 << 24  # a config of 16 MiB is no config: refused before it is parsed


def read_folder(folder: Path) -> tuple[dict, list[str]]:
    """A ``save_pretrained`` folder (atrous's, smp's, transformers'; a Hub snapshot) or a KerasHub preset: the weights
    file (``FOLDER_WEIGHTS``) beside ``config.json``. atrous's own comes back as its checkpoints are (``model``,
    ``spec``, labels, ``checksum``); any other as ``state_dict`` and its ``config`` (and ``FOLDER_DESCRIPTIONS``)."""
    weights = next((folder / name for name in FOLDER_WEIGHTS if (folder / name).is_file()), None)
    if weights is None:
        raise WeightsError(f"{folder}: a folder needs {' or '.join(FOLDER_WEIGHTS)}, as save_pretrained (or KerasHub's "
                           "save_to_preset) writes it")  # fmt: skip
    tensors, inert = read_weights_file(weights)
    if weights.name == "task.weights.h5" and (folder / "model.weights.h5").is_file():
        # KerasHub's preset: the task's own layers (the classifier) here, the backbone's in model.weights.h5.
        # Groups without a name attribute keep their paths, which both files start at layers/: the task's kept apart.
        backbone, _ = read_weights_file(folder / "model.weights.h5")
        tensors = {**backbone, **{(f"task/{key}" if "/vars/" in key else key): value for key, value in tensors.items()}}
    config = _json(folder / "config.json") or {}
    state = unwrap_state_dict(tensors, source=str(weights))
    if isinstance(config, Mapping) and config.get("library") == "atrous":
        labels = {key: config.get(key) for key in ("spec", "class_names", "palette", "checksum")}
        return {"model": state, **labels}, inert
    described = {name: _json(folder / name) for name in FOLDER_DESCRIPTIONS if (folder / name).is_file()}
    return {"state_dict": state, "config": config, **described}, inert


def _json(path: Path) -> object:
    """The JSON ``path`` holds (None when there is no such file), refused in one line naming it when damaged."""
    if not path.is_file():
        return None
    if path.stat().st_size > _MAX_JSON_BYTES:
        raise WeightsError(f"{path}: {path.stat().st_size} bytes is no model description (at most {_MAX_JSON_BYTES})")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise WeightsError(f"{path}: not valid JSON ({error}): the file is damaged or not a model description") \
            from None  # fmt: skip


# The keys training runs keep the model under: atrous/detectron2 ("model"), mmseg/jfzhang95/Lightning
# ("state_dict"), VainF ("model_state").
CONTAINERS = ("model", "state_dict", "model_state")


def _count_tensors(value: object) -> int:
    return sum(isinstance(item, torch.Tensor) for item in value.values()) if isinstance(value, Mapping) else 0


def _refused(contents: object) -> str:
    """Why a file without weights holds objects instead, when it does: what its pickle asked to call."""
    names = placeholders_in(contents)
    return f"; {refusal(names)}" if names else ""


def unwrap_state_dict(state: object, *, source: str = "<state dict>") -> dict[str, torch.Tensor]:
    """The tensor mapping inside a checkpoint: ``state[c]`` for the first container key ``c`` of ``CONTAINERS`` that
    holds one, the state dict of a whole pickled model, or ``state`` itself; without DDP's ``module.`` prefix."""
    if isinstance(state, Mapping):
        for container in CONTAINERS:
            if isinstance(state.get(container), Mapping) or module_state_dict(state.get(container)):
                state = state[container]
                break
    whole_model = module_state_dict(state)
    if whole_model:
        state = whole_model
    if not isinstance(state, Mapping) or not state:
        raise WeightsError(f"{source}: expected a non-empty mapping of parameter names to tensors{_refused(state)}")
    tensors = {key: value for key, value in state.items() if isinstance(value, torch.Tensor)}
    if not tensors:
        nested = {key: _count_tensors(value) for key, value in state.items() if _count_tensors(value)}
        hint = _refused(state)
        if nested:
            key = max(nested, key=nested.get)
            hint = f"; its tensors are under [{key!r}] ({nested[key]} of them): pass ckpt[{key!r}]"
        raise WeightsError(f"{source}: holds no tensors at the top level; first keys: {first([str(k) for k in state])}"
                           f"{hint}")  # fmt: skip
    if all(key.startswith("module.") for key in tensors):
        tensors = {key[len("module.") :]: value for key, value in tensors.items()}
    return tensors


