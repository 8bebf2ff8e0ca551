"""The networks the benchmark compares: torchvision's DeepLabV3 (ResNet-50 on the CPU, ResNet-101 on a GPU) and
atrous holding the same weights."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import resnet50, resnet101
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.segmentation.deeplabv3 import DeepLabHead, DeepLabV3

from ..build import build_model
from ..models.segmenter import Segmenter
from ..weights.load import load_weights

RATES = (12, 24, 36)  # torchvision's DeepLabHead, at both output strides


def randomise_batchnorm(model: nn.Module, seed: int = 0, *, images: torch.Tensor | None = None) -> nn.Module:
    """Give every BN random affine parameters and running statistics measured on ``images`` (default: a random
    batch of four 64x64 images).

    Measured (not random) statistics keep activations O(1) as in a trained network, so a 1e-4 tolerance on
    logits is meaningful; random affine parameters make a wrong BN mapping show in the outputs.
    """
    generator = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for bn in bns:
            bn.weight.copy_(torch.rand(bn.num_features, generator=generator) * 0.5 + 0.5)
            bn.bias.copy_(torch.rand(bn.num_features, generator=generator) - 0.5)
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average over the calibration pass
        model.train()
        model(torch.randn(4, 3, 64, 64, generator=generator) if images is None else images)
        for bn in bns:
            bn.momentum = 0.1
    return model.eval()


def torchvision_deeplabv3(output_stride: int, num_classes: int = 21, *, depth: int = 50) -> nn.Module:
    """torchvision's DeepLabV3 on ResNet-``depth`` (50 or 101) as ``deeplabv3_resnet50``/``101`` assemble it
    (dilated layer3 and layer4: output stride 8), or with layer4 alone dilated (output stride 16)."""
    if output_stride not in (8, 16):
        raise ValueError(f"output_stride must be 8 or 16, got {output_stride}")
    if depth not in (50, 101):
        raise ValueError(f"depth must be 50 or 101, got {depth}")
    resnet = {50: resnet50, 101: resnet101}[depth](replace_stride_with_dilation=[False, output_stride == 8, True])
    backbone = IntermediateLayerGetter(resnet, {"layer4": "out"})
    return DeepLabV3(backbone, DeepLabHead(2048, num_classes))


def model_pair(
    output_stride: int, images: torch.Tensor, *, seed: int = 0, depth: int = 50
) -> tuple[nn.Module, Segmenter]:
    """(torchvision's DeepLabV3-ResNet-``depth`` with random weights, BN calibrated on ``images`` (normalised,
    N >= 2), the atrous model loaded with its state dict)."""
    torch.manual_seed(seed)
    theirs = randomise_batchnorm(torchvision_deeplabv3(output_stride, depth=depth), seed, images=images)
    ours = build_model("deeplabv3", backbone=f"resnet{depth}", num_classes=21, output_stride=output_stride,
                       atrous_rates=RATES)  # fmt: skip
    report = load_weights(ours, theirs.state_dict())
    if report.missing or report.unexpected or report.mismatched:
        raise RuntimeError(f"torchvision's weights did not map one to one: {report}")
    return theirs.eval(), ours.eval()
