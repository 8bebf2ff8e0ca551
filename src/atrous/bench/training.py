"""Training speed and memory: one SGD step (forward, loss, backward, update) of torchvision's DeepLabV3-ResNet50 in a
plain PyTorch loop against ``atrous.engine.train_step`` (the step ``atrous train`` runs) on atrous holding the same
weights; peak memory of each in its own process; activation checkpointing.

    python -m atrous.bench.training '{"model": "atrous", "size": 513, "output_stride": 16}'   (one child run)
"""

from __future__ import annotations

import itertools
import json
import sys
import tempfile
from pathlib import Path

import torch

from .. import engine
from ..config import Config, TrainConfig
from ..distributed import DistInfo
from ..losses import SegmentationLoss
from .models import model_pair
from .timing import ab_medians, peak_rss_mib, run_child

BATCH = 2


def random_batch(size: int, seed: int = 0, batch: int = BATCH) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images and 21-class masks with a band of ignored pixels; the same tensors for the same seed."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, size, size, generator=generator)
    masks = torch.randint(0, 21, (batch, size, size), generator=generator)
    masks[:, :8] = 255  # some ignored pixels, as at a padded crop's border
    return images, masks


def calibrated_model_pair(output_stride: int, depth: int = 50):
    """The two models with one set of weights, BN calibrated on a fixed random batch (no image needed to train)."""
    images = torch.randn(2, 3, 97, 97, generator=torch.Generator().manual_seed(1))
    return model_pair(output_stride, images, depth=depth)


def relative_drift(losses: list[float], reference: list[float]) -> float:
    """How far one loss curve parts from another, step by step: the largest relative difference."""
    return max(abs(a - b) / abs(b) for a, b in zip(losses, reference))


def _training_run(model, images: torch.Tensor, masks: torch.Tensor, amp: str = "none", *, forward=None):
    """An ``atrous.engine.TrainingRun`` around ``model`` that trains on one batch forever, with the optimizer and
    constant learning rate of ``_stepper``; channels_last, as ``train.channels_last`` runs it; ``amp`` as
    ``train.amp``; on the device of ``images``. ``forward`` (default: the model) maps images to a
    ``SegmentationOutput``: another library's model runs in the very same loop."""
    device = images.device
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    return engine.TrainingRun(
        config=Config(train=TrainConfig(channels_last=True, amp=amp)), dist=DistInfo(0, 1, 0, device),
        model=model, wrapped=model, forward=forward or model, loss_fn=SegmentationLoss(aux_weight=0.0),
        optimizer=optimizer, scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda iteration: 1.0),
        scaler=torch.amp.GradScaler(device.type, enabled=amp == "fp16"), batches=itertools.repeat((images, masks)),
        iterations=10**9,
    )  # fmt: skip


def engine_stepper(model, images, masks, amp: str = "none", *, forward=None):
    """``atrous.engine.train_step`` per call; returns the losses it has seen (``.item()``: each call waits for its
    step to finish, on a GPU too)."""
    run = _training_run(model, images, masks, amp, forward=forward)
    losses = []

    def step():
        losses.append(engine.train_step(run).item())  # looked up per call: tests count the engine's own

    return step, losses


