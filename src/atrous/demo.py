"""``atrous demo``: synthetic data -> training from scratch on the CPU -> evaluation -> predictions -> report.

The demo runs the recipe ``configs/deeplabv3plus_r18-os16_synthetic_64x64_700.yaml`` (shipped inside the package);
``fast`` shortens its schedule to a one-minute smoke test.
"""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path

import torch

from .config import Config, apply_overrides, config_to_dict, load_config
from .data import SynthSpec, build_dataset, write_synthetic
from .engine import train
from .errors import AtrousError, ConfigError
from .evaluation import run_evaluation, write_run_report
from .predict import predict_files
from .weights.pretrained import load_trained_model

DEMO_RECIPE = "deeplabv3plus_r18-os16_synthetic_64x64_700.yaml"
# The smoke test's schedule and dataset size; everything else is the recipe's.
FAST_ITERATIONS = 60
FAST_OVERRIDES = [f"train.iterations={FAST_ITERATIONS}", "train.val_every=30", "train.save_every=30", "optim.warmup_iters=5"]


def demo_config(*, data_root: Path, out_dir: Path, fast: bool) -> Config:
    """The demo recipe with the demo's name, data folder and output folder (and the short schedule when ``fast``)."""
    with resources.as_file(resources.files("atrous") / "configs" / DEMO_RECIPE) as recipe:
        config = load_config(recipe)
    placement = [f"name={'demo-fast' if fast else 'demo'}", f"out_dir={out_dir}", f"data.root={data_root}"]
    return apply_overrides(config, placement + (FAST_OVERRIDES if fast else []))


def demo_spec(*, fast: bool):
    """The synthetic dataset the demo writes (and reuses when it is already there), at the recipe's crop size."""
    size = demo_config(data_root=Path("."), out_dir=Path("."), fast=fast).data.crop_size
    return SynthSpec(train=120, val=24, size=size) if fast else SynthSpec(size=size)


def _recipe(config: Config) -> dict:
    """What makes two demo runs the same training: model, data (wherever it lies), optimizer and schedule."""
    values = config_to_dict(config)
    recipe = {section: dict(values[section]) for section in ("model", "data", "optim", "train")}
    recipe["data"].pop("root")
    return recipe


def _refuse_another_recipes_run(config: Config) -> None:
    """The demo continues its own run; a run of another recipe there (an earlier atrous's demo, or one edited by hand)
    is neither continued under this recipe nor replaced: the user is told, and it stays as it is."""
    saved = config.run_dir / "config.yaml"
    try:
        theirs = _recipe(load_config(saved))
    except AtrousError as error:
        differences = [f"its {saved.name} does not read as this version's config ({error})"]
    else:
        ours = _recipe(config)
        differences = [f"{section}.{key}: {theirs[section].get(key)!r} there, {value!r} in this recipe"
                       for section in ours for key, value in ours[section].items()
                       if theirs[section].get(key) != value]  # fmt: skip
    if differences:
        raise ConfigError(
            f"{config.run_dir} holds a demo run of another recipe ({'; '.join(differences[:4])}); the demo continues "
            f"only its own run and never replaces one. Move or delete {config.run_dir} to train the current recipe, "
            "or give the demo another folder (--out)"
        )


def run_demo(*, out_dir: str | Path = "runs", data_root: str | Path = "data/synthetic", fast: bool = False) -> dict:
    """Run the whole pipeline on the embedded synthetic dataset and return a summary (scores, seconds, paths)."""
    started = time.perf_counter()
    # The full demo's data is where its recipe says (so `atrous eval --config <recipe>` finds it); the smoke test's
    # smaller set goes beside it, not over it.
    data_root = Path(data_root) / "fast" if fast else Path(data_root)
    voc_root = write_synthetic(data_root, demo_spec(fast=fast))
    config = demo_config(data_root=data_root, out_dir=Path(out_dir), fast=fast)
    # The demo continues its own run: an interrupted one from its last checkpoint, a finished one is evaluated again.
    # A run that never reached a checkpoint has nothing to keep and starts over.
    resumable = (config.run_dir / "checkpoints" / "last.pt").is_file()
    if resumable:
        _refuse_another_recipes_run(config)
    summary = train(config, resume=True if resumable else None, overwrite=not resumable)

    best = config.run_dir / "checkpoints" / "best.pt"
    model = load_trained_model(best)
    val = build_dataset(config.data.dataset, data_root, config.data.val_split)
    details = {"weights": str(best), "config": config_to_dict(config)}
    result = run_evaluation(model, val, out_dir=config.run_dir / "eval", device=torch.device("cpu"), report=details,
                            training_log=config.run_dir / "metrics.jsonl")  # fmt: skip
    predict_files(model, [image for image, _ in val.samples], config.run_dir / "predictions", palette=model.palette,
                  progress=False)  # fmt: skip
    report = write_run_report(
        config.run_dir, title="atrous demo: DeepLabV3+ (ResNet-18) trained from scratch on synthetic shapes",
        class_names=val.class_names, palette=val.palette, evaluation=result,
        training_log=config.run_dir / "metrics.jsonl", details=details,
    )  # fmt: skip
    return {
        "mIoU": result.scores["mIoU"],
        "scores": result.scores,
        "class_names": val.class_names,
        "seconds": time.perf_counter() - started,
        "report": str(report),
        "run_dir": str(config.run_dir),
        "data": str(voc_root),
        "best_val_mIoU": summary["best_mIoU"],
    }
