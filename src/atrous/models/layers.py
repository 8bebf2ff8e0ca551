"""The layers DeepLab networks are made of: ``AtrousConv2d`` (below), conv + BN + ReLU at any dilation, the
atrous-separable variants (BN after each of depthwise and pointwise, or one BN after the pair), ASPP and its
image-pooling branch.

A 3x3 atrous convolution that skips the work its zero padding makes pointless.

At DeepLab's rates the dilation is often as large as the feature map (rate 36 on the 33x33 map of a 513 image at
output stride 16, rates 24 and 36 on the 21x21 map of a 321 crop): every off-centre tap then reads only padding,
and the convolution is exactly a 1x1 convolution with the kernel's centre. A plain ``Conv2d`` still runs all
nine taps, forward and backward. ``AtrousConv2d`` trims the kernel to the taps that can touch the map.

In bfloat16/float16 on a CPU with AMX (a bf16 model, or float32 under autocast, training or not), oneDNN's kernels
for large dilations are 2-30x slower than its plain convolutions, forward and backward (measured: 2048->256
channels on 65x65, rate 36, 316 ms against 9 ms forward), so there the layer is matrix products
(``_ReducedPrecisionAtrousConv``). Without AMX (AMD Zen 4: AVX512_BF16 only) oneDNN's convolutions are as fast
or faster, and the layer leaves the work to them (``atrous.cpu.fast_reduced_precision_matmuls``).

A backbone's dilated stages get the same layer (``adopt_dilated_convs``, from ``build_model``) with
``always_by_taps=False``: at a backbone's small rates oneDNN's kernels are as fast, so those layers skip dead taps
but go by taps only where half the kernel's work or more reads padding (rate 2 on a 4x4 map).

The state dict is ``Conv2d``'s. Traced or exported graphs (ONNX, TorchScript, ``torch.export``) get the plain
convolution, since they must stay valid for every input size; so do meta tensors, on which FLOPs are counted
(the conventional count, torchvision's included, is the full convolution's).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .. import cpu

_REDUCED_PRECISION = (torch.bfloat16, torch.float16)


def building_a_graph() -> bool:
    """Whether torch is scripting, tracing or exporting: a size-dependent choice made in Python then freezes the
    example's."""
    return (
        torch.jit.is_scripting()
        or torch.jit.is_tracing()
        or torch.onnx.is_in_onnx_export()
        or torch.compiler.is_exporting()
    )


def _live_taps(dilation: int, size: int) -> range:
    """Kernel indices (of 0, 1, 2) whose offset (index - 1) * dilation lands inside a map of ``size``."""
    return range(1, 2) if dilation >= size else range(3)


def _trimmed(weight: torch.Tensor, dilation, rows: range, cols: range):
    """The kernel's live taps and the padding that keeps the output the input's size."""
    padding = (dilation[0] if len(rows) == 3 else 0, dilation[1] if len(cols) == 3 else 0)
    return weight[:, :, rows.start : rows.stop, cols.start : cols.stop], padding


def _tap_regions(height: int, width: int, dilation, rows: range, cols: range):
    """(i, j, output rows, output cols, input rows, input cols) for every live tap: where it reads real pixels."""
    for i in rows:
        dy = (i - 1) * dilation[0]
        for j in cols:
            dx = (j - 1) * dilation[1]
            top, bottom, left, right = max(0, -dy), height - max(0, dy), max(0, -dx), width - max(0, dx)
            yield i, j, slice(top, bottom), slice(left, right), slice(top + dy, bottom + dy), slice(left + dx, right + dx)


