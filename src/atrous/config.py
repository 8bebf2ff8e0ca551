"""Typed run configuration. YAML only serialises these dataclasses; unknown keys are errors.

A config is checked whole when it is made (``config_from_dict``, ``load_config``, ``apply_overrides``): every choice,
every range, every combination that cannot run, before any model or dataset is built or anything downloaded.
Only the CLI and the training engine read a ``Config``; the library takes explicit keyword arguments.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .atomic import write_text_whole
from .data import DATASETS, datasets_taking, family_options
from .data.labels import checked_class_names, checked_palette
from .errors import ConfigError, MissingFileError
from .models.spec import ModelSpec
from .registry import check_spec


@dataclass
class DataConfig:
    dataset: str = "voc"
    root: str = "data"
    train_split: str = "train"
    val_split: str = "val"
    # Validation on another dataset (GTA5 -> Cityscapes): its name and root; the train set's when null.
    val_dataset: str | None = None
    val_root: str | None = None
    crop_size: int | list[int] = 513  # square side, or [height, width]
    scale_range: list[float] = field(default_factory=lambda: [0.5, 2.0])
    flip: bool = True
    photometric: bool = False
    blur: bool = False
    batch_size: int = 8  # global: split over processes and accumulation steps
    val_batch_size: int = 1  # per process; >1 only when validation images share one size
    workers: int = 4
    on_error: Literal["raise", "skip"] = "raise"
    label_mapping: dict[int, int] | None = None  # folder datasets, e.g. {0: 0, 255: 1}
    # Folder datasets: a name and an [r, g, b] colour per class, kept by the model, its checkpoints and predictions.
    class_names: list[str] | None = None
    palette: list[list[int]] | None = None
    class_weights: str | None = None  # the JSON `atrous data stats` writes
    class_weights_kind: Literal["median_frequency", "inverse"] = "median_frequency"


@dataclass
class OptimConfig:
    name: Literal["sgd", "adamw"] = "sgd"  # SGD is DeepLab's; AdamW converges faster from scratch
    lr: float = 0.007
    momentum: float = 0.9
    weight_decay: float = 1e-4
    decay_norm_and_bias: bool = False
    power: float = 0.9  # poly decay: lr * (1 - it / iterations) ** power
    warmup_iters: int = 0
    warmup_ratio: float = 0.1  # linear warm-up from lr * warmup_ratio


@dataclass
class TrainConfig:
    iterations: int = 30000
    epochs: int | None = None  # if set, converted to iterations
    aux_weight: float = 0.4
    ohem: bool = False
    ohem_thresh: float = 0.7
    ohem_min_kept: int = 100000
    amp: Literal["none", "bf16", "fp16"] = "none"  # bf16: CPU or CUDA; fp16: CUDA, with GradScaler
    channels_last: bool = False
    grad_accum: int = 1
    compile: bool = False
    activation_checkpointing: bool = False
    sync_bn: bool = True  # on CUDA with several processes
    val_every: int = 1000
    save_every: int = 1000
    keep_last: int = 3
    log_every: int = 20
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"


@dataclass
class Config:
    name: str = "run"
    out_dir: str = "runs"
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name


class _YamlLoader(yaml.SafeLoader):
    """PyYAML reads YAML 1.1, where ``5e-4`` (no dot) is a string; every recipe means a number (YAML 1.2 does too)."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)?(?:\.[0-9_]*)?[eE][-+]?[0-9]+$|^[-+]?[0-9][0-9_]*\.[0-9_]*$"
               r"|^[-+]?\.[0-9_]+$|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"),
    list("-+0123456789."),
)  # fmt: skip


def read_yaml(text: str) -> Any:
    """YAML as a recipe means it: ``5e-4`` and ``1e-3`` are numbers."""
    return yaml.load(text, Loader=_YamlLoader)


def _type_hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check/convert a YAML or command-line value against a field's annotation."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Literal:
        if value in args and type(value) is type(args[0]):
            return value
        raise ConfigError(f"{where}: unknown value {value!r}; choose from {list(args)}")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        candidates = [a for a in args if a is not type(None)]
        errors = []
        for candidate in candidates:
            try:
                return _coerce(value, candidate, where)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0])
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return _from_dict(annotation, value, where)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(item, args[0], f"{where}[{i}]") for i, item in enumerate(value)]
    if origin is tuple:  # tuple[int, ...]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(item, args[0], f"{where}[{i}]") for i, item in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {_coerce(k, args[0], where): _coerce(v, args[1], where) for k, v in value.items()}
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value) if abs(value) < 1e300 else math.inf  # float() overflows past ~1e308
            if not math.isfinite(number):
                raise ConfigError(f"{where}: expected a finite number, got {value!r}")
            return number
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    raise ConfigError(f"{where}: unsupported type {annotation}")


