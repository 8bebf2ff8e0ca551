"""The training loop: one function, read top to bottom. DDP, autocast, GradScaler, ``no_sync`` accumulation;
rank 0 writes files; metrics are all-reduced before they are reported."""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from . import distributed
from .checkpoint import LAST, capture_rng, load_checkpoint, restore_rng, save_checkpoint
from .config import Config, ConfigError, config_to_dict, save_config
from .data import build_dataset, eval_transforms, train_transforms
from .data.checks import read_class_weights
from .data.sampling import SeededDataset, TrainSampler
from .evaluation import evaluate
from .losses import SegmentationLoss
from .models import Segmenter, build_model
from .models.weights import load_weights


def model_from_config(config: Config) -> Segmenter:
    m = config.model
    return build_model(
        m.name,
        backbone=m.backbone,
        num_classes=m.num_classes,
        output_stride=m.output_stride,
        aux=m.aux,
        atrous_rates=m.atrous_rates,
        multi_grid=m.multi_grid,
        separable=m.separable,
        frozen_bn=m.frozen_bn,
        head_lr_mult=m.head_lr_mult,
        pretrained_backbone=m.pretrained_backbone,
    )


def parameter_groups(model: Segmenter, config: Config) -> list[dict]:
    """SGD groups: backbone / heads (heads at ``head_lr_mult`` x lr) x decayed / not decayed.

    Norm weights and all biases (tensors of one dimension) get no weight decay unless ``decay_norm_and_bias``.
    """
    optim = config.optim
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_head = not name.startswith("backbone.")
        decayed = optim.decay_norm_and_bias or param.ndim > 1
        groups.setdefault((is_head, decayed), []).append(param)
    return [
        {
            "params": params,
            "lr": optim.lr * (model.head_lr_mult if is_head else 1.0),
            "weight_decay": optim.weight_decay if decayed else 0.0,
            "name": f"{'head' if is_head else 'backbone'}{'' if decayed else '_no_decay'}",
        }
        for (is_head, decayed), params in sorted(groups.items())
    ]


def build_optimizer(model: Segmenter, config: Config) -> torch.optim.Optimizer:
    groups = parameter_groups(model, config)
    if config.optim.name == "sgd":
        return torch.optim.SGD(groups, lr=config.optim.lr, momentum=config.optim.momentum)
    if config.optim.name == "adamw":
        return torch.optim.AdamW(groups, lr=config.optim.lr)
    raise ConfigError(f"optim.name={config.optim.name!r}; choose from ['adamw', 'sgd']")


def poly_with_warmup(iterations: int, power: float, warmup_iters: int, warmup_ratio: float):
    """LR factor at an iteration: linear warm-up from ``warmup_ratio``, then (1 - it / iterations) ** power."""

    def factor(iteration: int) -> float:
        poly = (1 - min(iteration, iterations) / iterations) ** power
        if iteration < warmup_iters:
            return poly * (warmup_ratio + (1 - warmup_ratio) * iteration / warmup_iters)
        return poly

    return factor


def _autocast(config: Config, device: torch.device):
    amp = config.train.amp
    if amp == "none":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    return torch.autocast(device_type=device.type, dtype=dtype)


def _check(config: Config, world_size: int) -> None:
    t, d = config.train, config.data
    if t.amp not in ("none", "bf16", "fp16"):
        raise ConfigError(f"train.amp={t.amp!r}; choose from ['bf16', 'fp16', 'none']")
    if t.grad_accum < 1:
        raise ConfigError(f"train.grad_accum must be >= 1, got {t.grad_accum}")
    if d.batch_size % (world_size * t.grad_accum):
        raise ConfigError(
            f"data.batch_size={d.batch_size} (global) must be divisible by processes x grad_accum = "
            f"{world_size} x {t.grad_accum}"
        )
    if t.iterations < 1 and t.epochs is None:
        raise ConfigError(f"train.iterations must be >= 1, got {t.iterations}")