def _stepper(model, logits_of, images, masks):
    """One plain training step per call (torchvision's side); returns the losses it has seen."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=255)
    losses = []

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(logits_of(images), masks)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())

    return step, losses


def without_dropout(model):
    """Training mode, every dropout layer replaced by an identity: its mask order follows memory layout, so NCHW and
    channels_last runs (and any two runs compared step by step) would otherwise differ by more than arithmetic.
    Replaced, not put in eval mode: ``atrous.engine.train_step`` puts the whole model in training mode each step."""
    model.train()
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, torch.nn.modules.dropout._DropoutNd):
                setattr(parent, name, torch.nn.Identity())
    return model


def compare_training_step(size: int, *, rounds: int) -> dict:
    """Median step seconds of both models (alternating), the ratio and how far their loss curves drift apart."""
    images, masks = random_batch(size)
    theirs, ours = calibrated_model_pair(16)
    for model in (theirs, ours):
        without_dropout(model)
    ours = ours.to(memory_format=torch.channels_last)
    step_theirs, losses_theirs = _stepper(theirs, lambda x: theirs(x)["out"], images, masks)
    step_ours, losses_ours = engine_stepper(ours, images, masks)
    seconds = ab_medians({"torchvision": step_theirs, "atrous": step_ours}, rounds=rounds)
    drift = relative_drift(losses_ours, losses_theirs)
    return {
        "size": size,
        "torchvision_s": seconds["torchvision"],
        "atrous_s": seconds["atrous"],
        "ratio": seconds["torchvision"] / seconds["atrous"],
        "losses_torchvision": losses_theirs,
        "losses_atrous": losses_ours,
        "max_relative_loss_difference": drift,
    }


def compare_bf16_step(size: int, *, rounds: int) -> dict:
    """``train.amp=bf16`` against float32 on atrous's DeepLabV3-R50 OS16 (``atrous.engine.train_step``, both from
    the same weights, alternating): median step seconds, the speed-up and how far the loss curves part."""
    import copy

    images, masks = random_batch(size)
    _, model = calibrated_model_pair(16)
    model = without_dropout(model).to(memory_format=torch.channels_last)
    steppers = {amp: engine_stepper(copy.deepcopy(model), images, masks, amp) for amp in ("none", "bf16")}
    seconds = ab_medians({amp: step for amp, (step, _) in steppers.items()}, rounds=rounds)
    fp32, bf16 = steppers["none"][1], steppers["bf16"][1]
    return {
        "size": size,
        "fp32_s": seconds["none"],
        "bf16_s": seconds["bf16"],
        "ratio": seconds["none"] / seconds["bf16"],
        "max_relative_loss_difference": relative_drift(bf16, fp32),
    }


def peak_memory(model: str, size: int, output_stride: int = 16, *, checkpointing: bool = False) -> dict:
    """Peak RSS (MiB) of a fresh process that builds ``model`` ("torchvision" or "atrous") and trains two steps."""
    return run_child("atrous.bench.training", {"model": model, "size": size, "output_stride": output_stride,
                                               "checkpointing": checkpointing})  # fmt: skip


def checkpointing_comparison(size: int = 513, output_stride: int = 8) -> dict:
    """Peak memory with and without activation checkpointing (atrous, one step each in its own process), and the
    largest difference between the two runs' gradients."""
    with tempfile.TemporaryDirectory() as folder:
        runs = {}
        for checkpointing in (False, True):
            gradients = str(Path(folder) / f"gradients_{checkpointing}.pt")
            runs[checkpointing] = run_child("atrous.bench.training", {
                "model": "atrous", "size": size, "output_stride": output_stride, "checkpointing": checkpointing,
                "steps": 1, "save_gradients": gradients,
            })  # fmt: skip
            runs[checkpointing]["gradients"] = torch.load(gradients)
    plain, checkpointed = runs[False]["gradients"], runs[True]["gradients"]
    difference = max((plain[name] - checkpointed[name]).abs().max().item() for name in plain)
    scale = max(plain[name].abs().max().item() for name in plain)
    return {
        "size": size,
        "output_stride": output_stride,
        "peak_mib": runs[False]["peak_mib"],
        "peak_mib_checkpointing": runs[True]["peak_mib"],
        "saving": 1 - runs[True]["peak_mib"] / runs[False]["peak_mib"],
        "max_gradient_difference": difference,
        "max_gradient": scale,
    }


def _child(task: dict) -> dict:
    theirs, ours = calibrated_model_pair(task["output_stride"])
    if task["model"] == "torchvision":
        model, logits_of = theirs.train(), lambda x: theirs(x)["out"]
        del ours
    else:
        del theirs
        model = ours.train().to(memory_format=torch.channels_last)
        model.backbone.activation_checkpointing = task.get("checkpointing", False)
        logits_of = lambda x: ours(x.contiguous(memory_format=torch.channels_last)).logits
    images, masks = random_batch(task["size"])
    torch.manual_seed(0)
    step, losses = _stepper(model, logits_of, images, masks)
    before = peak_rss_mib()
    for _ in range(task.get("steps", 2)):
        if task.get("save_gradients"):  # gradients of the first step, before any update
            model.zero_grad(set_to_none=True)
            torch.nn.CrossEntropyLoss(ignore_index=255)(logits_of(images), masks).backward()
            torch.save({n: p.grad for n, p in model.named_parameters() if p.grad is not None}, task["save_gradients"])
        else:
            step()
    return {"peak_mib": peak_rss_mib(), "peak_before_training_mib": before, "losses": losses}


if __name__ == "__main__":
    print(json.dumps(_child(json.loads(sys.argv[1]))))