def _from_dict(cls, values: dict, where: str = ""):
    hints = _type_hints(cls)
    unknown = sorted(set(values) - set(hints))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown config key {prefix}{unknown[0]}; valid keys{' of ' + where if where else ''}: {sorted(hints)}"
        )
    kwargs = {key: _coerce(value, hints[key], f"{where}.{key}" if where else key) for key, value in values.items()}
    try:
        made = cls(**kwargs)
        return check_spec(made) if isinstance(made, ModelSpec) else made  # its names: the registry's to know
    except ConfigError as error:  # a dataclass that checks itself (ModelSpec): say where it sits
        raise ConfigError(f"{where}: {error}" if where else str(error)) from error


def config_from_dict(values: dict) -> Config:
    """A checked ``Config`` (see ``check_config``) from plain values, as YAML gives them."""
    config = _from_dict(Config, values or {})
    check_config(config)
    return config


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


def config_to_dict(config: Config) -> dict:
    """Plain values (lists, not tuples): what YAML and checkpoints hold."""
    return _plain(dataclasses.asdict(config))


MAX_SIDE = 16384  # pixels: a crop beyond this is a typo (a 16384^2 float32 image is 3 GiB before any feature map)


def _ranges(config: Config) -> list[tuple[str, Any, bool, str]]:
    """(key, value, holds, what it must be) for every numeric setting."""
    d, o, t = config.data, config.optim, config.train
    crop = [d.crop_size] if isinstance(d.crop_size, int) else d.crop_size
    return [
        ("data.crop_size", d.crop_size, len(crop) in (1, 2) and all(1 <= c <= MAX_SIDE for c in crop),
         f"a size in [1, {MAX_SIDE}] or [height, width]"),
        ("data.scale_range", d.scale_range, len(d.scale_range) == 2 and 0 < d.scale_range[0] <= d.scale_range[1] <= 16,
         "[low, high] with 0 < low <= high <= 16"),
        ("data.batch_size", d.batch_size, d.batch_size >= 1, ">= 1"),
        ("data.val_batch_size", d.val_batch_size, d.val_batch_size >= 1, ">= 1"),
        ("data.workers", d.workers, 0 <= d.workers <= 256, "in [0, 256] (processes; about the CPU count is best)"),
        ("optim.lr", o.lr, o.lr > 0, "> 0 (to train nothing, freeze the model instead)"),
        ("optim.momentum", o.momentum, 0 <= o.momentum < 1, "in [0, 1)"),
        ("optim.weight_decay", o.weight_decay, o.weight_decay >= 0, ">= 0"),
        ("optim.power", o.power, o.power >= 0, ">= 0"),
        ("optim.warmup_iters", o.warmup_iters, o.warmup_iters >= 0, ">= 0"),
        ("optim.warmup_ratio", o.warmup_ratio, 0 <= o.warmup_ratio <= 1, "in [0, 1]"),
        ("train.iterations", t.iterations, t.iterations >= 1 or t.epochs is not None, ">= 1 (or set train.epochs)"),
        ("train.epochs", t.epochs, t.epochs is None or t.epochs >= 1, ">= 1 or null"),
        ("train.aux_weight", t.aux_weight, t.aux_weight >= 0, ">= 0"),
        ("train.ohem_thresh", t.ohem_thresh, 0 < t.ohem_thresh <= 1, "in (0, 1]"),
        ("train.ohem_min_kept", t.ohem_min_kept, t.ohem_min_kept >= 1, ">= 1"),
        ("train.grad_accum", t.grad_accum, t.grad_accum >= 1, ">= 1"),
        ("train.val_every", t.val_every, t.val_every >= 1, ">= 1"),
        ("train.save_every", t.save_every, t.save_every >= 1, ">= 1"),
        ("train.keep_last", t.keep_last, t.keep_last >= 1, ">= 1"),
        ("train.log_every", t.log_every, t.log_every >= 1, ">= 1"),
        ("train.seed", t.seed, 0 <= t.seed < 2**32, "in [0, 2**32) (NumPy's seed range)"),
    ]  # fmt: skip


