"""Training in four named parts: ``prepare(config) -> TrainingRun``, ``train_step(run)``, ``validate(run)`` and the
checkpoint (``atrous.training_state``: ``training_state`` / ``restore_training_state``); ``train`` is the loop over
them.

DDP, autocast, GradScaler, ``no_sync`` accumulation; rank 0 writes files; metrics are all-reduced before they are
reported. No run loses another's work or its own: a run directory is locked by the run in it and never replaced
unasked (``atrous.run_dir``), and each checkpoint is written before the validation that could crash.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from . import cpu, distributed
from .build import build_model
from .checkpoint import LAST, load_checkpoint, save_checkpoint
from .config import Config, config_to_dict, save_config
from .data import SegmentationDataset, build_dataset, family_options, train_transforms
from .data.checks import read_class_weights, refuse_binary_masks_read_as_ignore
from .data.sampling import SeededDataset, TrainSampler
from .distributed import DistInfo
from .errors import AtrousError, ConfigError, OutOfMemoryError, TrainingError
from .evaluation import Evaluation, evaluate, write_run_report
from .folder_lock import FolderLock
from .losses import SegmentationLoss
from .memory import is_out_of_memory, memory_asked
from .models.layers import ImagePooling
from .models.segmenter import Segmenter
from .progress import progress_bar
from .registry import resolved
from .run_dir import claim, trim_metrics
from .runtime import HALF_PRECISIONS
from .training_state import TrainingRun, check_resumable, restore_training_state, training_state

log = logging.getLogger(__name__)


def build_optimizer(model: Segmenter, config: Config) -> torch.optim.Optimizer:
    """AdamW or SGD with momentum over ``Segmenter.parameter_groups``, in torch's fused implementation (one kernel over
    all tensors) where the parameters live on a CPU or a CUDA device: on the CPU the default loops over the tensors one
    by one, and was a fifth of the demo's training step (measured here: 42 of 220 ms)."""
    optim = config.optim
    groups = model.parameter_groups(lr=optim.lr, weight_decay=optim.weight_decay,
                                    decay_norm_and_bias=optim.decay_norm_and_bias)  # fmt: skip
    fused = {"fused": True} if {p.device.type for p in model.parameters()} <= {"cpu", "cuda"} else {}
    if config.optim.name == "adamw":
        return torch.optim.AdamW(groups, lr=config.optim.lr, **fused)
    return torch.optim.SGD(groups, lr=config.optim.lr, momentum=config.optim.momentum, **fused)


def poly_with_warmup(iterations: int, power: float, warmup_iters: int, warmup_ratio: float):
    """LR factor at an iteration: linear warm-up from ``warmup_ratio``, then (1 - it / iterations) ** power."""

    def factor(iteration: int) -> float:
        poly = (1 - min(iteration, iterations) / iterations) ** power
        if iteration < warmup_iters:
            return poly * (warmup_ratio + (1 - warmup_ratio) * iteration / warmup_iters)
        return poly

    return factor


def dataset_options(config: Config) -> dict:
    """The options the config's dataset family takes (``atrous.data.family_options``), from the config: the number
    of classes from the model config, a label mapping, names and colours from ``data.label_mapping`` /
    ``data.class_names`` / ``data.palette`` (a folder dataset's). Unset ones are left to the family's defaults."""
    d = config.data
    values = {"num_classes": config.model.num_classes, "label_mapping": d.label_mapping, "class_names": d.class_names,
              "palette": d.palette}  # fmt: skip
    return {key: values[key] for key in family_options(d.dataset) if values[key]}


