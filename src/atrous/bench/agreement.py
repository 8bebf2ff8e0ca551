"""How often the bf16 runtime predicts the same class as float32, measured on a network that has been trained.

A randomly initialised network is chaotic: tiny rounding differences flip its near-tied decisions, so its
agreement says nothing about a trained model's. A small DeepLabV3+ is fitted to synthetic images for a few
seconds instead, and agreement is counted on held-out images of the same kind.
"""

from __future__ import annotations

import torch

from .. import quantize
from ..build import build_model
from ..data.synthetic import SynthSpec, render_sample
from ..losses import SegmentationLoss
from ..models.segmenter import Segmenter
from ..runtime import FLOAT_RUNTIME_OF, prepare_inference


def fit_synthetic_model(
    *, iterations: int = 120, train: int = 4, held_out: int = 8, size: int = 64, seed: int = 5
) -> tuple[Segmenter, torch.Tensor]:
    """(DeepLabV3+ ResNet-18 fitted to ``train`` synthetic images, ``held_out`` other normalised images).

    Rates (2, 4, 6) on the 4x4 map at output stride 16 keep one atrous branch with partial taps and two whose
    off-centre taps fall wholly in the padding: both code paths of ``AtrousConv2d`` are in the measurement.
    """
    torch.manual_seed(seed)
    spec = SynthSpec(seed=seed, size=size)
    samples = [render_sample(spec, i) for i in range(train + held_out)]
    model = build_model("deeplabv3plus", backbone="resnet18", num_classes=7, atrous_rates=(2, 4, 6))
    images = torch.stack([model.normalization(torch.from_numpy(image).permute(2, 0, 1)) for image, _ in samples])
    masks = torch.stack([torch.from_numpy(mask).long() for _, mask in samples])
    loss_fn = SegmentationLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(iterations):
        loss, _ = loss_fn(model(images[:train]), masks[:train])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval(), images[train:]


def bf16_agreement(model: Segmenter, images: torch.Tensor) -> float:
    """Fraction of pixels whose bf16-runtime class equals the float32 eager class."""
    with torch.no_grad():
        expected = model(images).logits.argmax(dim=1)
    got = prepare_inference(model, "bf16", device=torch.device("cpu"))(images).logits.argmax(dim=1)
    return (got == expected).double().mean().item()


def int8_agreement(model: Segmenter, images: torch.Tensor, runtime: str = "int8") -> float:
    """Fraction of pixels of the second half of ``images`` whose int8 class (``runtime``: ONNX Runtime's or
    OpenVINO's, calibrated on the first half) equals the class of the same runtime's fp32 graph."""
    half = max(1, images.shape[0] // 2)
    calibration, counted = images[:half], images[half:]
    cpu = torch.device("cpu")
    fp32 = prepare_inference(model, FLOAT_RUNTIME_OF[runtime], device=cpu)
    int8 = prepare_inference(model, runtime, device=cpu, calibration=calibration)
    return quantize.int8_agreement(int8, fp32, counted)  # the figure atrous eval and export --int8 print
