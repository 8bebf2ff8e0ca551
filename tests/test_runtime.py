"""Every fast inference path gives the plain path's predictions: AtrousConv2d, channels_last, compiled, ONNX, bf16."""

import pytest
import torch
import torch.nn.functional as F
from conftest import randomise_batchnorm

import atrous
from atrous.models import layers as atrous_conv
from atrous.models.layers import AtrousConv2d
from atrous.runtime import RUNTIMES, cached_onnx, prepare_inference


@pytest.mark.parametrize(
    "dilation, size",
    [(2, (9, 11)), (6, (7, 13)), (12, (12, 12)), (36, (33, 33)), (24, (21, 40))],
)
def test_atrous_conv_equals_conv2d_in_values_and_gradients(dilation, size):
    """Trimmed taps (dilation >= a side) and full taps alike: Conv2d's outputs and all gradients."""
    conv = AtrousConv2d(16, 8, dilation=dilation, bias=True)
    reference = torch.nn.Conv2d(16, 8, 3, padding=dilation, dilation=dilation, bias=True)
    reference.load_state_dict(conv.state_dict())
    x = torch.randn(2, 16, *size, requires_grad=True)
    ours, theirs = conv(x), reference(x)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    weight = torch.randn_like(ours)
    grads = torch.autograd.grad((ours * weight).sum(), [x, conv.weight, conv.bias])
    expected = torch.autograd.grad((theirs * weight).sum(), [x, reference.weight, reference.bias])
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("size, by_taps", [((4, 4), True), ((4, 5), True), ((4, 9), False), ((9, 9), False)])
def test_backbone_atrous_convs_go_by_taps_only_where_half_the_work_reads_padding(size, by_taps, monkeypatch):
    """A backbone's dilated layer (always_by_taps=False): Conv2d's values and gradients either way; the tap-wise
    training path only where half or more of the kernel's multiply-adds read padding (rate 2: a 4-pixel side)."""
    calls = []
    original = atrous_conv._TrainingAtrousConv.apply
    monkeypatch.setattr(atrous_conv._TrainingAtrousConv, "apply", lambda *a: calls.append(1) or original(*a))
    conv = AtrousConv2d(16, 8, dilation=2, always_by_taps=False)
    reference = torch.nn.Conv2d(16, 8, 3, padding=2, dilation=2, bias=False)
    reference.load_state_dict(conv.state_dict())
    x = torch.randn(2, 16, *size, requires_grad=True)
    ours, theirs = conv(x), reference(x)
    assert len(calls) == by_taps
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    weight = torch.randn_like(ours)
    for got, want in zip(torch.autograd.grad((ours * weight).sum(), [x, conv.weight]),
                         torch.autograd.grad((theirs * weight).sum(), [x, reference.weight])):  # fmt: skip
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_a_backbones_dilated_convs_become_atrous_convs_holding_the_same_parameters():
    from torchvision.models import resnet50

    from atrous.models.layers import adopt_dilated_convs

    plain = resnet50(replace_stride_with_dilation=[False, True, True])
    before = {name: (type(m), m.weight) for name, m in plain.named_modules() if isinstance(m, torch.nn.Conv2d)}
    keys = list(plain.state_dict())
    adopted = adopt_dilated_convs(plain)
    after = {name: m for name, m in adopted.named_modules() if isinstance(m, torch.nn.Conv2d)}
    assert list(adopted.state_dict()) == keys and set(after) == set(before)
    for name, module in after.items():
        assert module.weight is before[name][1]  # the very parameters, not copies
        dilated_3x3 = module.kernel_size == (3, 3) and module.dilation != (1, 1)
        assert isinstance(module, AtrousConv2d) == dilated_3x3, name
    assert sum(isinstance(m, AtrousConv2d) for m in after.values()) == 8  # layer3: 5 blocks, layer4: 3
    model = atrous.build_model("deeplabv3", backbone="resnet50", num_classes=3, output_stride=8)
    assert sum(isinstance(m, AtrousConv2d) and not m.always_by_taps for m in model.backbone.modules()) == 8