def _datasets(config: Config, model: Segmenter) -> tuple[SegmentationDataset, SegmentationDataset]:
    """(train set with the config's augmentation, untransformed val set); their classes must be the model's."""
    d = config.data
    crop = d.crop_size if isinstance(d.crop_size, int) else tuple(d.crop_size)
    augment = train_transforms(normalization=model.normalization, crop_size=crop, scale_range=tuple(d.scale_range),
                               flip=d.flip, photometric=d.photometric, blur=d.blur)  # fmt: skip
    train_set = build_dataset(d.dataset, d.root, d.train_split, on_error=d.on_error, transforms=augment,
                              **dataset_options(config))  # fmt: skip
    if d.label_mapping is None:  # a mapping given says what 255 is; without one, 0/255 masks would train nothing
        refuse_binary_masks_read_as_ignore(train_set)
    if train_set.num_classes != model.num_classes:
        raise ConfigError(
            f"model.num_classes={model.num_classes} but dataset {train_set.name!r} has {train_set.num_classes} "
            f"classes ({', '.join(train_set.class_names[:6])}{', ...' if train_set.num_classes > 6 else ''})"
        )
    val_set = build_validation_set(config)
    if list(val_set.class_names) != list(train_set.class_names):
        raise ConfigError(f"validation dataset {val_set.name!r} has other classes than {train_set.name!r} "
                          f"({val_set.num_classes} vs {train_set.num_classes}): data.val_dataset must label the "
                          "same classes")  # fmt: skip
    return train_set, val_set


def build_validation_set(config: Config, split: str | None = None) -> SegmentationDataset:
    """The untransformed validation set: ``data.val_dataset`` / ``data.val_root`` when set, else the train set's."""
    d = config.data
    name, root = d.val_dataset or d.dataset, d.val_root or d.root
    options = dataset_options(config) if name == d.dataset else {}
    return build_dataset(name, root, split or d.val_split, on_error=d.on_error, **options)


def _refuse_single_image_batches(model: Segmenter, config: Config, world_size: int) -> None:
    """``ConfigError`` before any data is read when each forward pass would see one image while the model's ASPP
    image pooling trains its BatchNorm: the branch pools each image to one value per channel, and the batch
    statistics of one value do not exist (torch raises in the first step)."""
    micro = _micro_batch(config, world_size)
    if micro >= 2 or model.bn_stats_frozen or not any(isinstance(m, ImagePooling) for m in model.modules()):
        return
    d, t = config.data, config.train
    raise ConfigError(
        f"data.batch_size={d.batch_size} gives each forward pass 1 image ({world_size} process"
        f"{'es' if world_size > 1 else ''} x train.grad_accum={t.grad_accum}), but {model.spec.name}'s image-pooling "
        "branch normalises over the batch, which needs 2 images or more: raise it (--batch-size, data.batch_size="
        f"{2 * world_size * t.grad_accum}), lower train.grad_accum, or freeze the BatchNorm statistics "
        "(model.frozen_bn=all, as DeepLab-v2 trains)"
    )


def _micro_batch(config: Config, world_size: int) -> int:
    """Samples per process and forward pass: the global batch split over processes and accumulation steps."""
    return config.data.batch_size // (world_size * config.train.grad_accum)


