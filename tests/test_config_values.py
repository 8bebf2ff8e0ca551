"""Every bad setting is named before work starts: a fuzz over every numeric config key, the values the issue found
accepted or crashing, YAML numbers as recipes write them, and the command line's own checks."""

from __future__ import annotations

import json
import math
import typing
from dataclasses import fields, is_dataclass

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atrous.cli import main
from atrous.config import Config, ConfigError, apply_overrides, load_config, read_yaml


def _numeric_keys(cls=Config, prefix="") -> list[str]:
    """Dotted keys of every setting holding numbers (int, float, or lists of them), nested sections included."""
    keys = []
    for field in fields(cls):
        annotation = typing.get_type_hints(cls)[field.name]
        if is_dataclass(annotation):
            keys += _numeric_keys(annotation, f"{prefix}{field.name}.")
        elif {int, float} & set(_leaf_types(annotation)):
            keys.append(f"{prefix}{field.name}")
    return keys


def _leaf_types(annotation) -> list:
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Literal:
        return [type(arg) for arg in args]
    return [leaf for arg in args for leaf in _leaf_types(arg)] if args else [annotation]


NUMERIC_KEYS = _numeric_keys()
BAD_VALUES = st.one_of(
    st.sampled_from(["0", "-1", "-64", ".nan", ".inf", "-.inf", "1e400", str(10**40), "1e-300", "0.5", "abc", "true",
                     "null", "[]", "[0, 0]", "[-1, 2]", "[1, 2, 3]", "{a: 1}", "'8'"]),
    st.integers(min_value=-(10**12), max_value=10**12).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(lambda x: json.dumps(x).replace("NaN", ".nan").replace("Infinity", ".inf")),
)  # fmt: skip


def test_the_fuzz_covers_every_numeric_section():
    assert {"data.crop_size", "data.scale_range", "optim.lr", "train.epochs", "model.num_classes",
            "model.atrous_rates", "model.output_stride", "model.head_lr_mult"} <= set(NUMERIC_KEYS)  # fmt: skip


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.sampled_from(NUMERIC_KEYS), value=BAD_VALUES)
def test_every_numeric_key_either_works_or_names_itself(key, value):
    """0, negative, NaN, huge and wrong-type values: a checked config, or a ConfigError naming the key."""
    try:
        config = apply_overrides(Config(), [f"{key}={value}"])
    except ConfigError as error:
        assert key.split(".")[-1] in str(error), (key, value, str(error))
        return
    # Accepted: then the value is usable as read (finite numbers, positive sizes), and it survives a save/load.
    section, _, name = key.rpartition(".")
    stored = getattr(getattr(config, section) if section else config, name)
    for number in stored if isinstance(stored, (list, tuple)) else [stored]:
        assert number is None or (isinstance(number, (int, float)) and math.isfinite(number)), (key, value, stored)


def _accepted_extremes() -> list[str]:
    """Every numeric key with 0, -1, NaN, a huge value and a word, as overrides; those the config check accepts."""
    accepted = []
    for key in NUMERIC_KEYS:
        for value in ["0", "-1", ".nan", "1000000000", "abc", "[1000000000]", "[0]"]:
            try:
                apply_overrides(Config(), [f"{key}={value}"])
            except ConfigError:
                continue
            accepted.append(f"{key}={value}")
    return accepted


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from atrous.data import SynthSpec, write_synthetic

    root = tmp_path_factory.mktemp("synthetic")
    write_synthetic(root, SynthSpec(seed=2, train=4, val=2, size=32), progress=False)
    return root


