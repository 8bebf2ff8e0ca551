"""Training: overfitting, exact resume, crash-safe checkpoints, config errors, the CLI and its alias."""

import dataclasses
import json
import logging
import math
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import atrous
from atrous.checkpoint import load_checkpoint
from atrous.cli import main
from atrous.config import Config, ConfigError, apply_overrides, config_from_dict, load_config
from atrous.data import SynthSpec, write_synthetic
from atrous.engine import poly_with_warmup, prepare, train, train_step

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    write_synthetic(root, SynthSpec(seed=1, train=16, val=4, size=48), progress=False)
    return root


def small_config(root, out, **sections) -> Config:
    values = {
        "name": "run",
        "out_dir": str(out),
        "model": {"name": "deeplabv3plus", "backbone": "resnet18", "num_classes": 7, "aux": True},
        "data": {"dataset": "synthetic", "root": str(root), "crop_size": 40, "batch_size": 4, "val_batch_size": 4,
                 "workers": 0, "label_mapping": None},
        "optim": {"lr": 0.01},
        # On the CPU wherever the suite runs: these tests compare runs bitwise or to fp32's rounding, which a GPU's
        # TF32 convolutions and cuDNN's nondeterministic kernels do not keep (seen on an H100).
        "train": {"iterations": 8, "val_every": 100, "save_every": 100, "log_every": 1, "device": "cpu"},
    }  # fmt: skip
    for section, updates in sections.items():
        if isinstance(updates, dict):
            values[section].update(updates)
        else:
            values[section] = updates
    return config_from_dict(values)