def check_config(config: Config) -> None:
    """Raise ``ConfigError`` naming the key, the value and what it must be, for the first setting that cannot run.

    Choices were checked by type (``Literal``) when the values were read, the model by ``ModelSpec`` and the
    registry (``check_spec``); this checks
    ranges and combinations. Whether the batch splits over the processes is known only at launch (``prepare``).
    """
    for key, value, holds, wanted in _ranges(config):
        if not holds:
            raise ConfigError(f"{key}={value!r}: must be {wanted}")
    for key in ("dataset", "val_dataset"):
        name = getattr(config.data, key)
        if name is not None and name not in DATASETS:
            raise ConfigError(f"data.{key}: unknown value {name!r}; choose from {sorted(DATASETS)}")
    if config.data.label_mapping and "label_mapping" not in family_options(config.data.dataset):
        raise ConfigError(f"data.label_mapping is for {_families_taking('label_mapping')} datasets (raw mask value -> "
                          f"class); dataset {config.data.dataset!r} maps its own labels: remove data.label_mapping")  # fmt: skip
    _check_class_labels(config)
    if config.data.batch_size % config.train.grad_accum:
        raise ConfigError(
            f"data.batch_size={config.data.batch_size} (global) must be divisible by train.grad_accum="
            f"{config.train.grad_accum}"
        )
    if config.train.amp == "fp16" and not _cuda_selected(config.train.device):
        raise ConfigError("train.amp=fp16 needs CUDA (GradScaler); use train.amp=bf16 on the CPU")


def _families_taking(option: str) -> str:
    """"folder" for label_mapping: the dataset families a message says an option is for."""
    return " and ".join(datasets_taking(option))


def _check_class_labels(config: Config) -> None:
    """data.class_names and data.palette: only for the dataset families that take them (folder datasets), one
    distinct entry per class of the model."""
    d, num_classes = config.data, config.model.num_classes
    for key in ("class_names", "palette"):
        if getattr(d, key) is not None and key not in family_options(d.dataset):
            raise ConfigError(f"data.{key} is for {_families_taking(key)} datasets; dataset {d.dataset!r} names and "
                              f"colours its own classes: remove data.{key}")  # fmt: skip
    if d.class_names is not None:
        checked_class_names(d.class_names, num_classes, key="data.class_names", count_from="model.num_classes")
    if d.palette is not None:
        checked_palette(d.palette, num_classes, key="data.palette", count_from="model.num_classes")


def with_model_labels(config: Config, *, class_names: Sequence[str] | None, palette) -> Config:
    """``config`` with the class names and colours of a model (``class_names``, and ``palette``: [r, g, b] rows,
    0..255, at least one per class; those of the data it was trained on) where its dataset family takes them from
    the config (a folder dataset) and the config gives none: reports then say "crack", not "class_1". Colours the
    config gives stay; so does a config whose dataset names its own classes."""
    d = config.data
    if d.class_names or class_names is None or "class_names" not in family_options(d.dataset):
        return config
    if d.palette is None and palette is not None and "palette" in family_options(d.dataset):
        palette = [[int(value) for value in colour] for colour in palette[: len(class_names)]]
    else:
        palette = d.palette
    return dataclasses.replace(config, data=dataclasses.replace(d, class_names=list(class_names), palette=palette))


def _cuda_selected(device: str) -> bool:
    import torch

    return device == "cuda" or (device == "auto" and torch.cuda.is_available())


def load_config(path: str | Path) -> Config:
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"config file not found: {path}")
    try:
        values = read_yaml(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from error
    try:
        return config_from_dict(values)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from error


def save_config(config: Config, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_text_whole(path, yaml.safe_dump(config_to_dict(config), sort_keys=False))


def apply_overrides(config: Config, overrides: list[str]) -> Config:
    """``section.key=value`` overrides (value parsed as YAML: 8, 0.01, 5e-4, true, [1, 2, 4], null); the result is
    checked. One key set twice is an error: the user meant one of the two values, and we cannot tell which."""
    values = config_to_dict(config)
    seen: dict[str, str] = {}
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep:
            raise ConfigError(f"override {override!r} is not key=value (e.g. optim.lr=0.01)")
        key = key.strip()
        if key in seen:
            raise ConfigError(f"{key} is set twice ({seen[key]!r} and {override!r}): give it once")
        seen[key] = override
        parts = key.split(".")
        target = values
        for depth, part in enumerate(parts[:-1]):
            if not isinstance(target.get(part), dict):
                section = ".".join(parts[: depth + 1])
                raise ConfigError(f"unknown config section {section!r}; valid sections: {sorted(k for k, v in values.items() if isinstance(v, dict))}")
            target = target[part]
        if parts[-1] not in target:
            raise ConfigError(f"unknown config key {key!r}; valid keys: {sorted(target)}")
        try:
            target[parts[-1]] = read_yaml(raw)
        except yaml.YAMLError as error:
            raise ConfigError(f"override {override!r}: the value is not valid YAML: {error}") from error
    return config_from_dict(values)