class _TrainingAtrousConv(torch.autograd.Function):
    """oneDNN forward and input gradient; the weight gradient as one matrix product per live tap over the region
    where the tap reads real pixels. oneDNN's weight-gradient kernels for large dilations are 2-7x slower than
    that (measured here: 2048->256 channels, 33x33, rate 24, batch 2: 150 ms against 22 ms)."""

    @staticmethod
    def forward(ctx, x, weight, bias, dilation, rows, cols):
        live, padding = _trimmed(weight, dilation, rows, cols)
        ctx.save_for_backward(x, weight)
        ctx.geometry = (dilation, rows, cols, padding, bias is not None)
        return F.conv2d(x, live, bias, 1, padding, dilation)

    @staticmethod
    def backward(ctx, grad_output):
        x, weight = ctx.saved_tensors
        dilation, rows, cols, padding, has_bias = ctx.geometry
        live, _ = _trimmed(weight, dilation, rows, cols)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad_output, x, live, None, [1, 1], list(padding), list(dilation), False, [0, 0], 1, [True, False, False]
            )[0]
        pixels, grads = x.permute(0, 2, 3, 1), grad_output.permute(0, 2, 3, 1)  # (N, H, W, C): views in channels_last
        regions = _tap_regions(*x.shape[-2:], dilation, rows, cols)
        grad_weight = _weight_gradient(pixels, grads, regions, weight)
        grad_bias = grad_output.sum(dim=(0, 2, 3)) if has_bias else None
        return grad_x, grad_weight, grad_bias, None, None, None


class _ReducedPrecisionAtrousConv(torch.autograd.Function):
    """The convolution as matrix products in bf16/fp16, each accumulating in float32 inside the kernel.

    Forward: one product per live tap over the region where the tap reads real pixels, summed in float32.
    Input gradient: the output gradient's taps side by side (N*H*W, taps*C_out), zero where a tap reads padding,
    times the taps stacked (taps*C_out, C_in) -- one product, because C_out (256 in ASPP) is the narrow side, where
    summing per-tap products would add C_in-wide (2048) float32 maps once per tap. Weight gradient: one product per
    tap over its region, as for float32 (``_TrainingAtrousConv``).

    Each product runs on whole, contiguous matrices: a matmul on a strided region of a channels_last map takes a
    slow batched path (measured: 17 ms against 0.3 ms to copy the region + 1.4 ms for the product)."""

    @staticmethod
    def forward(ctx, x, weight, bias, dilation, rows, cols):
        regions = list(_tap_regions(*x.shape[-2:], dilation, rows, cols))
        taps = torch.stack([weight[:, :, i, j] for i, j, *_ in regions]).to(x.dtype)  # (taps, C_out, C_in)
        pixels = x.permute(0, 2, 3, 1)  # (N, H, W, C_in): a view when x is channels_last
        centre = next(tap for tap, (i, j, *_) in enumerate(regions) if (i, j) == (1, 1))  # reads the whole map
        out = (_rows_of(pixels) @ taps[centre].t()).float().view(*pixels.shape[:-1], -1)
        for tap, (_, _, out_rows, out_cols, in_rows, in_cols) in enumerate(regions):
            if tap != centre:
                region = pixels[:, in_rows, in_cols]
                out[:, out_rows, out_cols] += (_rows_of(region) @ taps[tap].t()).view(*region.shape[:-1], -1)
        if bias is not None:
            out += bias
        ctx.save_for_backward(x, taps, weight)
        ctx.geometry = (regions, bias is not None)
        return out.to(x.dtype).permute(0, 3, 1, 2)

    @staticmethod
    def backward(ctx, grad_output):
        x, taps, weight = ctx.saved_tensors
        regions, has_bias = ctx.geometry
        grads = grad_output.to(x.dtype).permute(0, 2, 3, 1)  # (N, H, W, C_out)
        pixels = x.permute(0, 2, 3, 1)
        grad_x = None
        if ctx.needs_input_grad[0]:
            shifted = grads.new_zeros(*grads.shape[:-1], len(regions), grads.shape[-1])  # what each tap sends back
            for tap, (_, _, out_rows, out_cols, in_rows, in_cols) in enumerate(regions):
                shifted[:, in_rows, in_cols, tap] = grads[:, out_rows, out_cols]
            grad_x = shifted.view(-1, taps.shape[0] * taps.shape[1]) @ taps.view(-1, taps.shape[2])
            grad_x = grad_x.view(pixels.shape).permute(0, 3, 1, 2)
        grad_weight = None
        if ctx.needs_input_grad[1]:
            grad_weight = _weight_gradient(pixels, grads, regions, weight)
        grad_bias = grad_output.float().sum(dim=(0, 2, 3)) if has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_weight, grad_bias, None, None, None


