"""A 3x3 atrous convolution that skips the work its zero padding makes pointless.

At DeepLab's rates the dilation is often as large as the feature map (rate 36 on the 33x33 map of a 513 image at
output stride 16, rates 24 and 36 on the 21x21 map of a 321 crop): every off-centre tap then reads only padding,
and the convolution is exactly a 1x1 convolution with the kernel's centre. A plain ``Conv2d`` still runs all
nine taps, forward and backward. ``AtrousConv2d`` trims the kernel to the taps that can touch the map.

In bfloat16/float16 on the CPU, oneDNN's AMX kernels for large dilations are 10-30x slower than its plain
convolutions (measured: 2048->256 channels on 65x65, rate 36, 316 ms against 9 ms here), so there the layer runs
as one matrix product per tap over the region where that tap reads real pixels, accumulated in float32.

The state dict is ``Conv2d``'s. Traced or exported graphs (ONNX, TorchScript, ``torch.export``) get the plain
convolution, since they must stay valid for every input size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_REDUCED_PRECISION = (torch.bfloat16, torch.float16)


def _building_a_graph() -> bool:
    return (
        torch.jit.is_scripting()
        or torch.jit.is_tracing()
        or torch.onnx.is_in_onnx_export()
        or torch.compiler.is_exporting()
    )


def _live_taps(dilation: int, size: int) -> range:
    """Kernel indices (of 0, 1, 2) whose offset (index - 1) * dilation lands inside a map of ``size``."""
    return range(1, 2) if dilation >= size else range(3)


class AtrousConv2d(nn.Conv2d):
    """``nn.Conv2d(in, out, 3, padding=dilation, dilation=dilation)`` that skips taps lying wholly in the padding."""

    def __init__(self, in_channels: int, out_channels: int, *, dilation: int, groups: int = 1, bias: bool = False):
        super().__init__(
            in_channels, out_channels, 3, padding=dilation, dilation=dilation, groups=groups, bias=bias
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _building_a_graph():
            return super().forward(x)
        (dilation_h, dilation_w), (height, width) = self.dilation, x.shape[-2:]
        rows, cols = _live_taps(dilation_h, height), _live_taps(dilation_w, width)
        if x.dtype in _REDUCED_PRECISION and x.device.type == "cpu" and self.groups == 1:
            return self._taps_as_matmuls(x, rows, cols)
        if len(rows) == 3 and len(cols) == 3:
            return super().forward(x)
        weight = self.weight[:, :, rows.start : rows.stop, cols.start : cols.stop]
        padding = (dilation_h if len(rows) == 3 else 0, dilation_w if len(cols) == 3 else 0)
        return F.conv2d(x, weight, self.bias, 1, padding, self.dilation, self.groups)

    def _taps_as_matmuls(self, x: torch.Tensor, rows: range, cols: range) -> torch.Tensor:
        """Sum over live taps of (pixels x in_channels) @ (in_channels x out_channels), each over the output
        region where the tap reads inside the map; float32 accumulation, result in ``x``'s dtype."""
        height, width = x.shape[-2:]
        pixels = x.permute(0, 2, 3, 1)  # (N, H, W, C): a view when x is channels_last
        taps = self.weight.permute(2, 3, 1, 0)  # (3, 3, C_in, C_out)
        out = torch.matmul(pixels, taps[1, 1]).float()
        for i in rows:
            dy = (i - 1) * self.dilation[0]
            for j in cols:
                dx = (j - 1) * self.dilation[1]
                if dy == 0 and dx == 0:
                    continue
                top, bottom = max(0, -dy), height - max(0, dy)
                left, right = max(0, -dx), width - max(0, dx)
                out[:, top:bottom, left:right] += pixels[:, top + dy : bottom + dy, left + dx : right + dx] @ taps[i, j]
        if self.bias is not None:
            out += self.bias
        return out.to(x.dtype).permute(0, 3, 1, 2)
