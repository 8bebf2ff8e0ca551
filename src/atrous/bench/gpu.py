"""The GPU section of ``atrous bench``: training images/s and peak memory of DeepLabV3-ResNet101 at output stride 16
(513 crop, batch 8, AMP fp16, channels_last), atrous against torchvision's model holding the same weights in the
very same training loop (``atrous.engine.train_step``); and inference latency in fp16 at batch 1 and 8.

Every measure takes its device and precision as arguments, so the section's code is tested on the CPU (bf16,
small crops) on machines that have no GPU; the bench runs it only where CUDA is present.

    python -m atrous.bench.gpu '{"model": "atrous", "device": "cuda", ...}'   (one child run: peak memory)
"""

from __future__ import annotations

import copy
import json
import sys

import torch

from ..models.segmenter import SegmentationOutput
from ..runtime import HALF_PRECISIONS, prepare_inference
from .timing import ab_medians, peak_rss_mib, run_child
from .training import calibrated_model_pair, engine_stepper, random_batch, relative_drift, without_dropout

DEPTH, OUTPUT_STRIDE, CROP, BATCH = 101, 16, 513, 8
LATENCY_BATCHES = (1, 8)
# The precision each device trains and infers in: fp16 is a GPU's; a CPU has bf16 (and it keeps the section's test
# on the CPU honest: the loop, the loss scaling off, the casts).
AMP = {"cuda": "fp16", "cpu": "bf16"}


def model_pair_on(depth: int, device: torch.device):
    """(torchvision, atrous) with one set of weights, BN calibrated on a fixed batch, on ``device``."""
    theirs, ours = calibrated_model_pair(OUTPUT_STRIDE, depth)
    return theirs.to(device), ours.to(device)


def _torchvision_forward(model):
    """torchvision's model as the training loop expects a model: images -> ``SegmentationOutput``."""
    return lambda images: SegmentationOutput(model(images)["out"], None)


def _training_batch(size: int, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    images, masks = random_batch(size, batch=batch)
    return images.to(device), masks.to(device)


def _prepared_for_training(model, device: torch.device):
    return without_dropout(model).to(device, memory_format=torch.channels_last)


def compare_training(
    device: torch.device, *, depth: int = DEPTH, size: int = CROP, batch: int = BATCH, rounds: int = 5
) -> dict:  # fmt: skip
    """Median seconds of one training step of each model (alternating, the same batch, SGD, AMP in the device's
    precision, channels_last), images/s, the speed-up and how far the two loss curves part."""
    amp = AMP[device.type]
    images, masks = _training_batch(size, batch, device)
    theirs, ours = (_prepared_for_training(model, device) for model in model_pair_on(depth, device))
    steppers = {
        "torchvision": engine_stepper(theirs, images, masks, amp, forward=_torchvision_forward(theirs)),
        "atrous": engine_stepper(ours, images, masks, amp),
    }
    seconds = ab_medians({name: step for name, (step, _) in steppers.items()}, rounds=rounds)
    losses = {name: seen for name, (_, seen) in steppers.items()}
    return {
        "amp": amp,
        "seconds": seconds,
        "images_per_s": {name: batch / value for name, value in seconds.items()},
        "ratio": seconds["torchvision"] / seconds["atrous"],
        "losses": losses,
        "max_relative_loss_difference": relative_drift(losses["atrous"], losses["torchvision"]),
    }


def peak_training_memory(
    model: str, device: torch.device, *, depth: int = DEPTH, size: int = CROP, batch: int = BATCH, steps: int = 3
) -> float:  # fmt: skip
    """Peak memory (MiB) of a fresh process that trains only ``model`` ("torchvision" or "atrous") ``steps`` steps:
    on a GPU the most PyTorch held allocated there (weights, gradients, momentum, activations), on a CPU the
    process's peak RSS."""
    task = {"model": model, "device": str(device), "depth": depth, "size": size, "batch": batch, "steps": steps}
    return run_child("atrous.bench.gpu", task)["peak_mib"]


def synchronized(run, device: torch.device):
    """``run``, returning only once the device has finished its work (a GPU call returns as soon as it is queued)."""

    def call():
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return call


def torchvision_in_half(model, dtype: torch.dtype):
    """torchvision's model converted by hand (a copy, ``.to(dtype)``, channels_last) as float32 images -> float32
    logits: what the bench sets atrous's half-precision runtime against."""
    half = copy.deepcopy(model).to(dtype=dtype, memory_format=torch.channels_last).eval()

    def logits(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return half(images.to(dtype).contiguous(memory_format=torch.channels_last))["out"].float()

    return logits


def compare_inference(
    device: torch.device, *, depth: int = DEPTH, size: int = CROP, batches=LATENCY_BATCHES, rounds: int = 5
) -> list[dict]:  # fmt: skip
    """Latency of one forward pass in the device's reduced precision at each batch size: torchvision's model
    converted by hand (``.to(dtype)``, channels_last) against atrous's runtime of that name, both from float32
    images to float32 logits; how many pixels the two predict alike."""
    runtime = AMP[device.type]
    dtype = HALF_PRECISIONS[runtime]
    theirs, ours = model_pair_on(depth, device)
    theirs = torchvision_in_half(theirs, dtype)
    ours = prepare_inference(ours, runtime, device=device)
    rows = []
    for batch in batches:
        images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch)).to(device)

        def torchvision(images=images):
            return theirs(images)

        def atrous(images=images):
            return ours(images).logits

        # Three warm-up calls: atrous's runtime captures a CUDA graph for a shape on its second call.
        seconds = ab_medians({"torchvision": synchronized(torchvision, device),
                              "atrous": synchronized(atrous, device)}, rounds=rounds, warmup=3)  # fmt: skip
        agreement = (atrous().argmax(1) == torchvision().argmax(1)).double().mean().item()
        rows.append({"batch": batch, "runtime": runtime, "ms": {name: 1000 * s for name, s in seconds.items()},
                     "ratio": seconds["torchvision"] / seconds["atrous"], "agreement": agreement})  # fmt: skip
    return rows


def _child(task: dict) -> dict:
    device = torch.device(task["device"])
    theirs, ours = model_pair_on(task["depth"], torch.device("cpu"))  # built on the CPU: only the trained one moves
    keep = theirs if task["model"] == "torchvision" else ours
    del theirs, ours
    model = _prepared_for_training(keep, device)
    forward = _torchvision_forward(model) if task["model"] == "torchvision" else None
    images, masks = _training_batch(task["size"], task["batch"], device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step, losses = engine_stepper(model, images, masks, AMP[device.type], forward=forward)
    for _ in range(task["steps"]):
        step()
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else peak_rss_mib()
    return {"peak_mib": peak, "losses": losses}


if __name__ == "__main__":
    print(json.dumps(_child(json.loads(sys.argv[1]))))