def _weight_gradient(pixels, grads, regions, weight: torch.Tensor) -> torch.Tensor:
    """The kernel's gradient, one matrix product per live tap over the region where it reads real pixels:
    (pixels x C_out) transposed @ (pixels x C_in); taps outside ``regions`` (trimmed) get zero.

    In the weight's own layout: autograd copies a gradient whose strides differ from its parameter's into them, and
    in a channels_last kernel each tap's (C_out, C_in) slice is written row by row rather than one float in nine
    (layer4 of the demo, two 512->512 kernels at 4x4: the tap writes took 3.2 ms a step, 0.6 ms in this layout)."""
    grad_weight = torch.zeros_like(weight)
    for i, j, out_rows, out_cols, in_rows, in_cols in regions:
        grad_weight[:, :, i, j] = _rows_of(grads[:, out_rows, out_cols]).t() @ _rows_of(pixels[:, in_rows, in_cols])
    return grad_weight


def _rows_of(pixels: torch.Tensor) -> torch.Tensor:
    """(..., C) -> (pixels, C), contiguous: a copy only for a strided region."""
    return pixels.reshape(-1, pixels.shape[-1])


def _reduced_precision(x: torch.Tensor) -> torch.dtype | None:
    """The bf16/fp16 dtype this CPU convolution runs in: the input's, or autocast's for a float32 input."""
    if x.device.type != "cpu":
        return None
    if x.dtype in _REDUCED_PRECISION:
        return x.dtype
    if torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") in _REDUCED_PRECISION:
        return torch.get_autocast_dtype("cpu")
    return None


Dilation = int | tuple[int, int]  # one for both axes, or (height, width)


class AtrousConv2d(nn.Conv2d):
    """``nn.Conv2d(in, out, 3, padding=dilation, dilation=dilation)`` that skips taps lying wholly in the padding."""

    def __init__(
        self, in_channels: int, out_channels: int, *, dilation: Dilation, groups: int = 1, bias: bool = False,
        always_by_taps: bool = True,
    ):  # fmt: skip
        super().__init__(
            in_channels, out_channels, 3, padding=dilation, dilation=dilation, groups=groups, bias=bias
        )
        # The tap-wise paths (float32 training; bf16/fp16 on AMX) pay at a head's large rates. At a backbone's
        # rates (2, 4) oneDNN's kernels are as fast or faster (bf16 inference at OS8: the products 14% slower;
        # float32 training 0.9-1.0x at 6x6-65x65), except where half the kernel's work or more reads padding
        # (rate 2 on the 4x4 map of a 64 px crop: 2.25x faster by taps): ``always_by_taps=False`` limits them to that.
        self.always_by_taps = always_by_taps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if building_a_graph() or x.device.type == "meta":  # meta: FLOP counts quote the nominal convolution
            return super().forward(x)
        (dilation_h, dilation_w), (height, width) = self.dilation, x.shape[-2:]
        rows, cols = _live_taps(dilation_h, height), _live_taps(dilation_w, width)
        by_taps = self.groups == 1 and (self.always_by_taps or _live_share(self.dilation, height, width) <= 0.5)
        dtype = _reduced_precision(x)
        if by_taps and dtype is not None and cpu.fast_reduced_precision_matmuls(dtype):
            return _ReducedPrecisionAtrousConv.apply(x.to(dtype), self.weight, self.bias, self.dilation, rows, cols)
        if by_taps and self._cpu_training_step(x):
            return _TrainingAtrousConv.apply(x, self.weight, self.bias, self.dilation, rows, cols)
        if len(rows) == 3 and len(cols) == 3:
            return super().forward(x)
        weight, padding = _trimmed(self.weight, self.dilation, rows, cols)
        return F.conv2d(x, weight, self.bias, 1, padding, self.dilation, self.groups)

    def _cpu_training_step(self, x: torch.Tensor) -> bool:
        """Float32 training on the CPU. Under autocast the convolution is autocast's (oneDNN in bf16/fp16), unless
        the matrix-product path took it before this."""
        return (
            x.device.type == "cpu"
            and torch.is_grad_enabled()
            and self.weight.requires_grad
            and not torch.is_autocast_enabled("cpu")
        )