def _batch_stream(run: TrainingRun, iterations_per_epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's micro-batches from ``run.iteration`` on, epoch after epoch: the same samples and augmentation
    after a resume as in a straight run."""
    config, info = run.config, run.dist
    micro_batch = _micro_batch(config, info.world_size)
    samples_per_iteration = micro_batch * config.train.grad_accum
    sampler = TrainSampler(len(run.train_set), rank=info.rank, world_size=info.world_size, seed=config.train.seed,
                           samples_per_epoch=iterations_per_epoch * samples_per_iteration)  # fmt: skip
    loader = DataLoader(
        SeededDataset(run.train_set), batch_size=micro_batch, sampler=sampler, num_workers=config.data.workers,
        pin_memory=run.device.type == "cuda", drop_last=True, persistent_workers=config.data.workers > 0,
        generator=torch.Generator(),  # the loader never draws from the global RNG (exact resume)
    )  # fmt: skip
    epoch, offset = divmod(run.iteration, iterations_per_epoch)
    while True:
        sampler.set_epoch(epoch, start=offset * samples_per_iteration)
        yield from loader
        epoch, offset = epoch + 1, 0


def prepare(config: Config, *, resume: str | Path | bool | None = None) -> TrainingRun:
    """Build the model, data, loss, optimizer and schedule ``config`` describes, restored from a checkpoint when
    ``resume`` is True (the run's last.pt) or a path."""
    info = distributed.init_distributed(config.train.device)
    t, d = config.train, config.data
    if d.batch_size % (info.world_size * t.grad_accum):
        raise ConfigError(f"data.batch_size={d.batch_size} (global) must be divisible by processes x grad_accum = "
                          f"{info.world_size} x {t.grad_accum}")  # fmt: skip
    checkpoint = None
    if resume:  # read and checked first: a wrong file fails before the data is scanned and the model built
        path = config.run_dir / "checkpoints" / LAST if resume is True else Path(resume)
        checkpoint = load_checkpoint(path)
        check_resumable(checkpoint, str(path), resolved(config.model).architecture())
    torch.manual_seed(t.seed + info.rank)  # the model's init is rank 0's: DDP broadcasts it
    model = build_model(config.model)
    _refuse_single_image_batches(model, config, info.world_size)
    train_set, val_set = _datasets(config, model)
    model.set_labels(train_set.class_names, train_set.palette)
    class_weights = None
    if d.class_weights:
        class_weights = read_class_weights(d.class_weights, kind=d.class_weights_kind, num_classes=model.num_classes)
    loss_fn = SegmentationLoss(class_weights=class_weights, aux_weight=t.aux_weight, ohem=t.ohem,
                               ohem_thresh=t.ohem_thresh, ohem_min_kept=t.ohem_min_kept).to(info.device)  # fmt: skip
    model.backbone.activation_checkpointing = t.activation_checkpointing
    if t.sync_bn and info.distributed and info.device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(info.device)
    model.to(memory_format=torch.channels_last if t.channels_last else torch.contiguous_format)

    micro_batch = _micro_batch(config, info.world_size)
    iterations_per_epoch = (len(train_set) // info.world_size) // (micro_batch * t.grad_accum)
    if iterations_per_epoch < 1:
        raise ConfigError(f"dataset {train_set.name!r} has {len(train_set)} samples: fewer than one global batch "
                          f"(data.batch_size={d.batch_size}); lower data.batch_size")  # fmt: skip
    iterations = t.epochs * iterations_per_epoch if t.epochs is not None else t.iterations
    optimizer = build_optimizer(model, config)
    factor = poly_with_warmup(iterations, config.optim.power, config.optim.warmup_iters, config.optim.warmup_ratio)
    run = TrainingRun(
        config=config, dist=info, model=model, wrapped=model, forward=model, loss_fn=loss_fn, optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, factor),
        scaler=torch.amp.GradScaler(info.device.type, enabled=t.amp == "fp16"), batches=None, iterations=iterations,
        train_set=train_set, val_set=val_set,
    )  # fmt: skip
    if checkpoint is not None:
        restore_training_state(run, checkpoint, source=str(path))
        if info.is_main:
            log.info("resumed from %s at iteration %d", path, run.iteration)
    if info.distributed:
        run.wrapped = DistributedDataParallel(model, device_ids=[info.device.index] if info.device.type == "cuda" else None)
    run.forward = torch.compile(run.wrapped) if t.compile else run.wrapped
    run.batches = _batch_stream(run, iterations_per_epoch)
    if info.is_main:
        if t.amp == "bf16":
            cpu.warn_if_slow_on_this_cpu(info.device, torch.bfloat16, "train.amp=bf16", log)
        log.info(
            "%s: %d images; global batch %d = %d process(es) x %d per process x %d accumulation step(s); %d iterations "
            "(~%.1f epochs) on %s", train_set.name, len(train_set), d.batch_size, info.world_size, micro_batch,
            t.grad_accum, iterations, iterations / iterations_per_epoch, info.device,
        )  # fmt: skip
    return run


def _autocast(amp: str, device: torch.device):
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=HALF_PRECISIONS[amp])


def train_step(run: TrainingRun) -> torch.Tensor:
    """One optimizer step over ``grad_accum`` micro-batches (gradients synchronised on the last only); advances the
    schedule and ``run.iteration``. Returns the step's mean loss, detached, on the run's device."""
    t, device = run.config.train, run.device
    run.wrapped.train()
    total = torch.zeros((), device=device)
    for micro_step in range(t.grad_accum):
        images, masks = next(run.batches)
        images = images.to(device, non_blocking=True).contiguous(memory_format=run.memory_format)
        masks = masks.to(device, non_blocking=True)
        syncing = micro_step == t.grad_accum - 1 or not isinstance(run.wrapped, DistributedDataParallel)
        with contextlib.nullcontext() if syncing else run.wrapped.no_sync():
            with _autocast(t.amp, device):
                loss, _ = run.loss_fn(run.forward(images), masks)
            run.scaler.scale(loss / t.grad_accum).backward()
        total += loss.detach() / t.grad_accum
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    _advance_schedule(run.scheduler)
    run.iteration += 1
    return total


def _advance_schedule(scheduler: torch.optim.lr_scheduler.LRScheduler) -> None:
    """One step of the learning-rate schedule, which is a function of the iteration: it advances whether or not the
    optimizer stepped (resume depends on it). fp16's GradScaler skips the step when the gradients overflow (the
    first steps, while the scale settles); an unfused optimizer (the bench's) is then never called, and torch warns
    that the schedule ran ahead of it. torch checks on the schedule's first step only (``last_epoch`` 0), and only
    that step is wrapped: ``catch_warnings`` resets the registry behind "show once" warnings, so wrapping every step
    would repeat any such warning of the training step at every iteration."""
    if scheduler.last_epoch > 0:
        scheduler.step()
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
        scheduler.step()


def validate(run: TrainingRun) -> Evaluation:
    """The confusion matrix of the model on the whole validation set (each rank its shard, summed)."""
    return evaluate(
        run.model, run.val_set, device=run.device, rank=run.dist.rank, world_size=run.dist.world_size,
        batch_size=run.config.data.val_batch_size, channels_last=run.config.train.channels_last, progress=False,
    )  # fmt: skip


class RunLog:
    """``metrics.jsonl`` (one JSON row per log line or validation) and TensorBoard when installed; rank 0 writes.

    A resumed run's log is cut back to the checkpoint's iteration (what came after is trained again) and
    ``validated`` says whether the checkpoint's own validation was logged (on every rank)."""

    def __init__(self, run: TrainingRun, *, resumed: bool):
        self.path = run.config.run_dir / "metrics.jsonl"
        self.enabled, self.writer, self.validated = run.dist.is_main, None, False
        if self.enabled:
            run.config.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(run.config, run.config.run_dir / "config.yaml")
            rows = trim_metrics(self.path, run.iteration) if resumed else []
            if not resumed:
                self.path.write_text("")
            self.validated = any(row.get("iteration") == run.iteration and "val" in row for row in rows)
            with contextlib.suppress(ImportError):
                from torch.utils.tensorboard import SummaryWriter

                # purge_step: TensorBoard hides the events after the checkpoint, which the resumed run writes again
                self.writer = SummaryWriter(run.config.run_dir / "tensorboard",
                                            purge_step=run.iteration + 1 if resumed else None)  # fmt: skip
        self.validated = distributed.broadcast_from_main(self.validated)

    def write(self, row: dict, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as handle:
            handle.write(json.dumps(row) + "\n")
        for name, value in scalars.items() if self.writer is not None else ():
            self.writer.add_scalar(name, value, row["iteration"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _claim_run_dir(run_dir: Path, info: DistInfo, *, resume, overwrite: bool) -> FolderLock | None:
    """Rank 0 claims the run directory (``atrous.run_dir.claim``); every rank raises its refusal, since the others
    would otherwise wait for rank 0 until the collective timeout."""
    lock, refusal = None, None
    if info.is_main:
        try:
            lock = claim(run_dir, resume=resume, overwrite=overwrite)
        except AtrousError as error:
            refusal = error
    refusal = distributed.broadcast_from_main(refusal)
    if refusal is not None:
        raise refusal
    return lock


@contextlib.contextmanager
def _said_out_of_memory(run: TrainingRun, doing: str) -> Iterator[None]:
    """An allocator's out-of-memory failure as ``OutOfMemoryError``: what was running, the batch and crop, the memory
    asked for, and the settings that need less (those not already set). The allocator's traceback says none of it."""
    try:
        yield
    except (MemoryError, RuntimeError) as error:
        if not is_out_of_memory(error):
            raise
        d, t, size = run.config.data, run.config.train, memory_asked(error)
        asked = f" asked for {size} more" if size else ""
        if doing == "validating":
            raise OutOfMemoryError(
                f"out of memory on {run.device} at iteration {run.iteration}, validating whole images "
                f"({d.val_batch_size} a batch){asked}; set data.val_batch_size=1, or validate with less memory "
                "taken by training (lower --batch-size)"
            ) from None
        crop = "x".join(str(side) for side in ([d.crop_size] * 2 if isinstance(d.crop_size, int) else d.crop_size))
        knobs = [f"--batch-size (now {d.batch_size})", f"--crop-size (now {crop})"]
        if not t.activation_checkpointing:
            knobs.append("train.activation_checkpointing=true (recomputes activations rather than keeping them)")
        if t.amp == "none":
            knobs.append("train.amp=bf16 (half the activation memory)" if run.device.type == "cpu" else
                         "train.amp=fp16 or bf16 (half the activation memory)")  # fmt: skip
        images = _micro_batch(run.config, run.dist.world_size)
        raise OutOfMemoryError(
            f"out of memory on {run.device} at iteration {run.iteration + 1}, training on {images} crop(s) of {crop} "
            f"pixels per process{asked}; lower {', '.join(knobs[:-1])} or {knobs[-1]}"
        ) from None


def _validation_due(run: TrainingRun, iteration: int) -> bool:
    return iteration % run.config.train.val_every == 0 or iteration == run.iterations


def _diverged(run: TrainingRun, what: str) -> TrainingError:
    o = run.config.optim
    return TrainingError(
        f"training diverged at iteration {run.iteration}: {what}. Lower optim.lr (now {o.lr:g}) or raise "
        f"optim.warmup_iters (now {o.warmup_iters}) and start again (--overwrite), or continue from an earlier "
        "checkpoint (--resume PATH); none with non-finite weights was saved, but the latest may already be far off"
    )


def _require_finite_weights(run: TrainingRun) -> None:
    """Raise ``TrainingError`` when a weight is NaN or infinite: such a model predicts nothing, and saving it would
    replace last.pt with it."""
    finite = torch.stack([parameter.detach().isfinite().all() for parameter in run.model.parameters()]).all()
    if not finite:
        raise _diverged(run, "its weights are no longer finite numbers (NaN or inf)")


def _save(run: TrainingRun, *, is_best: bool) -> None:
    """Checkpoint the run at its iteration (last.pt; best.pt too when ``is_best``)."""
    _require_finite_weights(run)
    state = training_state(run)  # every rank: the random states are gathered
    if run.dist.is_main:
        t = run.config.train
        save_checkpoint(state, run.config.run_dir / "checkpoints", iteration=run.iteration, keep_last=t.keep_last,
                        is_best=is_best)  # fmt: skip
    distributed.barrier()


def _validate_and_keep_best(run: TrainingRun, run_log: RunLog, progress) -> Evaluation:
    """Validate; on a new best score save the iteration's checkpoint again, now holding that score, as best.pt and
    last.pt (a resume must know the best so far). The log row comes last: a logged validation is a finished one."""
    evaluation = validate(run)
    scores = evaluation.scores
    if scores["mIoU"] > run.best:
        run.best = scores["mIoU"]
        _save(run, is_best=True)
    summary = {key: value for key, value in scores.items() if not key.startswith("per_class")}
    run_log.write({"iteration": run.iteration, "val": summary}, {"val/mIoU": scores["mIoU"]})
    if run.dist.is_main:
        progress.write(f"iteration {run.iteration}: mIoU {scores['mIoU']:.4f}  pixel accuracy "
                       f"{scores['pixel_accuracy']:.4f}  (best {run.best:.4f})")  # fmt: skip
    return evaluation


def train(
    config: Config, *, resume: str | Path | bool | None = None, stop_at: int | None = None, overwrite: bool = False
) -> dict:
    """Train as ``config`` says; returns a summary. ``resume``: True (the run's last.pt) or a checkpoint path.

    stop_at: stop (with a checkpoint) after this iteration, e.g. to fit a job's time limit; the schedule still
    runs to ``train.iterations`` when resumed.
    overwrite: delete the run already in ``config.run_dir`` first. Without it (or ``resume``) a directory that
    holds a run is refused with ``ConfigError``, as is one another training process holds.
    """
    info = distributed.init_distributed(config.train.device)
    lock = _claim_run_dir(config.run_dir, info, resume=resume, overwrite=overwrite)
    try:
        with distributed.explain_timeouts():
            return _train(config, resume=resume, stop_at=stop_at)
    finally:
        if lock is not None:
            lock.release()


def _train(config: Config, *, resume: str | Path | bool | None, stop_at: int | None) -> dict:
    """``train``'s loop, run once the run directory is this run's."""
    run = prepare(config, resume=resume)
    t, info, run_dir = config.train, run.dist, config.run_dir
    run_log = RunLog(run, resumed=bool(resume))
    start, end = run.iteration, min(run.iterations, stop_at) if stop_at is not None else run.iterations
    progress = progress_bar(total=run.iterations, initial=start, disable=not info.is_main, desc="train")
    evaluation: Evaluation | None = None
    if resume and _validation_due(run, start) and not run_log.validated:
        # the run stopped after saving this iteration, before its validation finished: it is validated now
        evaluation = _validate_and_keep_best(run, run_log, progress)
    started = time.perf_counter()
    window_loss, window_steps = torch.zeros((), device=run.device), 0  # mean loss since the last log line
    while run.iteration < end:
        lr = run.optimizer.param_groups[0]["lr"]
        with _said_out_of_memory(run, "training"):
            window_loss += train_step(run)
        window_steps, done = window_steps + 1, run.iteration
        progress.update()
        if done % t.log_every == 0 or done == end:
            mean_loss = distributed.all_reduce_mean(window_loss / window_steps).item()
            window_loss, window_steps = torch.zeros((), device=run.device), 0
            if not math.isfinite(mean_loss) and t.amp != "fp16":  # fp16's GradScaler skips such steps by design
                raise _diverged(run, f"the mean loss of the last {t.log_every} iterations is {mean_loss}, not finite")
            images_per_second = (done - start) * config.data.batch_size / max(time.perf_counter() - started, 1e-9)
            progress.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}", img_s=f"{images_per_second:.1f}")
            run_log.write({"iteration": done, "loss": mean_loss, "lr": lr, "images_per_second": images_per_second},
                          {"train/loss": mean_loss, "train/lr": lr})  # fmt: skip

        validating = _validation_due(run, done)
        if done % t.save_every == 0 or done == end or validating:
            _save(run, is_best=False)  # before validating: a crash in validation loses no training
        if validating:
            with _said_out_of_memory(run, "validating"):
                evaluation = _validate_and_keep_best(run, run_log, progress)
    progress.close()
    in_sync = distributed.parameters_in_sync(run.model)
    if info.distributed and info.is_main:
        log.info("parameters identical on all %d ranks: %s", info.world_size, in_sync)
    if info.is_main and end == run.iterations and evaluation is not None:
        write_run_report(run_dir, title=f"atrous training run: {config.name}", class_names=run.val_set.class_names,
                         palette=run.val_set.palette, evaluation=evaluation, training_log=run_log.path,
                         details=config_to_dict(config))  # fmt: skip
    run_log.close()
    distributed.barrier()
    return {
        "run_dir": str(run_dir), "iteration": end, "iterations": run.iterations, "world_size": info.world_size,
        "best_mIoU": run.best if run.best > -math.inf else None,
        "last_val": evaluation.scores if evaluation is not None else None,
        "checkpoint": str(run_dir / "checkpoints" / LAST), "class_names": list(run.train_set.class_names),
        "is_main": info.is_main, "ranks_in_sync": in_sync,
    }  # fmt: skip