@pytest.mark.parametrize("override", _accepted_extremes())
def test_accepted_extreme_values_train_or_fail_with_a_message(override, tiny_data, tmp_path):
    """What the check lets through really runs: two iterations of a tiny model with it, or an AtrousError."""
    from atrous.engine import train
    from atrous.errors import AtrousError
    from atrous.run_dir import read_metrics

    base = [f"data.root={tiny_data}", f"out_dir={tmp_path}", "data.dataset=synthetic", "model.num_classes=7",
            "model.backbone=mobilenet_v3_large", "data.crop_size=32", "data.batch_size=2", "data.workers=0",
            "data.val_batch_size=2", "train.iterations=2", "train.val_every=2"]  # fmt: skip
    config = apply_overrides(Config(), [item for item in base if item.split("=")[0] != override.split("=")[0]] + [override])
    try:
        summary = train(config, stop_at=2)
    except AtrousError as error:
        key = override.split("=")[0]
        assert key.split(".")[-1] in str(error) or str(error).startswith("training diverged"), str(error)
        return
    assert summary["iteration"] == 2
    losses = [row["loss"] for row in read_metrics(config.run_dir / "metrics.jsonl") if "loss" in row]
    assert losses and all(math.isfinite(loss) for loss in losses), losses


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.output_stride=0", r"model.output_stride: unknown value 0; choose from \[4, 8, 16, 32\]"),
        ("data.scale_range=[-1, 0.5]", r"data.scale_range=\[-1.0, 0.5\]: must be \[low, high\] with 0 < low <= high"),
        ("data.scale_range=[0, 0]", r"data.scale_range=\[0.0, 0.0\]: must be"),
        ("train.epochs=-1", r"train.epochs=-1: must be >= 1 or null"),
        ("train.epochs=0", r"train.epochs=0: must be >= 1"),
        ("optim.lr=0", r"optim.lr=0.0: must be > 0"),
        ("optim.lr=.nan", r"optim.lr: expected a finite number, got nan"),
        ("optim.lr=1e400", r"optim.lr: expected a finite number, got inf"),
        ("optim.power=-1", r"optim.power=-1.0: must be >= 0"),
        ("data.batch_size=0", r"data.batch_size=0: must be >= 1"),
        ("train.val_every=0", r"train.val_every=0: must be >= 1"),
        ("train.save_every=0", r"train.save_every=0: must be >= 1"),
        ("train.log_every=0", r"train.log_every=0: must be >= 1"),
        ("train.seed=-1", r"train.seed=-1: must be in \[0, 2\*\*32\)"),
        ("data.crop_size=0", r"data.crop_size=0: must be a size in \[1, 16384\] or \[height, width\]"),
        ("data.crop_size=-64", r"data.crop_size=-64: must be a size in \[1, 16384\]"),
        ("data.crop_size=[64, 64, 64]", r"data.crop_size=\[64, 64, 64\]: must be a size in \[1, 16384\] or \[height, width\]"),
        ("model.atrous_rates=[0, -1, 2]", r"atrous_rates must be a list of integers >= 1 \(empty: no atrous branches\), got \[0, -1, 2\]"),
        ("model.num_classes=1000000", r"num_classes must be an integer in \[1, 65535\]"),
        ("model.head_lr_mult=.nan", r"model.head_lr_mult: expected a finite number"),
        ("data.label_mapping={0: 0, 255: 1}", r"data.label_mapping is for folder datasets"),
    ],
)
def test_values_the_issue_found_accepted_or_crashing_are_named(override, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(Config(), [override])


def test_label_mapping_is_accepted_for_folder_datasets():
    config = apply_overrides(Config(), ["data.dataset=folder", "data.label_mapping={0: 0, 255: 1}"])
    assert config.data.label_mapping == {0: 0, 255: 1}


@pytest.mark.parametrize("text, number", [("5e-4", 5e-4), ("1E-3", 1e-3), ("-2e+2", -200.0), ("1.5", 1.5), (".5", 0.5)])
def test_yaml_numbers_as_recipes_write_them(text, number):
    assert read_yaml(text) == number and isinstance(read_yaml(text), float)
    assert read_yaml("abc") == "abc" and read_yaml("8") == 8  # strings stay strings, integers integers


def test_a_recipe_with_exponent_numbers_loads(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("optim:\n  lr: 2.5e-4\n  weight_decay: 5e-4  # DeepLab-v2's, written as its paper does\n")
    assert load_config(recipe).optim.weight_decay == 5e-4
    assert apply_overrides(Config(), ["optim.lr=5e-4"]).optim.lr == 5e-4


def test_a_key_set_twice_is_an_error_not_last_one_wins():
    with pytest.raises(ConfigError, match=r"optim.lr is set twice \('optim.lr=0.1' and 'optim.lr=0.001'\)"):
        apply_overrides(Config(), ["optim.lr=0.1", "optim.lr=0.001"])


# ------------------------------------------------------------------------------------------------ command line


def _cli_error(argv, capsys) -> str:
    """The one-line error of a command that must refuse: its exit code is 2 whichever layer refused."""
    try:
        code = main(argv)
    except SystemExit as exit:  # argparse's own checks
        code = exit.code
    assert code == 2, argv
    return capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--lr", "0.1", "optim.lr=0.001"], "--lr 0.1 and optim.lr=0.001 both set optim.lr: give it once"),
        (["train", "--iterations", "3", "--total-itrs", "4"], "--iterations 3 and --total-itrs 4 both set train.iterations"),
        (["train", "--stop-at", "-1"], "argument --stop-at: expected a whole number > 0, got '-1'"),
        (["predict", "--weights", "w.pt", "--out", "o", "--batch-size", "0", "a.png"], "argument --batch-size: expected a whole number > 0, got '0'"),
        (["predict", "--weights", "w.pt", "--out", "o", "--scales", "-1", "0", "--", "a.png"], "argument --scales: expected a number > 0, got '-1'"),
        (["eval", "--config", "c.yaml", "--weights", "w.pt", "--slide", "--crop", "0"], "argument --crop: expected a whole number > 0, got '0'"),
        (["train", "optim.lr=0"], "optim.lr=0.0: must be > 0"),
        (["data", "synth", "--out", "d", "--train", "0"], "argument --train: expected a whole number > 0, got '0'"),
    ],
)  # fmt: skip
def test_the_command_line_names_bad_values_before_work(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert message in _cli_error(argv, capsys)
    assert list(tmp_path.iterdir()) == []  # refused before anything was written


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_a_gpu_is_a_message(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert "device 'cuda' requested but no CUDA device is available" in _cli_error(
        ["train", "train.device=cuda", "data.dataset=synthetic", "model.num_classes=7"], capsys
    )


def test_more_processes_than_gpus_is_a_message(monkeypatch):
    """torchrun --nproc_per_node=2 on a one-GPU machine: the second process is told why, instead of CUDA's
    "invalid device ordinal" (seen on an H100 machine)."""
    from atrous.distributed import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto", 0) == torch.device("cuda", 0)
    for preference in ("auto", "cuda"):
        with pytest.raises(ConfigError, match=r"LOCAL_RANK=1 needs GPU 1, but this machine has 1 CUDA device\(s\): "
                                              r"start at most 1 process\(es\) per machine \(torchrun "
                                              r"--nproc_per_node=1\), or train on the CPU with train.device=cpu"):
            resolve_device(preference, 1)
    assert resolve_device("cpu", 1) == torch.device("cpu")


@pytest.mark.parametrize(
    "preference, runtime, device",
    [("auto", "int8", "cpu"), ("auto", "onnxruntime", "cpu"), ("auto", "eager", "auto"), ("auto", "auto", "auto"),
     ("cuda", "int8", "cuda"), ("cpu", "fp16", "cpu")],
)  # fmt: skip
def test_the_onnx_runtime_runtimes_run_on_the_cpu_of_a_gpu_machine(preference, runtime, device):
    """eval/predict --runtime int8 (or onnxruntime) with the device left to auto: the CPU, where ONNX Runtime runs,
    not the GPU it would refuse (seen on an H100 machine: "the int8 runtime runs on the CPU; got device cuda:0").
    A GPU named outright stays asked for, and prepare_inference refuses it saying why."""
    import argparse

    from atrous.cli import _inference_device

    assert _inference_device(preference, argparse.Namespace(runtime=runtime)) == device


def test_overrides_go_anywhere_and_resume_does_not_swallow_one(monkeypatch):
    import atrous.engine

    seen = {}

    def fake_train(config, *, resume, stop_at, **options):  # the parsing is under test, not the training
        seen.update(config=config, resume=resume)
        return {"is_main": False, "best_mIoU": None}

    monkeypatch.setattr(atrous.engine, "train", fake_train)
    assert main(["train", "--name", "x", "optim.lr=0.01", "--amp", "none", "data.batch_size=4",
                 "--resume", "train.log_every=3"]) == 0  # fmt: skip
    config = seen["config"]
    assert (config.optim.lr, config.data.batch_size, config.train.log_every) == (0.01, 4, 3)
    assert seen["resume"] is True  # --resume took no path: the override after it stayed an override
