"""Typed run configuration. YAML only serialises these dataclasses; unknown keys are errors.

Only the CLI and the training engine read a ``Config``; the library takes explicit keyword arguments.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


@dataclass
class ModelConfig:
    name: str = "deeplabv3"
    backbone: str | None = None
    num_classes: int = 21
    output_stride: int | None = None
    aux: bool = False
    atrous_rates: list[int] | None = None
    multi_grid: list[int] | None = None
    separable: bool = False
    frozen_bn: str | None = None
    head_lr_mult: float | None = None
    pretrained_backbone: str | None = None  # "imagenet" or a path
    weights: str | None = None  # any file load_weights reads (ImageNet, Caffe, torchvision, atrous)


@dataclass
class DataConfig:
    dataset: str = "voc"
    root: str = "data"
    train_split: str = "train"
    val_split: str = "val"
    crop_size: int | list[int] = 513  # square side, or [height, width]
    scale_range: list[float] = field(default_factory=lambda: [0.5, 2.0])
    flip: bool = True
    photometric: bool = False
    blur: bool = False
    batch_size: int = 8  # global: split over processes and accumulation steps
    val_batch_size: int = 1  # per process; >1 only when validation images share one size
    workers: int = 4
    on_error: str = "raise"
    label_mapping: dict[int, int] | None = None  # folder datasets, e.g. {0: 0, 255: 1}
    class_weights: str | None = None  # the JSON `atrous data stats` writes
    class_weights_kind: str = "median_frequency"


@dataclass
class OptimConfig:
    name: str = "sgd"  # "sgd" (DeepLab's) or "adamw" (converges faster from scratch)
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
    amp: str = "none"  # "none", "bf16" (CPU or CUDA), "fp16" (CUDA, with GradScaler)
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
    device: str = "auto"


@dataclass
class Config:
    name: str = "run"
    out_dir: str = "runs"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name


class ConfigError(ValueError):
    """An unknown key, a value of the wrong type, or an invalid combination of settings."""


def _type_hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check/convert a YAML or command-line value against a field's annotation."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
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
            return float(value)
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
    return cls(**kwargs)


def config_from_dict(values: dict) -> Config:
    return _from_dict(Config, values or {})


def config_to_dict(config: Config) -> dict:
    return dataclasses.asdict(config)


def load_config(path: str | Path) -> Config:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from error
    try:
        return config_from_dict(values)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from error


def save_config(config: Config, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))


def apply_overrides(config: Config, overrides: list[str]) -> Config:
    """``section.key=value`` overrides (value parsed as YAML: 8, 0.01, true, [1, 2, 4], null)."""
    values = config_to_dict(config)
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep:
            raise ConfigError(f"override {override!r} is not key=value (e.g. optim.lr=0.01)")
        parts = key.strip().split(".")
        target = values
        for depth, part in enumerate(parts[:-1]):
            if not isinstance(target.get(part), dict):
                section = ".".join(parts[: depth + 1])
                raise ConfigError(f"unknown config section {section!r}; valid sections: {sorted(k for k, v in values.items() if isinstance(v, dict))}")
            target = target[part]
        if parts[-1] not in target:
            raise ConfigError(f"unknown config key {key!r}; valid keys: {sorted(target)}")
        target[parts[-1]] = yaml.safe_load(raw)
    return config_from_dict(values)