def _live_share(dilation, height: int, width: int) -> float:
    """The share of a full 3x3 convolution's multiply-adds that read real pixels rather than the zero padding."""

    def along(step: int, size: int) -> float:
        return sum(max(0, size - abs(offset * step)) for offset in (-1, 0, 1)) / (3 * size)

    return along(dilation[0], height) * along(dilation[1], width)


def _is_plain_atrous(conv: nn.Module) -> bool:
    """A plain ``nn.Conv2d`` that ``AtrousConv2d`` computes exactly: 3x3, stride 1, dilated, padded by its dilation
    with zeros (so the output keeps the input's size)."""
    return (
        type(conv) is nn.Conv2d
        and conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and conv.dilation[0] == conv.dilation[1] > 1
        and conv.padding == conv.dilation
        and conv.padding_mode == "zeros"
    )


def adopt_dilated_convs(module: nn.Module) -> nn.Module:
    """Make every dilated 3x3 ``nn.Conv2d`` inside ``module`` (a backbone's dilated stages) an ``AtrousConv2d``
    holding the very same parameters, in place; returns ``module``. The state dict is unchanged. Such a layer
    skips the taps that read only padding (exactly), and where half its work or more reads padding it runs by taps
    (``always_by_taps=False``): a 512->512 rate-2 convolution on a 4x4 map (layer4 of the demo's 64 px crops),
    float32 forward + backward on the CPU, took 27 ms as ``nn.Conv2d`` and 12 ms by taps."""
    for name, child in module.named_children():
        if _is_plain_atrous(child):
            with torch.device("meta"):  # no throw-away initialisation: the parameters are the old layer's
                atrous = AtrousConv2d(child.in_channels, child.out_channels, dilation=child.dilation[0],
                                      groups=child.groups, bias=child.bias is not None,
                                      always_by_taps=False)  # fmt: skip
            atrous.weight, atrous.bias = child.weight, child.bias
            atrous.train(child.training)
            setattr(module, name, atrous)
        else:
            adopt_dilated_convs(child)
    return module


# ----------------------------------------------------------------------------------------------- blocks