@pytest.mark.parametrize("autocast", [False, True], ids=["float32 taps", "bf16 matrix products"])
def test_tap_wise_weight_gradients_come_back_in_the_weights_own_layout(autocast, monkeypatch):
    """A channels_last kernel (``train.channels_last``) gets a channels_last gradient from both tap-wise paths, equal
    to Conv2d's: autograd would otherwise copy it into the parameter's strides on every step."""
    monkeypatch.setattr(atrous.cpu, "fast_reduced_precision_matmuls", lambda dtype: True)
    conv = AtrousConv2d(16, 8, dilation=2, always_by_taps=False).to(memory_format=torch.channels_last)
    reference = torch.nn.Conv2d(16, 8, 3, padding=2, dilation=2, bias=False).to(memory_format=torch.channels_last)
    reference.load_state_dict(conv.state_dict())
    x = torch.randn(2, 16, 4, 4).contiguous(memory_format=torch.channels_last)  # 4x4 at rate 2: by taps
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        # autograd.grad: the gradient as the layer returns it, before accumulation would copy it into the strides
        (got,) = torch.autograd.grad(conv(x).float().square().sum(), [conv.weight])
        (want,) = torch.autograd.grad(reference(x).float().square().sum(), [reference.weight])
    assert got.stride() == conv.weight.stride() and got.is_contiguous(memory_format=torch.channels_last)
    if autocast:  # both in bf16, each rounding its own way: compare as a whole, to bf16's ~3 digits
        assert ((got - want).norm() / want.norm()).item() < 1e-2
    else:
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.fixture(params=["matmuls", "onednn"])
def reduced_precision_path(request, monkeypatch):
    """Both bf16 paths on any CPU: matrix products (chosen with AMX) and oneDNN's convolutions (chosen without)."""
    monkeypatch.setattr(atrous.cpu, "fast_reduced_precision_matmuls", lambda dtype: request.param == "matmuls")
    return request.param


def test_atrous_conv_takes_the_bf16_path_the_cpu_chooses(reduced_precision_path, monkeypatch):
    calls = []
    original = atrous_conv._ReducedPrecisionAtrousConv.apply
    monkeypatch.setattr(atrous_conv._ReducedPrecisionAtrousConv, "apply", lambda *a: calls.append(1) or original(*a))
    conv, x = AtrousConv2d(8, 4, dilation=2), torch.randn(1, 8, 9, 9)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = conv(x)
        expected = F.conv2d(x, conv.weight, None, 1, 2, 2)
    assert len(calls) == (reduced_precision_path == "matmuls")
    if reduced_precision_path == "onednn":  # the very convolution autocast runs
        torch.testing.assert_close(out, expected, rtol=0, atol=0)


@pytest.mark.parametrize("dilation, size, channels_last", [(4, (9, 9), False), (12, (21, 17), True), (24, (21, 40), True)])
def test_atrous_conv_trains_under_cpu_autocast_as_accurately_as_onednn(dilation, size, channels_last,
                                                                       reduced_precision_path):
    """Under bf16 autocast the layer runs as matrix products (forward, input and weight gradients) or oneDNN's
    convolutions: float64's values to bf16 precision, and no further from them than oneDNN's own bf16
    convolution under autocast."""
    conv = AtrousConv2d(16, 8, dilation=dilation, bias=True)
    onednn = torch.nn.Conv2d(16, 8, 3, padding=dilation, dilation=dilation, bias=True)
    onednn.load_state_dict(conv.state_dict())
    x = torch.randn(2, 16, *size)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    upstream = torch.randn(2, 8, *size)

    def values_and_gradients(layer, inputs, autocast):
        inputs = inputs.detach().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = layer(inputs)
        (out.double() * upstream.double()).sum().backward()  # the same upstream gradient for all three
        return out.double(), inputs.grad.double(), layer.weight.grad.double(), layer.bias.grad.double()

    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv(x).dtype == torch.bfloat16
    ours, theirs = values_and_gradients(conv, x, True), values_and_gradients(onednn, x, True)
    reference = torch.nn.Conv2d(16, 8, 3, padding=dilation, dilation=dilation, bias=True).double()
    reference.load_state_dict(conv.state_dict())
    exact = values_and_gradients(reference, x.double(), False)
    for name, got, onednn_got, want in zip(("output", "input grad", "weight grad", "bias grad"), ours, theirs, exact):
        error, onednn_error = ((got - want).norm() / want.norm()).item(), ((onednn_got - want).norm() / want.norm()).item()
        assert error < 1e-2 and error < 2 * onednn_error + 1e-3, (name, error, onednn_error)


