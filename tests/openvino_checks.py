"""OpenVINO as an inference runtime: the logits of eager PyTorch in f32 at any size from one compiled graph, bf16
within bf16's rounding, int8 agreeing with its f32 graph on a trained network, the IR export, compiled blobs cached,
and the refusals (no OpenVINO, no native bf16). Run in a process of their own by tests/test_openvino.py."""

import sys

import numpy as np
import pytest
import torch

import atrous
from atrous import openvino_runtime
from atrous.cli import main
from atrous.errors import ConfigError, MissingDependencyError
from atrous.runtime import prepare_inference

CPU = torch.device("cpu")
# f32: OpenVINO sums in other orders than oneDNN under eager (measured 1.0e-6 of the largest logit); bf16 keeps 8
# bits of mantissa (2^-8 = 0.4% per rounding): measured 0.7%, bounded at 3%, and the labels must still agree.
F32_TOLERANCE, BF16_TOLERANCE = 1e-4, 3e-2


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    model = atrous.build_model("deeplabv3plus", backbone="resnet18", num_classes=5).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return model


def relative(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got - expected).abs().max() / expected.abs().max())


def test_openvino_gives_eagers_logits_at_every_size_from_one_graph(model, tmp_path):
    inference = prepare_inference(model, "openvino", device=CPU, cache_dir=tmp_path)
    for size in ((65, 81), (128, 160), (97, 75)):
        images = torch.randn(2, 3, *size)
        with torch.no_grad():
            expected = model(images).logits
        assert relative(inference(images).logits, expected) <= F32_TOLERANCE, size
    assert any((tmp_path / "openvino").iterdir())  # the compiled blob, reused by the next run


def test_openvino_bf16_stays_within_bf16s_rounding(model, tmp_path):
    if not openvino_runtime.supports_bf16():
        pytest.skip("this CPU has no native bf16 (the refusal is tested below)")
    inference = prepare_inference(model, "openvino_bf16", device=CPU, cache_dir=tmp_path)
    images = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        expected = model(images).logits
    got = inference(images).logits
    assert 0 < relative(got, expected) <= BF16_TOLERANCE  # > 0: it really ran in bf16
    agree = (got.argmax(1) == expected.argmax(1)).float().mean().item()
    assert agree >= 0.99


def test_bf16_is_refused_where_the_cpu_would_emulate_it(model, tmp_path, monkeypatch):
    monkeypatch.setattr(openvino_runtime, "supports_bf16", lambda: False)
    with pytest.raises(ConfigError, match="no native bf16 .* use --runtime openvino"):
        prepare_inference(model, "openvino_bf16", device=CPU, cache_dir=tmp_path)


def test_without_openvino_the_error_gives_the_install_command(model, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(MissingDependencyError, match=r"need OpenVINO: python -m pip install .*openvino"):
        prepare_inference(model, "openvino", device=CPU, cache_dir=tmp_path)


def test_predict_runs_on_openvino(model, tmp_path, monkeypatch):
    from PIL import Image

    weights = tmp_path / "model.pt"
    from atrous.checkpoint import model_checkpoint

    torch.save(model_checkpoint(model), weights)
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(photos / "a.png")
    monkeypatch.setenv("ATROUS_CACHE", str(tmp_path / "cache"))
    for runtime in ("openvino", "eager"):
        assert main(["predict", "--weights", str(weights), str(photos), "--out", str(tmp_path / runtime),
                     "--runtime", runtime]) == 0  # fmt: skip
    labels = [np.asarray(Image.open(tmp_path / runtime / "a.png")) for runtime in ("openvino", "eager")]
    assert np.array_equal(*labels)


def test_openvino_int8_predicts_as_the_fp32_graph_on_a_trained_model(fitted, tmp_path):
    model, images = fitted
    calibration, held_out = images[:4], images[4:]
    int8 = prepare_inference(model, "openvino_int8", device=CPU, calibration=calibration, cache_dir=tmp_path)
    fp32 = prepare_inference(model, "openvino", device=CPU, cache_dir=tmp_path)
    int8_logits, fp32_logits = int8(held_out).logits, fp32(held_out).logits
    assert not torch.equal(int8_logits, fp32_logits)  # another graph...
    agreement = (int8_logits.argmax(1) == fp32_logits.argmax(1)).double().mean().item()
    assert agreement >= 0.98, agreement  # ...predicting the same classes (ONNX Runtime's int8 is held to the same)
    (xml,) = (tmp_path / "onnx").glob("*-openvino-int8-*.xml")
    assert "FakeQuantize" in xml.read_text() or "i8" in xml.read_text()  # quantised layers in the IR
    assert xml.with_suffix(".bin").is_file()


def test_openvino_int8_needs_calibration_images(model):
    with pytest.raises(ConfigError, match="openvino_int8 runtime needs calibration images"):
        prepare_inference(model, "openvino_int8", device=CPU)


def test_export_writes_openvino_ir_that_says_what_it_takes_and_matches_eager(model, tmp_path, capsys):
    from atrous.checkpoint import model_checkpoint
    from atrous.export import export_model, exported_metadata
    from atrous.openvino_runtime import openvino_logits

    weights = tmp_path / "model.pt"
    torch.save(model_checkpoint(model), weights)
    assert main(["export", "--weights", str(weights), "--format", "openvino"]) == 0
    assert "parity OK" in capsys.readouterr().out
    xml = tmp_path / "model.xml"
    assert xml.with_suffix(".bin").is_file()
    metadata = exported_metadata(xml)
    assert metadata["input_dtype"] == "uint8" and metadata["num_classes"] == "5"
    run = openvino_logits(xml)
    image = torch.from_numpy(np.random.default_rng(3).integers(0, 256, (1, 3, 70, 90), dtype=np.uint8))
    with torch.no_grad():
        expected = model(model.normalization(image.float())).logits
    assert relative(run(image), expected) <= F32_TOLERANCE
    with pytest.raises(ConfigError, match="an OpenVINO export is a .xml file"):
        export_model(model, tmp_path / "model.onnx", format="openvino")
