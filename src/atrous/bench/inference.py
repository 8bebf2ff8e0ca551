"""Inference speed: torchvision's eager NCHW DeepLabV3-ResNet50 against every atrous runtime, same weights, same
513x513 image; GFLOP/s against the machine's convolution ceiling; logits difference and bf16 agreement."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch

from ..build import build_model
from ..data.synthetic import SynthSpec, render_sample
from ..model_table import count_flops
from ..models.normalization import IMAGENET_RGB
from ..runtime import CALIBRATED_RUNTIMES, prepare_inference
from .models import RATES, model_pair, randomise_batchnorm
from .timing import ab_medians

BASELINE = "torchvision eager NCHW"


@dataclass
class Row:
    name: str
    seconds: float
    ratio: float  # baseline seconds / these seconds
    gflops_per_s: float
    ceiling_share: float
    accuracy: str  # max |logits - baseline's logits|
    setup_seconds: float = 0.0  # compile / export / session creation, paid once


def benchmark_image(size: int = 513) -> torch.Tensor:
    """A synthetic scene (shapes and textures, not noise) as a uint8 (1, 3, size, size) batch; BN statistics are
    calibrated on it, so activations and logits have a trained network's scale."""
    image, _ = render_sample(SynthSpec(seed=11, size=size), 0)
    return torch.from_numpy(image).permute(2, 0, 1)[None].contiguous()


def _prepared(model, runtime: str, images: torch.Tensor):
    start = time.perf_counter()
    calibration = images if runtime in CALIBRATED_RUNTIMES else None  # the benchmark image: what int8 graphs see
    fast = prepare_inference(copy.deepcopy(model), runtime, device=torch.device("cpu"), calibration=calibration)
    fast(images)  # compile / export happen on the first call or before it
    return fast, time.perf_counter() - start


def compare_deeplabv3(output_stride: int, *, ceiling: float, rounds: int, runtimes: tuple[str, ...]) -> list[Row]:
    """torchvision's DeepLabV3-ResNet50 (eager, NCHW) against atrous holding its weights, at ``output_stride``."""
    images = IMAGENET_RGB(benchmark_image())
    theirs, ours = model_pair(output_stride, torch.cat([images, images.flip(-1)]))
    _, flops = count_flops(513, name="deeplabv3", backbone="resnet50", output_stride=output_stride,
                           atrous_rates=RATES, num_classes=21)  # fmt: skip
    baseline = lambda: _no_grad_call(theirs, images)["out"]
    return _compare(BASELINE, baseline, ours, images, runtimes, flops=flops, ceiling=ceiling, rounds=rounds)


def compare_deeplabv3plus(*, ceiling: float, rounds: int, runtimes: tuple[str, ...]) -> list[Row]:
    """DeepLabV3+ ResNet-50 at output stride 16 (paper rates 6, 12, 18): atrous eager NCHW against the runtimes."""
    torch.manual_seed(0)
    images = IMAGENET_RGB(benchmark_image())
    model = build_model("deeplabv3plus", backbone="resnet50", num_classes=21, output_stride=16)
    model = randomise_batchnorm(model, images=torch.cat([images, images.flip(-1)]))
    _, flops = count_flops(513, name="deeplabv3plus", backbone="resnet50", output_stride=16, num_classes=21)
    baseline = lambda: _no_grad_call(model, images).logits
    return _compare("atrous eager NCHW", baseline, model, images, runtimes, flops=flops, ceiling=ceiling, rounds=rounds)


def _compare(baseline_name, baseline, model, images, runtimes, *, flops, ceiling, rounds) -> list[Row]:
    """Time ``baseline`` and ``model`` behind each runtime side by side; compare every output with the baseline's."""
    reference = baseline()
    candidates, setup, outputs = {baseline_name: baseline}, {}, {}
    for runtime in runtimes:
        fast, setup[runtime] = _prepared(model, runtime, images)
        outputs[runtime] = fast(images).logits
        candidates[f"atrous {runtime}"] = lambda fast=fast: fast(images)
    seconds = ab_medians(candidates, rounds=rounds)
    rows = []
    for name, value in seconds.items():
        runtime = name.removeprefix("atrous ")
        accuracy = "reference" if name == baseline_name else (
            f"max abs logit diff {(outputs[runtime] - reference).abs().max().item():.1e}"
        )
        gflops = flops / value / 1e9
        rows.append(Row(name, value, seconds[baseline_name] / value, gflops, gflops / ceiling, accuracy,
                        setup.get(runtime, 0.0)))  # fmt: skip
    return rows


def _no_grad_call(model, images):
    with torch.no_grad():
        return model(images)