def losses(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [row["loss"] for row in rows if "loss" in row]


def test_overfitting_one_synthetic_batch_reaches_99_percent_pixel_accuracy():
    from atrous.data.synthetic import render_sample
    from atrous.losses import SegmentationLoss

    spec = SynthSpec(seed=5, size=64)
    samples = [render_sample(spec, i) for i in range(4)]
    model = atrous.build_model("deeplabv3plus", backbone="resnet18", num_classes=7)
    images = torch.stack([model.normalization(torch.from_numpy(img).permute(2, 0, 1)) for img, _ in samples])
    masks = torch.stack([torch.from_numpy(mask).long() for _, mask in samples])
    loss_fn = SegmentationLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(150):
        loss, _ = loss_fn(model(images), masks)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        prediction = model(images).logits.argmax(1)
    valid = masks != 255
    accuracy = (prediction[valid] == masks[valid]).float().mean().item()
    assert accuracy >= 0.99, accuracy


def test_resume_is_bitwise_exact(synthetic, tmp_path):
    straight = small_config(synthetic, tmp_path / "a", data={"workers": 2})
    summary = train(straight)
    resumed = small_config(synthetic, tmp_path / "b", data={"workers": 2})
    first = train(resumed, stop_at=4)
    assert first["iteration"] == 4 and (resumed.run_dir / "checkpoints" / "last.pt").is_file()
    second = train(resumed, resume=True)
    assert second["iteration"] == 8 == summary["iteration"]
    assert losses(straight.run_dir) == losses(resumed.run_dir)  # bitwise: floats compared exactly
    a = load_checkpoint(straight.run_dir / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(resumed.run_dir / "checkpoints" / "last.pt")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert summary["last_val"]["mIoU"] == second["last_val"]["mIoU"]


def test_checkpoint_contents_and_keep_last(synthetic, tmp_path):
    config = small_config(synthetic, tmp_path, train={"iterations": 6, "save_every": 1, "keep_last": 2, "val_every": 3})
    train(config)
    directory = config.run_dir / "checkpoints"
    assert sorted(p.name for p in directory.glob("iter_*.pt")) == ["iter_0000005.pt", "iter_0000006.pt"]
    state = load_checkpoint(directory / "last.pt")
    assert set(state) >= {"model", "optimizer", "scheduler", "scaler", "iteration", "rng", "config", "best_metric"}
    assert state["iteration"] == 6 and state["config"]["train"]["keep_last"] == 2
    assert set(state["rng"][0]) >= {"python", "numpy", "torch"}
    best = load_checkpoint(directory / "best.pt")
    assert best["best_metric"] == state["best_metric"] and best["iteration"] in (3, 6)
    assert (config.run_dir / "config.yaml").is_file() and (config.run_dir / "curves.png").is_file()
    report = (config.run_dir / "report.html").read_text()
    for figure in ("curves.png", "per_class_iou.png", "confusion_matrix.png", "report_assets/sample_000.jpg"):
        assert f'src="{figure}"' in report and (config.run_dir / figure).is_file(), figure
    rebuilt = atrous.build_model(atrous.ModelSpec.from_dict(state["spec"]))
    assert atrous.load_weights(rebuilt, directory / "last.pt").ok


def _save_forever(directory, iteration, saved):
    from atrous.checkpoint import save_checkpoint

    while True:
        iteration += 1
        # NumPy fills the tensor: a forked child must not touch torch's (parent-initialised) thread pool.
        weights = torch.from_numpy(np.full(2_000_000, iteration, dtype=np.float32))
        state = {"iteration": iteration, "model": {"w": weights}}
        save_checkpoint(state, directory, iteration=iteration, keep_last=2, is_best=iteration % 3 == 0)
        saved.set()


def test_sigkill_during_saving_always_leaves_a_loadable_last_checkpoint(tmp_path):
    import multiprocessing
    import os
    import signal
    import time

    context = multiprocessing.get_context("fork")  # a child with torch already imported: kills come fast
    rng = np.random.default_rng(0)
    iteration, killed_mid_write = 0, 0
    for attempt in range(25):
        saved = context.Event()
        child = context.Process(target=_save_forever, args=(tmp_path, iteration, saved))
        child.start()
        assert saved.wait(timeout=60)  # at least one complete save in this attempt
        time.sleep(rng.uniform(0.0, 0.08))  # then kill at a random moment, most likely mid-save
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        killed_mid_write += any(tmp_path.glob(".*.tmp"))  # a half-written temporary file was left behind
        state = torch.load(tmp_path / "last.pt", weights_only=True)
        assert state["model"]["w"].numel() == 2_000_000
        assert torch.all(state["model"]["w"] == state["iteration"]), attempt
        assert state["iteration"] > iteration
        iteration = state["iteration"]
        if (tmp_path / "best.pt").exists():
            best = torch.load(tmp_path / "best.pt", weights_only=True)
            assert best["iteration"] % 3 == 0 and torch.all(best["model"]["w"] == best["iteration"])
    assert len(list(tmp_path.glob("iter_*.pt"))) <= 3  # pruning kept up (2 kept + at most one being replaced)
    assert killed_mid_write >= 10, killed_mid_write  # the kills really landed inside saves


def test_gradient_accumulation_equals_the_full_batch_with_frozen_bn(tmp_path):
    data = _folder_without_ignore(tmp_path / "data")
    common = {
        "model": {"name": "deeplabv2", "backbone": "resnet18", "num_classes": 7, "aux": False},
        "data": {"dataset": "folder", "root": str(data), "crop_size": 40, "scale_range": [1.0, 1.0]},
        "optim": {"lr": 0.001},
    }
    whole = small_config(data, tmp_path / "a", **common, train={"iterations": 3})
    accumulated = small_config(data, tmp_path / "b", **common, train={"iterations": 3, "grad_accum": 2})
    train(whole)
    train(accumulated)
    a = load_checkpoint(whole.run_dir / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(accumulated.run_dir / "checkpoints" / "last.pt")["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4)


def test_bf16_channels_last_and_activation_checkpointing_run(synthetic, tmp_path, monkeypatch, caplog):
    """... and on a CPU without native bf16 the run says it is emulated (and slower than float32)."""
    monkeypatch.setattr(atrous.cpu, "native_bf16", lambda: False)
    config = small_config(
        synthetic, tmp_path,
        train={"iterations": 2, "amp": "bf16", "channels_last": True, "activation_checkpointing": True},
    )  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="atrous"):
        summary = train(config)
    assert summary["iteration"] == 2 and all(math.isfinite(x) for x in losses(config.run_dir))
    assert any("train.amp=bf16: this CPU has no native bf16" in r.getMessage() for r in caplog.records)


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = atrous.build_model("deeplabv3", backbone="resnet18", num_classes=3, frozen_bn="all")
    images = torch.randn(2, 3, 48, 48)

    def gradients():
        torch.manual_seed(1)  # the same dropout masks in both passes
        model.zero_grad()
        model(images).logits.square().mean().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    model.train()
    plain = gradients()
    model.backbone.activation_checkpointing = True
    checkpointed = gradients()
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5)


def test_weights_flag_starts_from_any_format(synthetic, tmp_path):
    import torchvision

    imagenet = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18_imagenet.pth"
    torch.save(imagenet.state_dict(), path)
    # The first step's lr is 0 (warm-up from 0), so the saved weights are the loaded ones.
    config = small_config(synthetic, tmp_path, model={"weights": str(path)},
                          optim={"warmup_iters": 2, "warmup_ratio": 0.0, "weight_decay": 0.0}, train={"iterations": 1})  # fmt: skip
    train(config)
    state = load_checkpoint(config.run_dir / "checkpoints" / "last.pt")["model"]
    assert torch.equal(state["backbone.conv1.weight"], imagenet.conv1.weight)


def test_rectangular_crops(synthetic, tmp_path):
    config = small_config(synthetic, tmp_path, data={"crop_size": [24, 40]}, train={"iterations": 1})
    assert train(config)["iteration"] == 1
    from atrous.config import load_config as load

    saved = load(config.run_dir / "config.yaml")
    assert saved.data.crop_size == [24, 40]


def test_epochs_are_converted_to_iterations(synthetic, tmp_path):
    summary = train(small_config(synthetic, tmp_path, train={"epochs": 2, "iterations": 1}))
    assert summary["iterations"] == 2 * (16 // 4) == summary["iteration"]


def test_poly_schedule_with_warmup():
    factor = poly_with_warmup(100, 0.9, 10, 0.1)
    assert factor(0) == pytest.approx(0.1)
    assert factor(5) == pytest.approx((1 - 5 / 100) ** 0.9 * (0.1 + 0.9 * 0.5))
    assert factor(50) == pytest.approx(0.5**0.9)
    assert factor(100) == 0.0


@pytest.mark.parametrize("fused", [True, False])
def test_a_step_skipped_by_the_fp16_scaler_still_advances_the_schedule_and_warns_nothing(synthetic, tmp_path, fused):
    # fp16 runs only on CUDA; the same GradScaler works on the CPU. An infinite pixel makes the gradients
    # non-finite, so the step is skipped, as fp16 does while its scale settles. The engine's fused optimizer skips
    # inside its kernel; an unfused one (the bench's) is never called, and torch warned "lr_scheduler.step() before
    # optimizer.step()" (seen in benchmarks/gpu_paths.py on an H200).
    run = prepare(small_config(synthetic, tmp_path))
    if not fused:
        run.optimizer = torch.optim.SGD(run.model.parameters(), lr=0.01, momentum=0.9, fused=False)
        run.scheduler = torch.optim.lr_scheduler.LambdaLR(run.optimizer, poly_with_warmup(8, 0.9, 0, 1.0))
    assert bool(run.optimizer.defaults["fused"]) is fused
    run.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    images = torch.randn(4, 3, 40, 40)
    images[0, 0, 0, 0] = math.inf
    run.batches = iter([(images, torch.randint(0, 7, (4, 40, 40)))])
    before = {name: p.detach().clone() for name, p in run.model.named_parameters()}
    lr_before = run.optimizer.param_groups[0]["lr"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train_step(run)
    assert run.scaler.get_scale() == 2.0**15, "the scaler did not see the overflow"
    assert all(torch.equal(p, before[name]) for name, p in run.model.named_parameters()), "the step was not skipped"
    assert (run.iteration, run.scheduler.last_epoch) == (1, 1)
    assert run.optimizer.param_groups[0]["lr"] < lr_before


def test_a_warning_of_the_training_step_is_shown_once_not_at_every_iteration(synthetic, tmp_path):
    # The schedule's first step is wrapped in catch_warnings (above), which resets the registry behind "show once":
    # a warning of the step shows again after it, once, and never after that (wrapping every step showed it 6 times).
    run = prepare(small_config(synthetic, tmp_path))
    run.batches = iter([(torch.randn(4, 3, 40, 40), torch.randint(0, 7, (4, 40, 40)))] * 6)
    loss_fn = run.loss_fn

    def noisy_loss(*args):
        warnings.warn("a warning of every training step", UserWarning)
        return loss_fn(*args)

    run.loss_fn = noisy_loss
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("default")
        for _ in range(6):
            train_step(run)
    assert [str(w.message) for w in shown].count("a warning of every training step") == 2


def test_config_errors_are_clear(synthetic, tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key optim.learning_rate; valid keys of optim: \['decay_norm"):
        config_from_dict({"optim": {"learning_rate": 0.1}})
    with pytest.raises(ConfigError, match=r"data.batch_size: expected an integer, got 'eight'"):
        config_from_dict({"data": {"batch_size": "eight"}})
    with pytest.raises(ConfigError, match=r"unknown config key 'train.iters'; valid keys: \["):
        apply_overrides(Config(), ["train.iters=5"])
    with pytest.raises(ConfigError, match="not key=value"):
        apply_overrides(Config(), ["lr"])
    with pytest.raises(ConfigError, match=r"model.num_classes=21 but dataset 'synthetic train' has 7 classes"):
        train(small_config(synthetic, tmp_path, model={"num_classes": 21}))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train(small_config(tmp_path / "missing", tmp_path))
    with pytest.raises(ConfigError, match="must be divisible"):
        train(small_config(synthetic, tmp_path, data={"batch_size": 3}, train={"grad_accum": 2}))
    with pytest.raises(ConfigError, match="fp16 needs CUDA"):
        train(small_config(synthetic, tmp_path, train={"amp": "fp16", "device": "cpu"}))


def test_cli_reports_errors_with_exit_code_2(tmp_path, capsys):
    assert main(["train", "optim.momentum=fast"]) == 2
    assert "optim.momentum: expected a number" in capsys.readouterr().err


def test_recipes_load_and_match_the_papers():
    recipes = {path.name: load_config(path) for path in sorted((ROOT / "configs").glob("*.yaml"))}
    assert len(recipes) >= 7
    v3 = recipes["deeplabv3_r50-os16_voc-aug_513x513_30k.yaml"]
    assert (v3.model.backbone, v3.model.output_stride, v3.data.train_split) == ("resnet50", 16, "trainaug")
    assert (v3.data.crop_size, v3.data.batch_size, v3.optim.lr, v3.optim.power) == (513, 8, 0.007, 0.9)
    assert recipes["deeplabv3_r50-os8_voc-aug_513x513_30k.yaml"].model.output_stride == 8
    assert recipes["deeplabv3_r101-os16_voc-aug_513x513_30k.yaml"].model.backbone == "resnet101"
    v2 = recipes["deeplabv2_r101-caffe-os8_cityscapes_512x1024_40k.yaml"]
    assert (v2.model.name, v2.model.backbone, v2.model.num_classes) == ("deeplabv2", "resnet101_caffe", 19)
    assert (v2.optim.lr, v2.optim.weight_decay, v2.model.head_lr_mult) == (2.5e-4, 5e-4, 10.0)
    assert recipes["deeplabv3plus_r101-os16_cityscapes_512x1024_80k.yaml"].model.name == "deeplabv3plus"
    assert v2.data.crop_size == recipes["deeplabv3plus_r101-os16_cityscapes_512x1024_80k.yaml"].data.crop_size == [512, 1024]
    assert recipes["deeplabv3_r101-os8_ade20k_512x512_160k.yaml"].model.num_classes == 150
    for config in recipes.values():
        spec = dataclasses.replace(config.model, pretrained_backbone=None)  # no downloads in tests
        with torch.device("meta"):
            model = atrous.build_model(spec)
        assert model.num_classes == config.model.num_classes
        assert config.data.dataset in atrous.data.DATASETS


def test_train_pytorch_alias_runs_atrous_train(synthetic, tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "train_pytorch.py"), "--backbone", "resnet18", "--output_stride", "16",
         "--model", "deeplabv3", "--num_classes", "7", "--dataset", "synthetic", "--data_root", str(synthetic),
         "--batch_size", "4", "--crop_size", "32", "--iterations", "1", "--name", "alias", f"out_dir={tmp_path}",
         "data.workers=0", "data.val_batch_size=4"],
        check=False, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    state = load_checkpoint(tmp_path / "alias" / "checkpoints" / "last.pt")
    assert state["config"]["model"]["backbone"] == "resnet18" and state["config"]["model"]["output_stride"] == 16


def _folder_without_ignore(root: Path, count: int = 16) -> Path:
    """Synthetic images with every void pixel set to background: the loss then averages the same pixel count on
    every rank, so one process with the global batch and two with half each compute the same gradient."""
    from atrous.data.synthetic import render_sample

    spec = SynthSpec(seed=2, size=40)
    for split, indices in [("train", range(count)), ("val", range(count, count + 4))]:
        for index in indices:
            image, mask = render_sample(spec, index)
            (root / split / "images").mkdir(parents=True, exist_ok=True)
            (root / split / "masks").mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(root / split / "images" / f"{index:03d}.png")
            Image.fromarray(np.where(mask == 255, 0, mask).astype(np.uint8)).save(root / split / "masks" / f"{index:03d}.png")
    return root


def test_torchrun_two_processes_match_one_process(tmp_path):
    data = _folder_without_ignore(tmp_path / "data")
    overrides = [
        f"out_dir={tmp_path}", "model.name=deeplabv2", "model.backbone=resnet18", "model.num_classes=7",
        "data.dataset=folder", f"data.root={data}", "data.crop_size=40", "data.scale_range=[1.0,1.0]",
        "data.batch_size=4", "data.workers=0", "train.iterations=4", "train.val_every=4", "train.log_every=1",
        "optim.lr=0.01", "train.device=cpu",  # gloo: two processes on a machine of any number of GPUs
    ]  # fmt: skip
    single = subprocess.run(
        [sys.executable, "-m", "atrous", "train", "--name", "single", *overrides],
        check=False, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert single.returncode == 0, single.stderr[-2000:]
    import socket

    with socket.socket() as probe:  # a free local port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    double = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}", "-m", "atrous",
         "train", "--name", "ddp", *overrides],
        check=False, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert double.returncode == 0, double.stderr[-3000:]
    assert double.stdout.count("run: ") == 1  # only rank 0 reports
    assert "global batch 4 = 2 process(es) x 2 per process" in double.stdout
    assert "parameters identical on all 2 ranks: True" in double.stdout
    a = load_checkpoint(tmp_path / "single" / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "ddp" / "checkpoints" / "last.pt")["model"]
    changed = 0
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-5, rtol=0)
    first = load_checkpoint(tmp_path / "single" / "checkpoints" / "last.pt")
    assert first["iteration"] == 4
    initial = atrous.build_model("deeplabv2", backbone="resnet18", num_classes=7)
    changed = sum(not torch.equal(initial.state_dict()[k], a[k]) for k in a if "head" in k)
    assert changed > 0  # training moved the head: the comparison is not between two untouched models
    assert losses(tmp_path / "single") == pytest.approx(losses(tmp_path / "ddp"), abs=1e-5)


def test_torch_compile_option_trains(synthetic, tmp_path):
    config = small_config(
        synthetic, tmp_path, model={"name": "deeplabv2", "aux": False}, data={"crop_size": 32},
        train={"iterations": 2, "compile": True},
    )  # fmt: skip
    summary = train(config)
    assert summary["iteration"] == 2 and all(math.isfinite(x) for x in losses(config.run_dir))


def test_bf16_training_follows_the_float32_loss_curve(synthetic, tmp_path):
    """train.amp=bf16 (autocast; ASPP's atrous convolutions as bf16 matrix products, forward and backward) from
    the same weights and batches as float32: the same loss curve to bf16's precision, and it still learns. Rates
    1, 2, 6 on the 4x4 map of a 64 crop exercise full, partial and trimmed taps. The tolerance: the two
    trajectories part slowly, as any bf16 run does (with oneDNN's own bf16 convolutions in the ASPP instead,
    measured: mean 3.9%, worst step 10.3%; with atrous's: 2.1%, 7.8%)."""
    curves = {}
    for amp in ("none", "bf16"):
        config = small_config(
            synthetic, tmp_path / amp,
            model={"aux": False, "atrous_rates": [1, 2, 6]},
            data={"crop_size": 64}, train={"iterations": 16, "amp": amp, "channels_last": True},
        )  # fmt: skip
        train(config)
        curves[amp] = losses(config.run_dir)
    fp32, bf16 = curves["none"], curves["bf16"]
    assert len(fp32) == len(bf16) == 16
    drift = [abs(a - b) / b for a, b in zip(bf16, fp32)]
    assert drift[0] < 0.005 and sum(drift) / len(drift) < 0.05 and max(drift) < 0.15, (drift, fp32, bf16)
    assert sum(bf16[-4:]) < 0.8 * sum(bf16[:4]), bf16


@pytest.mark.parametrize(
    "model, data, train_options, refused",
    [
        ({"name": "deeplabv3plus"}, {"batch_size": 1}, {}, True),
        ({"name": "deeplabv3"}, {"batch_size": 4}, {"grad_accum": 4}, True),
        ({"name": "deeplabv3plus", "frozen_bn": "all"}, {"batch_size": 1}, {}, False),  # BN statistics frozen
        ({"name": "deeplabv2"}, {"batch_size": 1}, {}, False),  # no image pooling
        ({"name": "deeplabv3plus"}, {"batch_size": 2}, {}, False),
    ],
)
def test_one_image_per_forward_pass_is_refused_before_any_data_where_image_pooling_trains(
    tmp_path, model, data, train_options, refused
):
    """Batch 1 on DeepLabV3/V3+ (issue 29, C11): refused as the run is prepared, naming the flags that fix it, rather
    than a traceback from the first step. The data root does not exist: the check comes before any data is read."""
    config = small_config(tmp_path / "absent", tmp_path, model={"backbone": "resnet18", "num_classes": 7, **model},
                          data=data, train=train_options)  # fmt: skip
    if refused:
        with pytest.raises(ConfigError, match=r"gives each forward pass 1 image .* needs 2 images or more: raise it "
                                              r"\(--batch-size, data.batch_size=\d+\), lower train.grad_accum, or "
                                              r"freeze the BatchNorm statistics \(model.frozen_bn=all"):  # fmt: skip
            prepare(config)
    else:
        with pytest.raises(atrous.AtrousError, match="does not exist"):  # past the check, stopped by the data
            prepare(config)
