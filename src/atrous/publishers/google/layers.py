"""The TensorFlow conventions Google's networks compute with that PyTorch's layers do not: 'SAME' padding of a
strided layer (split bottom/right-heavy, and depending on the input's size), a BatchNorm epsilon of 1e-3 in the
backbones (TensorFlow-slim's default), slim's hard sigmoid constant, and the [-1, 1] input of Google's models."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ...models.normalization import InputNormalization

SE_GATE = 0.16667  # slim's and DeepLab's hard sigmoid: relu6(x + 3) * 0.16667 (not 1/6)
BACKBONE_BN_EPS = 1e-3  # slim's batch_norm default, which Google's Xception and MobileNets keep
# Google's Xception, MobileNet and ResNet-beta models take RGB scaled to [-1, 1] (``x / 127.5 - 1``): its mean pixel,
# what it pads crops with, becomes exactly 0.
GOOGLE_RGB = InputNormalization(name="google_rgb", mean=(127.5,) * 3, std=(127.5,) * 3, channel_order="RGB")


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow's 'SAME' padding along one axis: (before, after), for a kernel that reaches at least its stride
    (every strided layer here). The output has ceil(size / stride) positions; an odd total puts the extra pixel
    after (an even input at stride 2 and kernel 3: 0 before, 1 after). Integer arithmetic only, no ``max`` or
    ``math.ceil``: an exported graph computes it from each input's size instead of freezing the example's."""
    reach = (kernel - 1) * dilation + 1
    total = ((size + stride - 1) // stride - 1) * stride + reach - size  # >= reach - stride >= 0
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """``nn.Conv2d`` padded as TensorFlow's ``padding='SAME'``: at stride 1 a fixed symmetric padding (the kernel's
    reach is odd), at stride 2 computed from each input's size (none for a 1x1 kernel, which needs none)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1, dilation: int = 1,
                 groups: int = 1, bias: bool = False):  # fmt: skip
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, dilation=dilation, groups=groups,
                         bias=bias, padding=(kernel_size - 1) // 2 * dilation if stride == 1 else 0)  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride[0] == 1 or self.kernel_size[0] == 1:
            return super().forward(x)
        top, bottom = same_padding(x.shape[-2], self.kernel_size[0], self.stride[0], self.dilation[0])
        left, right = same_padding(x.shape[-1], self.kernel_size[1], self.stride[1], self.dilation[1])
        return super().forward(F.pad(x, (left, right, top, bottom)))


def same_max_pool(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """TensorFlow's ``max_pool2d(..., padding='SAME')``: padded positions never win (they count as -inf)."""
    top, bottom = same_padding(x.shape[-2], kernel, stride)
    left, right = same_padding(x.shape[-1], kernel, stride)
    return F.max_pool2d(F.pad(x, (left, right, top, bottom), value=-math.inf), kernel, stride)


def bn(channels: int, eps: float = BACKBONE_BN_EPS) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=eps)
