"""The networks the benchmark compares: torchvision's DeepLabV3-ResNet50 and atrous holding the same weights."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import resnet50
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.segmentation import deeplabv3_resnet50
from torchvision.models.segmentation.deeplabv3 import DeepLabHead, DeepLabV3

from ..models import Segmenter, build_model
from ..models.weights import load_weights

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


def torchvision_deeplabv3_resnet50(output_stride: int, num_classes: int = 21) -> nn.Module:
    """torchvision's ``deeplabv3_resnet50`` (output stride 8), or the same classes assembled at output stride 16."""
    if output_stride == 8:
        return deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False)
    if output_stride != 16:
        raise ValueError(f"output_stride must be 8 or 16, got {output_stride}")
    backbone = IntermediateLayerGetter(resnet50(replace_stride_with_dilation=[False, False, True]), {"layer4": "out"})
    return DeepLabV3(backbone, DeepLabHead(2048, num_classes))


def model_pair(output_stride: int, images: torch.Tensor, *, seed: int = 0) -> tuple[nn.Module, Segmenter]:
    """(torchvision's model with random weights, BN calibrated on ``images`` (normalised, N >= 2), the atrous
    model loaded with its state dict)."""
    torch.manual_seed(seed)
    theirs = randomise_batchnorm(torchvision_deeplabv3_resnet50(output_stride), seed, images=images)
    ours = build_model("deeplabv3", backbone="resnet50", num_classes=21, output_stride=output_stride, atrous_rates=RATES)
    report = load_weights(ours, theirs.state_dict())
    if report.missing or report.unexpected or report.mismatched:
        raise RuntimeError(f"torchvision's weights did not map one to one: {report}")
    return theirs.eval(), ours.eval()