class ConvBNReLU(nn.Module):
    """Conv (no bias) -> BatchNorm -> ReLU, with 'same' padding for any dilation."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, dilation: Dilation = 1, groups: int = 1):
        super().__init__()
        if dilation not in (1, (1, 1)) and kernel_size == 3:
            self.conv = AtrousConv2d(in_channels, out_channels, dilation=dilation, groups=groups)
        else:
            padding = (kernel_size - 1) // 2 * (max(dilation) if isinstance(dilation, tuple) else dilation)
            self.conv = nn.Conv2d(
                in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, groups=groups, bias=False
            )
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class SeparableConvBNReLU(nn.Module):
    """Atrous-separable conv of DeepLabV3+: depthwise 3x3 + BN + ReLU, then pointwise 1x1 + BN + ReLU. ``dilation``
    may differ by axis, (height, width), as in Google's dense prediction cell."""

    def __init__(self, in_channels: int, out_channels: int, *, dilation: Dilation = 1):
        super().__init__()
        self.depthwise = ConvBNReLU(in_channels, in_channels, 3, dilation=dilation, groups=in_channels)
        self.pointwise = ConvBNReLU(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class DepthwiseSeparableConv(nn.Module):
    """Depthwise 3x3 (dilated) then pointwise 1x1, nothing between: the separable conv of Xception-style code bases
    that put BN after the pair (segmentation_models_pytorch, VainF)."""

    def __init__(self, in_channels: int, out_channels: int, *, dilation: int = 1):
        super().__init__()
        if dilation > 1:
            self.depthwise = AtrousConv2d(in_channels, in_channels, dilation=dilation, groups=in_channels)
        else:
            self.depthwise = nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels, bias=False)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class PairSeparableConvBNReLU(nn.Module):
    """``DepthwiseSeparableConv`` -> BN -> ReLU (one BN, after the pair)."""

    def __init__(self, in_channels: int, out_channels: int, *, dilation: int = 1):
        super().__init__()
        self.conv = DepthwiseSeparableConv(in_channels, out_channels, dilation=dilation)
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


# separable: False (plain 3x3), True (DeepLabV3+'s: BN + ReLU after depthwise and after pointwise), or "pair"
# (one BN + ReLU after the depthwise-pointwise pair).
Separable = bool | str


def conv3x3_bn_relu(in_channels: int, out_channels: int, *, dilation: int = 1, separable: Separable = False) -> nn.Module:
    if separable == "pair":
        return PairSeparableConvBNReLU(in_channels, out_channels, dilation=dilation)
    if separable:
        return SeparableConvBNReLU(in_channels, out_channels, dilation=dilation)
    return ConvBNReLU(in_channels, out_channels, 3, dilation=dilation)


class ImagePooling(ConvBNReLU):
    """ASPP's image-level branch: global average pool -> 1x1 conv -> BN -> ReLU -> broadcast back to H x W."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bn.training and x.shape[0] == 1:
            raise ValueError(
                "batch size 1 in train mode: the BatchNorm of ASPP's image-pooling branch sees one value per "
                "channel and cannot compute batch statistics. Use a batch of 2 or more, call model.eval(), "
                "or build the model with frozen_bn='all'."
            )
        pooled = super().forward(x.mean(dim=(2, 3), keepdim=True))
        # Bilinear upsampling of a 1x1 map is a broadcast; expand avoids the interpolation kernel.
        return pooled.expand(-1, -1, x.shape[2], x.shape[3])


class ASPP(nn.Module):
    """Atrous Spatial Pyramid Pooling (DeepLabV3): 1x1, one 3x3 per rate, image pooling; concat -> 1x1 -> dropout.

    Input (N, in_channels, h, w) -> output (N, out_channels, h, w).
    """

    def __init__(
        self,
        *,
        in_channels: int,
        atrous_rates: Sequence[int],
        out_channels: int = 256,
        dropout: float = 0.5,
        separable: Separable = False,
    ):
        super().__init__()
        self.branch1x1 = ConvBNReLU(in_channels, out_channels, 1)
        self.atrous_branches = nn.ModuleList(
            conv3x3_bn_relu(in_channels, out_channels, dilation=rate, separable=separable) for rate in atrous_rates
        )
        self.pooling = ImagePooling(in_channels, out_channels)
        self.project = ConvBNReLU(out_channels * (len(atrous_rates) + 2), out_channels, 1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Pooling runs first, so its gradient (a broadcast, which autograd materialises in NCHW) arrives last in the
        # backward pass and is added into the others' channels_last sum; arriving first it would set the sum's
        # layout to NCHW, and each channels_last + NCHW addition costs 6x a same-layout one.
        pooled = self.pooling(x)
        branches = [self.branch1x1(x)] + [branch(x) for branch in self.atrous_branches] + [pooled]
        return self.dropout(self.project(torch.cat(branches, dim=1)))