@pytest.mark.parametrize("dilation, size", [(12, (65, 65)), (36, (33, 40)), (4, (9, 9))])
def test_atrous_conv_bf16_taps_match_the_float32_convolution(dilation, size, reduced_precision_path):
    conv = AtrousConv2d(64, 32, dilation=dilation)
    x = torch.randn(1, 64, *size)
    expected = F.conv2d(x, conv.weight, None, 1, dilation, dilation)
    with torch.no_grad():
        got = conv.to(torch.bfloat16)(x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last))
    assert got.dtype == torch.bfloat16 and got.shape == expected.shape
    # bf16 inputs and weights carry ~3 significant digits; accumulation is float32.
    relative = (got.float() - expected).norm() / expected.norm()
    assert relative < 1e-2, relative


def test_atrous_conv_keeps_conv2d_state_dict_keys():
    model = atrous.build_model("deeplabv3", backbone="resnet18", num_classes=3)
    keys = set(model.state_dict())
    assert "head.aspp.atrous_branches.0.conv.weight" in keys
    assert isinstance(model.head.aspp.atrous_branches[0].conv, AtrousConv2d)


@pytest.fixture(scope="module")
def model():
    """DeepLabV3 R18 at OS8 with calibrated BN: at 97x129 the 13x17 map makes rate 12 partial, 24 and 36 trimmed."""
    torch.manual_seed(0)
    return randomise_batchnorm(atrous.build_model("deeplabv3", backbone="resnet18", num_classes=5, output_stride=8))


@pytest.mark.parametrize("runtime", ["channels_last", "compile", "onnxruntime"])
def test_float32_runtimes_give_eager_logits(model, runtime):
    images = torch.randn(2, 3, 97, 129)
    with torch.no_grad():
        expected = model(images).logits
    fast = prepare_inference(model, runtime, device=torch.device("cpu"))
    for size in [(97, 129), (65, 81)]:  # a second size: no stale compiled graph or export shape
        x = images if size == (97, 129) else images[:, :, : size[0], : size[1]]
        with torch.no_grad():
            want = expected if size == (97, 129) else model(x).logits
        got = fast(x)
        assert got.logits.dtype == torch.float32 and got.aux_logits is None
        torch.testing.assert_close(got.logits, want, rtol=0, atol=1e-3)


@pytest.mark.parametrize("runtime, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_half_precision_runtimes_leave_the_callers_model_float32(model, runtime, dtype):
    fast = prepare_inference(model, runtime, device=torch.device("cpu"))
    assert next(model.parameters()).dtype == torch.float32
    x = torch.randn(1, 3, 33, 33)
    got = fast(x).logits
    assert got.dtype == torch.float32
    with torch.no_grad():
        want = model(x).logits
    # fp16 keeps 11 significant bits, bf16 8: the logits of this small random network to their precision.
    tolerance = {torch.float16: 2e-2, torch.bfloat16: 2e-1}[dtype]
    torch.testing.assert_close(got, want, rtol=0, atol=tolerance * want.abs().max().item())


def test_bf16_predictions_agree_with_float32_on_a_trained_model():
    """The bf16 path's acceptance line: >= 99.5% of pixels predicted as in float32, on a trained network."""
    from atrous.bench.agreement import bf16_agreement, fit_synthetic_model

    trained, images = fit_synthetic_model(iterations=120, held_out=8)
    agreement = bf16_agreement(trained, images)
    assert agreement >= 0.995, agreement


def test_onnx_export_is_cached_by_weights(model, tmp_path):
    first = cached_onnx(model, tmp_path)
    stamp = first.stat().st_mtime_ns
    assert cached_onnx(model, tmp_path) == first and first.stat().st_mtime_ns == stamp  # not exported again
    other = atrous.build_model("deeplabv3", backbone="resnet18", num_classes=5, output_stride=8)
    assert cached_onnx(other, tmp_path) != first
    assert sorted(p.name for p in (tmp_path / "onnx").iterdir()) == sorted([first.name, cached_onnx(other, tmp_path).name])


def test_unknown_runtime_names_the_choices(model):
    with pytest.raises(ValueError, match=r"unknown runtime 'tensorrt'; choose from \['auto', 'eager'"):
        prepare_inference(model, "tensorrt")
    assert set(RUNTIMES) == {"eager", "channels_last", "compile", "onnxruntime", "bf16", "fp16", "int8", "openvino",
                             "openvino_bf16", "openvino_int8"}
