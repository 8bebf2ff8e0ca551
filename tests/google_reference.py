"""An independent reference of Google's TensorFlow DeepLab forward, written from the facts (docs/google-deeplab-facts.md)
and not from atrous's modules: it computes in TensorFlow's NHWC layout straight from TF-named variables in TF's own
layouts (HWIO convolutions, HWCM depthwise, ``BatchNorm/moving_mean``...), with TensorFlow's 'SAME' padding written
out. Variables are made on first use, at the shape the layer asks for (as ``tf.get_variable`` does), with random
values and randomised BatchNorm statistics: ``forward`` thus also writes the checkpoint a network of that variant
holds.

Tools/google_deeplab_reference.py compares atrous with Google's own code; this is what CI can run without TensorFlow.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class Variables:
    """TF-named tensors, made on first use (``get``), or given (a checkpoint's)."""

    def __init__(self, seed: int = 0, values: dict[str, torch.Tensor] | None = None):
        self.values = dict(values or {})
        self.generator = torch.Generator().manual_seed(seed)

    def _random(self, shape, name: str) -> torch.Tensor:
        normal = torch.randn(shape, generator=self.generator)
        if name.endswith("moving_variance"):
            return torch.rand(shape, generator=self.generator) * 1.5 + 0.5
        if name.endswith("gamma"):
            return 1.0 + 0.3 * normal
        if name.endswith(("moving_mean", "beta", "biases")):
            return 0.5 * normal
        fan_in = math.prod(shape[:-1]) if name.endswith("/weights") else math.prod(shape[:2])
        return normal * math.sqrt(2.0 / fan_in)

    def get(self, name: str, shape) -> torch.Tensor:
        if name not in self.values:
            self.values[name] = self._random(tuple(shape), name)
        value = self.values[name]
        assert tuple(value.shape) == tuple(shape), f"{name}: {tuple(value.shape)} vs {tuple(shape)}"
        return value


def scale_dimension(size: int, scale: float) -> int:
    return int((size - 1) * scale + 1)


def _same(size: int, kernel: int, stride: int, rate: int) -> tuple[int, int]:
    reach = (kernel - 1) * rate + 1
    total = max((math.ceil(size / stride) - 1) * stride + reach - size, 0)
    return total // 2, total - total // 2


def _pad(x, kernel: int, stride: int, rate, padding: str):
    """NHWC x padded for a TF conv: 'SAME' (TensorFlow's split) or 'FIXED' (Google's fixed_padding: reach - 1 split
    evenly, then VALID)."""
    rate_h, rate_w = (rate, rate) if isinstance(rate, int) else rate
    if padding == "FIXED":
        top = ((kernel - 1) * rate_h) // 2
        left = ((kernel - 1) * rate_w) // 2
        pads = (top, (kernel - 1) * rate_h - top), (left, (kernel - 1) * rate_w - left)
    else:
        pads = _same(x.shape[1], kernel, stride, rate_h), _same(x.shape[2], kernel, stride, rate_w)
    return F.pad(x, (0, 0, pads[1][0], pads[1][1], pads[0][0], pads[0][1]))


def batch_norm(v: Variables, x, scope: str, eps: float):
    channels = x.shape[-1]
    gamma, beta = v.get(f"{scope}/BatchNorm/gamma", [channels]), v.get(f"{scope}/BatchNorm/beta", [channels])
    mean, variance = v.get(f"{scope}/BatchNorm/moving_mean", [channels]), v.get(f"{scope}/BatchNorm/moving_variance", [channels])
    return (x - mean) / torch.sqrt(variance + eps) * gamma + beta


def conv(v: Variables, x, scope: str, out: int, kernel: int = 1, *, stride: int = 1, rate=1, padding="SAME",
         eps: float | None = None, act=None, bias: bool = False):  # fmt: skip
    """slim.conv2d on NHWC: weights [k, k, in, out]; BN (eps) instead of a bias when eps is given."""
    weights = v.get(f"{scope}/weights", [kernel, kernel, x.shape[-1], out])
    x = _pad(x, kernel, stride, rate, padding)
    y = F.conv2d(x.permute(0, 3, 1, 2), weights.permute(3, 2, 0, 1), stride=stride, dilation=rate).permute(0, 2, 3, 1)
    if bias:
        y = y + v.get(f"{scope}/biases", [out])
    if eps is not None:
        y = batch_norm(v, y, scope, eps)
    return act(y) if act is not None else y


def depthwise(v: Variables, x, scope: str, kernel: int = 3, *, stride: int = 1, rate=1, padding="SAME", eps=None,
              act=None):  # fmt: skip
    """slim.separable_conv2d(num_outputs=None): depthwise_weights [k, k, C, 1]."""
    channels = x.shape[-1]
    weights = v.get(f"{scope}/depthwise_weights", [kernel, kernel, channels, 1])
    x = _pad(x, kernel, stride, rate, padding)
    y = F.conv2d(x.permute(0, 3, 1, 2), weights.permute(2, 3, 0, 1), stride=stride, dilation=rate, groups=channels)
    y = y.permute(0, 2, 3, 1)
    if eps is not None:
        y = batch_norm(v, y, scope, eps)
    return act(y) if act is not None else y


def relu6(x):
    return x.clamp(0, 6)


def stack_plan(strides: list[int], target: int) -> list[tuple[int, int]]:
    """slim's stack_blocks_dense: (stride, rate) per unit."""
    current, rate, plan = 1, 1, []
    for stride in strides:
        if current == target:
            plan.append((1, rate))
            rate *= stride
        else:
            plan.append((stride, 1))
            current *= stride
    return plan


# --------------------------------------------------------------------------------------------------- backbones

XCEPTION = {  # (flow/block, units, depths, stride, skip, activation inside the separable convs)
    "xception_65": [("entry_flow/block1", 1, [128] * 3, 2, "conv", False), ("entry_flow/block2", 1, [256] * 3, 2, "conv", False),
                    ("entry_flow/block3", 1, [728] * 3, 2, "conv", False), ("middle_flow/block1", 16, [728] * 3, 1, "sum", False),
                    ("exit_flow/block1", 1, [728, 1024, 1024], 2, "conv", False),
                    ("exit_flow/block2", 1, [1536, 1536, 2048], 1, "none", True)],
}  # fmt: skip
XCEPTION["xception_41"] = [(b, 8 if b.startswith("middle") else n, d, s, k, a) for b, n, d, s, k, a in XCEPTION["xception_65"]]
XCEPTION["xception_71"] = [
    ("entry_flow/block1", 1, [128] * 3, 2, "conv", False), ("entry_flow/block2", 1, [256] * 3, 1, "conv", False),
    ("entry_flow/block3", 1, [256] * 3, 2, "conv", False), ("entry_flow/block4", 1, [728] * 3, 1, "conv", False),
    ("entry_flow/block5", 1, [728] * 3, 2, "conv", False), *XCEPTION["xception_65"][3:],
]  # fmt: skip
XCEPTION_TAP = {"xception_41": "entry_flow/block2/unit_1", "xception_65": "entry_flow/block2/unit_1",
                "xception_71": "entry_flow/block3/unit_1"}  # fmt: skip


def xception(v: Variables, x, variant: str, output_stride: int, multi_grid=(1, 1, 1)):
    """-> (features, the OS4 end point)."""
    eps, scope = 1e-3, variant
    x = conv(v, x, f"{scope}/entry_flow/conv1_1", 32, 3, stride=2, padding="FIXED", eps=eps, act=F.relu)
    x = conv(v, x, f"{scope}/entry_flow/conv1_2", 64, 3, eps=eps, act=F.relu)
    units = [(f"{block}/unit_{i}", depths, stride, skip, inside) for block, count, depths, stride, skip, inside in
             XCEPTION[variant] for i in range(1, count + 1)]  # fmt: skip
    plan = stack_plan([unit[2] for unit in units], output_stride // 2)
    tap = None
    for (name, depths, _, skip, inside), (stride, rate) in zip(units, plan):
        unit = f"{scope}/{name}/xception_module"
        rates = [rate * m for m in multi_grid] if name.startswith("exit_flow/block2") else [rate] * 3
        residual = x
        for i in range(3):
            s = stride if i == 2 else 1
            if not inside:
                residual = F.relu(residual)
            residual = depthwise(v, residual, f"{unit}/separable_conv{i + 1}_depthwise", stride=s, rate=rates[i],
                                 padding="FIXED" if s > 1 else "SAME", eps=eps, act=F.relu if inside else None)  # fmt: skip
            residual = conv(v, residual, f"{unit}/separable_conv{i + 1}_pointwise", depths[i], eps=eps,
                            act=F.relu if inside else None)  # fmt: skip
            if i == 1 and name == XCEPTION_TAP[variant]:
                tap = residual
        if skip == "conv":
            x = residual + conv(v, x, f"{unit}/shortcut", depths[-1], stride=stride, eps=eps)
        elif skip == "sum":
            x = residual + x
        else:
            x = residual
    return x, tap


MOBILENET_V2 = [(1, 16, 1), (6, 24, 2), (6, 24, 1), (6, 32, 2), (6, 32, 1), (6, 32, 1), (6, 64, 2), (6, 64, 1),
                (6, 64, 1), (6, 64, 1), (6, 96, 1), (6, 96, 1), (6, 96, 1), (6, 160, 2), (6, 160, 1), (6, 160, 1),
                (6, 320, 1)]  # fmt: skip


def _divisible(value, divisor, minimum=None):
    minimum = minimum or divisor
    new = max(minimum, int(value + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * value else new


def mobilenet_v2(v: Variables, x, depth_multiplier: float, output_stride: int):
    divisor = 8 if depth_multiplier == 1.0 else 1
    eps = 1e-3
    plan = stack_plan([2] + [s for _, _, s in MOBILENET_V2], output_stride)
    x = conv(v, x, "MobilenetV2/Conv", _divisible(32 * depth_multiplier, divisor), 3, stride=plan[0][0], eps=eps, act=relu6)
    tap = None
    for index, ((factor, out, _), (stride, rate)) in enumerate(zip(MOBILENET_V2, plan[1:])):
        scope = "MobilenetV2/expanded_conv" + (f"_{index}" if index else "")
        inner = _divisible(x.shape[-1] * factor, 8)
        h = x
        if inner > x.shape[-1]:
            h = conv(v, h, f"{scope}/expand", inner, eps=eps, act=relu6)
        h = depthwise(v, h, f"{scope}/depthwise", stride=stride, rate=rate, eps=eps, act=relu6)
        if index == 2:
            tap = h  # layer_4/depthwise_output
        h = conv(v, h, f"{scope}/project", _divisible(out * depth_multiplier, divisor), eps=eps)
        x = h + x if stride == 1 and h.shape[-1] == x.shape[-1] else h
    return x, tap


def resnet_beta(v: Variables, x, depth: int, output_stride: int, multi_grid=(1, 1, 1)):
    eps, scope = 1e-5, f"resnet_v1_{depth}"
    for i, out in ((1, 64), (2, 64), (3, 128)):
        x = conv(v, x, f"{scope}/conv1_{i}", out, 3, stride=2 if i == 1 else 1, padding="FIXED" if i == 1 else "SAME",
                 eps=eps, act=F.relu)  # fmt: skip
    top, bottom = _same(x.shape[1], 3, 2, 1)
    left, right = _same(x.shape[2], 3, 2, 1)
    x = F.pad(x, (0, 0, left, right, top, bottom), value=-math.inf)
    x = F.max_pool2d(x.permute(0, 3, 1, 2), 3, 2).permute(0, 2, 3, 1)
    counts = {50: [3, 4, 6, 3], 101: [3, 4, 23, 3]}[depth]
    units = []
    for block, count in enumerate(counts):
        for unit in range(count):
            stride = 2 if block < 3 and unit == count - 1 else 1
            units.append((block + 1, unit + 1, 64 * 2**block, stride, multi_grid[unit] if block == 3 else 1))
    plan = stack_plan([u[3] for u in units], output_stride // 4)
    tap = None
    for (block, unit, width, _, unit_rate), (stride, rate) in zip(units, plan):
        name = f"{scope}/block{block}/unit_{unit}/bottleneck_v1"
        if x.shape[-1] == width * 4:
            shortcut = x[:, ::stride, ::stride]
        else:
            shortcut = conv(v, x, f"{name}/shortcut", width * 4, stride=stride, eps=eps)
        h = conv(v, x, f"{name}/conv1", width, eps=eps, act=F.relu)
        h = conv(v, h, f"{name}/conv2", width, 3, stride=stride, rate=rate * unit_rate,
                 padding="FIXED" if stride > 1 else "SAME", eps=eps, act=F.relu)  # fmt: skip
        h = conv(v, h, f"{name}/conv3", width * 4, eps=eps)
        if (block, unit) == (1, 2):
            tap = h
        x = F.relu(shortcut + h)
    return x, tap


# -------------------------------------------------------------------------------------------------------- heads


def resize(x, size):
    """tf.image.resize_bilinear(align_corners=True), NHWC."""
    return F.interpolate(x.permute(0, 3, 1, 2), size=size, mode="bilinear", align_corners=True).permute(0, 2, 3, 1)


def separable(v: Variables, x, scope: str, out: int, rate=1):
    x = depthwise(v, x, f"{scope}_depthwise", rate=rate, eps=1e-5, act=F.relu)
    return conv(v, x, f"{scope}_pointwise", out, eps=1e-5, act=F.relu)


def aspp(v: Variables, x, rates):
    pooled = conv(v, x.mean(dim=(1, 2), keepdim=True), "image_pooling", 256, eps=1e-5, act=F.relu)
    branches = [pooled.expand(-1, x.shape[1], x.shape[2], -1), conv(v, x, "aspp0", 256, eps=1e-5, act=F.relu)]
    branches += [separable(v, x, f"aspp{i}", 256, rate) for i, rate in enumerate(rates, 1)]
    return conv(v, torch.cat(branches, dim=-1), "concat_projection", 256, eps=1e-5, act=F.relu)


DPC_CELL = [(-1, (1, 6)), (0, (18, 15)), (1, (6, 3)), (0, (1, 1)), (0, (6, 21))]


def dense_prediction_cell(v: Variables, x, output_stride: int):
    outputs = []
    for index, (source, (rate_h, rate_w)) in enumerate(DPC_CELL):
        scale = 16 // output_stride
        inputs = x if source < 0 else outputs[source]
        outputs.append(separable(v, inputs, f"meta_architecture/branch{index}", 256, (rate_h * scale, rate_w * scale)))
    return conv(v, torch.cat(outputs, dim=-1), "meta_architecture/concat_projection", 256, eps=1e-5, act=F.relu)


def decoder(v: Variables, x, low):
    projected = conv(v, low, "decoder/feature_projection0", 48, eps=1e-5, act=F.relu)
    x = torch.cat([resize(x, low.shape[1:3]), projected], dim=-1)
    x = separable(v, x, "decoder/decoder_conv0", 256)
    return separable(v, x, "decoder/decoder_conv1", 256)


def forward(v: Variables, images, *, backbone: str, head: str, output_stride: int, classes: int, rates=(),
            crop=None, multi_grid=(1, 1, 1)):  # fmt: skip
    """images: NHWC float 0..255 -> logits NHWC at the images' size. backbone: xception_41/65/71, mobilenet_v2,
    mobilenet_v2_dm05, resnet_v1_50/101; head: "aspp" (no decoder), "aspp+decoder", "dpc+decoder". crop: Google's
    crop_size (the images padded bottom/right with the mean pixel to it)."""
    height, width = images.shape[1:3]
    x = images / 127.5 - 1.0
    if crop is not None:
        x = F.pad(x, (0, 0, 0, max(0, crop[1] - width), 0, max(0, crop[0] - height)))  # the mean pixel is 0 here
    canvas = x.shape[1:3]
    if backbone.startswith("xception"):
        features, low = xception(v, x, backbone, output_stride, multi_grid)
    elif backbone.startswith("mobilenet_v2"):
        features, low = mobilenet_v2(v, x, 0.5 if backbone.endswith("dm05") else 1.0, output_stride)
    else:
        features, low = resnet_beta(v, x, int(backbone.rsplit("_", 1)[1]), output_stride, multi_grid)
    features = dense_prediction_cell(v, features, output_stride) if head.startswith("dpc") else aspp(v, features, rates)
    if head.endswith("decoder"):
        features = decoder(v, features, low)
    logits = conv(v, features, "logits/semantic", classes, bias=True)
    return resize(logits, canvas)[:, :height, :width]


# ------------------------------------------------------------------------------- MobileNetV3 and EdgeTPU (slim)


def hard_swish(x):
    return x * relu6(x + 3) * (1.0 / 6.0)


def _hard_sigmoid(x):
    return relu6(x + 3) * 0.16667  # slim's and DeepLab's constant


RELU, HSWISH = F.relu, hard_swish
# (kind, expansion factor, out, kernel, stride, activation, squeeze-excite, residual); ("conv", out, kernel, stride, act)
MOBILENET_V3 = {
    "large": [("conv", 16, 3, 2, HSWISH), ("ir", 1, 16, 3, 1, RELU, False, True), ("ir", 4, 24, 3, 2, RELU, False, True),
              ("ir", 3, 24, 3, 1, RELU, False, True), ("ir", 3, 40, 5, 2, RELU, True, True),
              ("ir", 3, 40, 5, 1, RELU, True, True), ("ir", 3, 40, 5, 1, RELU, True, True),
              ("ir", 6, 80, 3, 2, HSWISH, False, True), ("ir", 2.5, 80, 3, 1, HSWISH, False, True),
              ("ir", 184 / 80, 80, 3, 1, HSWISH, False, True), ("ir", 184 / 80, 80, 3, 1, HSWISH, False, True),
              ("ir", 6, 112, 3, 1, HSWISH, True, True), ("ir", 6, 112, 3, 1, HSWISH, True, True),
              # the "seg" variant: the last block halved (160 -> 80), expansions 336, 480, 480; the 1x1 conv 480
              ("ir", 3, 80, 5, 2, HSWISH, True, True), ("ir", 6, 80, 5, 1, HSWISH, True, True),
              ("ir", 6, 80, 5, 1, HSWISH, True, True), ("conv", 480, 1, 1, HSWISH)],
    "small": [("conv", 16, 3, 2, HSWISH), ("ir", 1, 16, 3, 2, RELU, True, True), ("ir", 72 / 16, 24, 3, 2, RELU, False, True),
              ("ir", 88 / 24, 24, 3, 1, RELU, False, True), ("ir", 4, 40, 5, 2, HSWISH, True, True),
              ("ir", 6, 40, 5, 1, HSWISH, True, True), ("ir", 6, 40, 5, 1, HSWISH, True, True),
              ("ir", 3, 48, 5, 1, HSWISH, True, True), ("ir", 3, 48, 5, 1, HSWISH, True, True),
              ("ir", 3, 48, 5, 2, HSWISH, True, True), ("ir", 6, 48, 5, 1, HSWISH, True, True),
              ("ir", 6, 48, 5, 1, HSWISH, True, True), ("conv", 288, 1, 1, HSWISH)],
    "edgetpu": [("conv", 32, 3, 2, RELU), ("fused", 1, 16, 3, 1, RELU, False, True), ("fused", 8, 32, 3, 2, RELU, False, True),
                *[("fused", 4, 32, 3, 1, RELU, False, True)] * 3, ("fused", 8, 48, 3, 2, RELU, False, True),
                *[("fused", 4, 48, 3, 1, RELU, False, True)] * 3, ("ir", 8, 96, 3, 2, RELU, False, True),
                *[("ir", 4, 96, 3, 1, RELU, False, True)] * 3, ("ir", 8, 96, 3, 1, RELU, False, False),
                *[("ir", 4, 96, 3, 1, RELU, False, True)] * 3, ("ir", 8, 160, 5, 2, RELU, False, True),
                *[("ir", 4, 160, 5, 1, RELU, False, True)] * 3, ("ir", 8, 192, 3, 1, RELU, False, True),
                ("conv", 1280, 1, 1, RELU)],
}  # fmt: skip
MOBILENET_V3_DECODER_TAP = {"large": 6, "small": 3}  # layer_7 / layer_4: their depthwise output


def mobilenet_v3(v: Variables, x, variant: str, output_stride: int, depth_multiplier: float = 1.0):
    """-> (features, the stride-8 depthwise output Google's decoder reads, or None)."""
    scope, eps = ("MobilenetEdgeTPU" if variant == "edgetpu" else "MobilenetV3"), 1e-3
    layers = MOBILENET_V3[variant]
    plan = stack_plan([layer[3] if layer[0] == "conv" else layer[4] for layer in layers], output_stride)
    tap, convs, units = None, 0, 0
    for index, (layer, (stride, rate)) in enumerate(zip(layers, plan)):
        if layer[0] == "conv":
            _, out, kernel, _, act = layer
            name = "Conv" if convs == 0 else f"Conv_{convs}"
            convs += 1
            x = conv(v, x, f"{scope}/{name}", _divisible(out * depth_multiplier, 8), kernel, stride=stride, eps=eps, act=act)
            continue
        kind, factor, out, kernel, nominal, act, se, residual = layer
        name = f"{scope}/expanded_conv" + (f"_{units}" if units else "")
        units += 1
        inner = _divisible(x.shape[-1] * factor, 8)
        h = x
        if inner > x.shape[-1]:
            h = conv(v, h, f"{name}/expand", inner, kernel if kind == "fused" else 1,
                     stride=nominal if kind == "fused" else 1, eps=eps, act=act)  # fmt: skip
        if kind == "ir":
            h = depthwise(v, h, f"{name}/depthwise", kernel, stride=stride, rate=rate, eps=eps, act=act)
        if index == MOBILENET_V3_DECODER_TAP.get(variant):
            tap = h
        if se:
            squeezed = _divisible(h.shape[-1] / 4, 8)
            gate = conv(v, h.mean(dim=(1, 2), keepdim=True), f"{name}/squeeze_excite/Conv", squeezed, bias=True, act=F.relu)
            gate = conv(v, gate, f"{name}/squeeze_excite/Conv_1", h.shape[-1], bias=True, act=_hard_sigmoid)
            h = h * gate
        h = conv(v, h, f"{name}/project", _divisible(out * depth_multiplier, 8), eps=eps)
        step = nominal if kind == "fused" else stride
        x = h + x if residual and step == 1 and h.shape[-1] == x.shape[-1] else h
    return x, tap


def mobilenet_v3_head(v: Variables, x, low, classes: int, output_stride: int):
    """model_zoo.md's MobileNetV3 flags: image pooling crop 769 at stride (4, 5) as an SE gate (q-sigmoid, no BN),
    aspp0 of 128 without projection, a sum-merge decoder at stride 8 whose output is the logits."""
    window = scale_dimension(769, 1.0 / output_stride)
    pooled = F.avg_pool2d(x.permute(0, 3, 1, 2), window, (4, 5)).permute(0, 2, 3, 1)
    gate = conv(v, pooled, "image_pooling", 128, bias=True, act=_hard_sigmoid)
    features = conv(v, x, "aspp0", 128, eps=1e-5, act=F.relu) * resize(gate, x.shape[1:3])
    projected = conv(v, low, "decoder/feature_projection0", classes, bias=True)
    return conv(v, resize(features, low.shape[1:3]), "decoder/decoder_conv0", classes, bias=True) + projected


def forward_mobilenet_v3(v: Variables, images, *, variant: str, output_stride: int, classes: int, crop=None,
                         depth_multiplier: float = 1.0, aspp_width: int = 256):  # fmt: skip
    """Google's MobileNetV3 (variant "large"/"small": its own head) and EdgeTPU ("edgetpu": the MobileNetV2-style
    ASPP of ``aspp_width`` without rates) models; images NHWC 0..255 -> logits NHWC."""
    height, width = images.shape[1:3]
    x = images / 127.5 - 1.0
    if crop is not None:
        x = F.pad(x, (0, 0, 0, max(0, crop[1] - width), 0, max(0, crop[0] - height)))
    canvas = x.shape[1:3]
    features, low = mobilenet_v3(v, x, variant, output_stride, depth_multiplier)
    if variant == "edgetpu":
        pooled = conv(v, features.mean(dim=(1, 2), keepdim=True), "image_pooling", aspp_width, eps=1e-5, act=F.relu)
        branches = [pooled.expand(-1, features.shape[1], features.shape[2], -1),
                    conv(v, features, "aspp0", aspp_width, eps=1e-5, act=F.relu)]  # fmt: skip
        features = conv(v, torch.cat(branches, dim=-1), "concat_projection", aspp_width, eps=1e-5, act=F.relu)
        logits = conv(v, features, "logits/semantic", classes, bias=True)
    else:
        logits = mobilenet_v3_head(v, features, low, classes, output_stride)
    return resize(logits, canvas)[:, :height, :width]