def _write_run_report(config: Config, model: Segmenter, val_set, log_path: Path, scores, matrix, device) -> Path:
    """Training curves, the last validation scores (table, per-class IoU chart, confusion matrix) and a grid of
    validation predictions in ``report.html``."""
    from .evaluation import REPORT_SAMPLES
    from .inference import model_input, predict
    from .plots import plot_confusion_matrix, plot_per_class_iou, plot_training_curves
    from .report import write_report

    run_dir = config.run_dir
    samples = []
    model.eval()
    for index in range(min(REPORT_SAMPLES, len(val_set))):
        image, mask = val_set.load(index)  # untransformed arrays: what the report shows
        prediction = predict(model, model_input([image], model, device))[0].cpu().numpy()
        samples.append((val_set.samples[index][0].name, image, mask, prediction))
    figures = {"training curves (loss, learning rate, validation mIoU)": plot_training_curves(log_path, run_dir / "curves.png")}
    if scores is not None:
        names = val_set.class_names
        figures["per-class IoU"] = plot_per_class_iou(names, scores["per_class_iou"], run_dir / "per_class_iou.png")
        figures["confusion matrix"] = plot_confusion_matrix(names, matrix, run_dir / "confusion_matrix.png")
    return write_report(
        run_dir, title=f"atrous training run: {config.name}", class_names=val_set.class_names,
        palette=val_set.palette, config=config_to_dict(config), scores=scores, figures=figures, samples=samples,
    )  # fmt: skip


def dataset_options(config: Config) -> dict:
    """Options only some dataset families take: a folder dataset's classes come from the model config."""
    if config.data.dataset != "folder":
        return {}
    options = {"num_classes": config.model.num_classes}
    if config.data.label_mapping:
        options["label_mapping"] = config.data.label_mapping
    return options


