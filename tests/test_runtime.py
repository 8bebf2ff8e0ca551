"""Every fast inference path gives the plain path's predictions: AtrousConv2d, channels_last, compiled, ONNX, bf16."""

import pytest
import torch
import torch.nn.functional as F
from conftest import randomise_batchnorm

import atrous
from atrous.models.atrous_conv import AtrousConv2d
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


def test_atrous_conv_trains_under_cpu_autocast():
    conv = AtrousConv2d(16, 8, dilation=4)
    reference = torch.nn.Conv2d(16, 8, 3, padding=4, dilation=4, bias=False)
    reference.load_state_dict(conv.state_dict())
    x = torch.randn(2, 16, 9, 9)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours, theirs = conv(x), reference(x)
    assert ours.dtype == theirs.dtype == torch.bfloat16
    ours.float().square().sum().backward()
    theirs.float().square().sum().backward()
    torch.testing.assert_close(conv.weight.grad, reference.weight.grad, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("dilation, size", [(12, (65, 65)), (36, (33, 40)), (4, (9, 9))])
def test_atrous_conv_bf16_taps_match_the_float32_convolution(dilation, size):
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


def test_bf16_runtime_leaves_the_callers_model_float32(model):
    fast = prepare_inference(model, "bf16", device=torch.device("cpu"))
    assert next(model.parameters()).dtype == torch.float32
    assert fast(torch.randn(1, 3, 33, 33)).logits.dtype == torch.float32


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
    assert set(RUNTIMES) == {"eager", "channels_last", "compile", "onnxruntime", "bf16", "int8"}