def train(config: Config, *, resume: str | bool | None = None, stop_at: int | None = None) -> dict:
    """Train as ``config`` says; returns a summary. ``resume``: True (the run's last.pt) or a checkpoint path.

    stop_at: stop (with a checkpoint) after this iteration, e.g. to fit a job's time limit; the schedule still
    runs to ``train.iterations`` when resumed.
    """
    info = distributed.init_distributed(config.train.device)
    _check(config, info.world_size)
    torch.manual_seed(config.train.seed + info.rank)  # the model's init is rank 0's: DDP broadcasts it
    run_dir, device = config.run_dir, info.device
    say = print if info.is_main else (lambda *args, **kwargs: None)

    # ---- model, data, loss
    model = model_from_config(config)
    if config.model.weights:
        say(load_weights(model, config.model.weights))
    train_set = build_dataset(
        config.data.dataset,
        config.data.root,
        config.data.train_split,
        on_error=config.data.on_error,
        transforms=train_transforms(
            normalization=model.normalization,
            crop_size=config.data.crop_size if isinstance(config.data.crop_size, int) else tuple(config.data.crop_size),
            scale_range=tuple(config.data.scale_range),
            flip=config.data.flip,
            photometric=config.data.photometric,
            blur=config.data.blur,
        ),
        **dataset_options(config),
    )
    if train_set.num_classes != model.num_classes:
        raise ConfigError(
            f"model.num_classes={model.num_classes} but dataset {train_set.name!r} has {train_set.num_classes} "
            f"classes ({', '.join(train_set.class_names[:6])}{', ...' if train_set.num_classes > 6 else ''})"
        )
    val_set = build_dataset(
        config.data.dataset,
        config.data.root,
        config.data.val_split,
        transforms=eval_transforms(normalization=model.normalization),
        **dataset_options(config),
    )
    class_weights = None
    if config.data.class_weights:
        class_weights = read_class_weights(
            config.data.class_weights, kind=config.data.class_weights_kind, num_classes=model.num_classes
        )
    loss_fn = SegmentationLoss(
        class_weights=class_weights,
        aux_weight=config.train.aux_weight,
        ohem=config.train.ohem,
        ohem_thresh=config.train.ohem_thresh,
        ohem_min_kept=config.train.ohem_min_kept,
    ).to(device)

    model.backbone.activation_checkpointing = config.train.activation_checkpointing
    if config.train.sync_bn and info.distributed and device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    memory_format = torch.channels_last if config.train.channels_last else torch.contiguous_format
    model.to(memory_format=memory_format)
    if config.train.amp == "fp16" and device.type != "cuda":
        raise ConfigError("train.amp=fp16 needs CUDA (GradScaler); use train.amp=bf16 on the CPU")

    # ---- schedule
    micro_batch = config.data.batch_size // (info.world_size * config.train.grad_accum)
    samples_per_iteration = micro_batch * config.train.grad_accum  # per rank
    iterations_per_epoch = (len(train_set) // info.world_size) // samples_per_iteration
    if iterations_per_epoch < 1:
        raise ConfigError(
            f"dataset {train_set.name!r} has {len(train_set)} samples: fewer than one global batch of "
            f"{config.data.batch_size}"
        )
    iterations = config.train.iterations
    if config.train.epochs is not None:
        iterations = config.train.epochs * iterations_per_epoch
    optimizer = build_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        poly_with_warmup(iterations, config.optim.power, config.optim.warmup_iters, config.optim.warmup_ratio),
    )
    scaler = torch.amp.GradScaler(device.type, enabled=config.train.amp == "fp16")

    # ---- resume
    start, best = 0, -math.inf
    if resume:
        path = run_dir / "checkpoints" / LAST if resume is True else Path(resume)
        state = load_checkpoint(path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start, best = state["iteration"], state["best_metric"]
        rng_states = state["rng"]
        if len(rng_states) == info.world_size:
            restore_rng(rng_states[info.rank])
        else:
            say(f"resuming on {info.world_size} processes from {len(rng_states)}: random streams restart")
        say(f"resumed from {path} at iteration {start}")

    train_model: torch.nn.Module = model
    if info.distributed:
        train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    forward = torch.compile(train_model) if config.train.compile else train_model

    sampler = TrainSampler(
        len(train_set),
        rank=info.rank,
        world_size=info.world_size,
        seed=config.train.seed,
        samples_per_epoch=iterations_per_epoch * samples_per_iteration,
    )
    loader = DataLoader(
        SeededDataset(train_set),
        batch_size=micro_batch,
        sampler=sampler,
        num_workers=config.data.workers,
        pin_memory=device.type == "cuda",
        drop_last=True,
        persistent_workers=config.data.workers > 0,
        generator=torch.Generator(),  # the loader never draws from the global RNG (exact resume)
    )

    def batches():
        epoch, offset = divmod(start, iterations_per_epoch)
        while True:
            sampler.set_epoch(epoch, start=offset * samples_per_iteration)
            yield from loader
            epoch, offset = epoch + 1, 0

    # ---- files (rank 0)
    log_path = run_dir / "metrics.jsonl"
    writer = None
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir / "config.yaml")
        if not resume:
            log_path.write_text("")
        try:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(run_dir / "tensorboard")
        except ImportError:
            pass
    say(
        f"{train_set.name}: {len(train_set)} images; global batch {config.data.batch_size} = {info.world_size} "
        f"process(es) x {micro_batch} per process x {config.train.grad_accum} accumulation step(s); "
        f"{iterations} iterations (~{iterations / iterations_per_epoch:.1f} epochs) on {device}"
    )

    def log(row: dict) -> None:
        if info.is_main:
            with open(log_path, "a") as handle:
                handle.write(json.dumps(row) + "\n")

    # ---- the loop
    stream = batches()
    end = min(iterations, stop_at) if stop_at is not None else iterations
    progress = tqdm(range(start, end), initial=start, total=iterations, disable=not info.is_main, desc="train")
    last_scores: dict | None = None
    last_matrix = None
    started = time.perf_counter()
    window_loss, window_steps = torch.zeros((), device=device), 0  # mean loss since the last log line
    for iteration in progress:
        train_model.train()
        for micro_step in range(config.train.grad_accum):
            images, masks = next(stream)
            images = images.to(device, non_blocking=True).contiguous(memory_format=memory_format)
            masks = masks.to(device, non_blocking=True)
            syncing = micro_step == config.train.grad_accum - 1 or not info.distributed
            with contextlib.nullcontext() if syncing else train_model.no_sync():
                with _autocast(config, device):
                    output = forward(images)
                    loss, _ = loss_fn(output, masks)
                scaler.scale(loss / config.train.grad_accum).backward()
            window_loss += loss.detach() / config.train.grad_accum
        window_steps += 1
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        done = iteration + 1

        if done % config.train.log_every == 0 or done == end:
            mean_loss = distributed.all_reduce_mean(window_loss / window_steps).item()
            window_loss, window_steps = torch.zeros((), device=device), 0
            elapsed = time.perf_counter() - started
            images_per_second = (done - start) * config.data.batch_size / max(elapsed, 1e-9)
            progress.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}", img_s=f"{images_per_second:.1f}")
            log({"iteration": done, "loss": mean_loss, "lr": lr, "images_per_second": images_per_second})
            if writer is not None:
                writer.add_scalar("train/loss", mean_loss, done)
                writer.add_scalar("train/lr", lr, done)

        improved = False
        if done % config.train.val_every == 0 or done == iterations:
            matrix = evaluate(
                model,
                val_set,
                num_classes=model.num_classes,
                device=device,
                rank=info.rank,
                world_size=info.world_size,
                batch_size=config.data.val_batch_size,
                channels_last=config.train.channels_last,
                progress=False,
            )
            last_scores, last_matrix = matrix.scores(), matrix.matrix.cpu().numpy()
            improved = last_scores["mIoU"] > best
            best = max(best, last_scores["mIoU"])
            log({"iteration": done, "val": {k: v for k, v in last_scores.items() if not k.startswith("per_class")}})
            if info.is_main:
                progress.write(
                    f"iteration {done}: mIoU {last_scores['mIoU']:.4f}  pixel accuracy "
                    f"{last_scores['pixel_accuracy']:.4f}  (best {best:.4f})"
                )
            if writer is not None:
                writer.add_scalar("val/mIoU", last_scores["mIoU"], done)

        if done % config.train.save_every == 0 or done == end or improved:
            rng_states = [capture_rng()]
            if info.distributed:
                rng_states = [None] * info.world_size
                torch.distributed.all_gather_object(rng_states, capture_rng())
            if info.is_main:
                state = {
                    "model": model.state_dict(),
                    "spec": model.spec,
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "iteration": done,
                    "best_metric": best,
                    "rng": rng_states,
                    "config": config_to_dict(config),
                    "class_names": list(train_set.class_names),
                }
                save_checkpoint(
                    state, run_dir / "checkpoints", iteration=done, keep_last=config.train.keep_last, is_best=improved
                )
            distributed.barrier()
    progress.close()
    in_sync = distributed.parameters_in_sync(model)
    if info.distributed:
        say(f"parameters identical on all {info.world_size} ranks: {in_sync}")

    if info.is_main and end == iterations:
        _write_run_report(config, model, val_set, log_path, last_scores, last_matrix, device)
    if writer is not None:
        writer.close()
    summary = {
        "run_dir": str(run_dir),
        "iteration": end,
        "iterations": iterations,
        "best_mIoU": best if best > -math.inf else None,
        "last_val": last_scores,
        "checkpoint": str(run_dir / "checkpoints" / LAST),
        "class_names": list(train_set.class_names),
        "world_size": info.world_size,
        "is_main": info.is_main,
        "ranks_in_sync": in_sync,
    }
    distributed.barrier()
    return summary
