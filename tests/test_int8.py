"""int8 deployment (ONNX Runtime static quantisation, QDQ, per-channel weights): agreement with the fp32 graph on a
model trained here, integer convolutions in the file, the cache keyed by model and calibration images, and the
commands (eval prints the fp32 and int8 scores, predict, export --int8)."""

import re

import numpy as np
import pytest
import torch

import atrous
import atrous.export
import atrous.quantize
from atrous.checkpoint import model_checkpoint
from atrous.cli import main
from atrous.config import Config, save_config
from atrous.data import SynthSpec, build_dataset, write_synthetic
from atrous.errors import ConfigError
from atrous.evaluation import evaluate
from atrous.runtime import cached_int8_onnx, prepare_inference

onnx = pytest.importorskip("onnx")
CPU = torch.device("cpu")


def test_int8_predicts_as_the_fp32_graph_on_a_trained_model(fitted, tmp_path):
    model, images = fitted
    calibration, held_out = images[:4], images[4:]
    int8 = prepare_inference(model, "int8", device=CPU, calibration=calibration, cache_dir=tmp_path)
    fp32 = prepare_inference(model, "onnxruntime", device=CPU, cache_dir=tmp_path)
    int8_logits, fp32_logits = int8(held_out).logits, fp32(held_out).logits
    assert not torch.equal(int8_logits, fp32_logits)  # it is another graph...
    agreement = (int8_logits.argmax(1) == fp32_logits.argmax(1)).double().mean().item()
    assert agreement >= 0.98, agreement  # ...that predicts the same classes
    graph = onnx.load(str(cached_int8_onnx(model, calibration, tmp_path)))
    operators = {node.op_type for node in graph.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= operators
    weights = [tensor for tensor in graph.graph.initializer if tensor.data_type == onnx.TensorProto.INT8]
    per_channel = [tensor for tensor in weights if len(tensor.dims) == 4 and tensor.dims[0] > 1]
    assert per_channel, "no int8 convolution weights"
    scales = {tensor.name: onnx.numpy_helper.to_array(tensor) for tensor in graph.graph.initializer}
    assert any(name.endswith("_scale") and value.ndim == 1 and value.size > 1 for name, value in scales.items())


def test_the_int8_file_is_cached_per_model_and_calibration(fitted, tmp_path, monkeypatch):
    model, images = fitted
    first = cached_int8_onnx(model, images[:4], tmp_path)

    def no_quantisation(*_args, **_kwargs):
        raise AssertionError("quantised again")

    monkeypatch.setattr(atrous.quantize, "quantize_onnx", no_quantisation)
    assert cached_int8_onnx(model, images[:4], tmp_path) == first
    with pytest.raises(AssertionError, match="quantised again"):  # other calibration images: another file
        cached_int8_onnx(model, images[:3], tmp_path)
    assert not list(first.parent.glob("*.partial"))


def test_int8_needs_calibration_images_and_the_cpu(fitted):
    model, _ = fitted
    with pytest.raises(ConfigError, match="needs calibration images"):
        prepare_inference(model, "int8", device=CPU)
    with pytest.raises(ConfigError, match="runs on the CPU"):
        prepare_inference(model, "int8", device=torch.device("meta"), calibration=torch.zeros(1, 3, 8, 8))


def test_calibration_images_are_resized_cropped_and_normalised(fitted):
    model, _ = fitted
    image = np.random.default_rng(0).integers(0, 256, (50, 80, 3), dtype=np.uint8)
    photos = atrous.quantize.calibration_photos([image, image[:, :50]], side=32)
    assert photos.dtype == torch.uint8 and tuple(photos.shape) == (2, 3, 32, 32)
    square = torch.nn.functional.interpolate(torch.from_numpy(image[:, :50]).permute(2, 0, 1)[None].float(),
                                             size=(32, 32), mode="bilinear", align_corners=False)  # fmt: skip
    assert (photos[1:].float() - square).abs().max() <= 0.5  # rounded to the nearest 0..255 value
    wide = torch.nn.functional.interpolate(torch.from_numpy(image).permute(2, 0, 1)[None].float(), size=(32, 51),
                                           mode="bilinear", align_corners=False)  # shorter side 32, centre crop  # fmt: skip
    assert (photos[:1].float() - wide[..., 9:41]).abs().max() <= 0.5
    batch = atrous.quantize.calibration_batch([image, image[:, :50]], model, side=32)
    torch.testing.assert_close(batch, model.normalization(photos))
    assert atrous.quantize.evenly_spaced(3, 10) == [0, 4, 9] and atrous.quantize.evenly_spaced(5, 2) == [0, 1]


def test_the_int8_network_behind_a_uint8_front_gives_its_logits(fitted, tmp_path):
    """The deployment file: the cached int8 network (on normalised images) with the model's normalisation in front
    takes uint8 images, says so, and gives the network's logits on the normalised images."""
    model, images = fitted
    network = cached_int8_onnx(model, images[:4], tmp_path)
    out = atrous.export.with_uint8_input(network, model, tmp_path / "deploy.onnx")
    graph = onnx.load(str(out))
    assert [entry.name for entry in graph.graph.input] == ["images"]
    assert graph.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    metadata = atrous.export.exported_metadata(out)
    assert metadata["input_dtype"] == "uint8" and "the graph normalises them" in metadata["input"]
    assert metadata["num_classes"] == str(model.num_classes)
    photos = torch.randint(0, 256, (2, 3, 47, 61), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    front = atrous.export.onnxruntime_logits(out)(photos)
    behind = atrous.export.onnxruntime_logits(network)(model.normalization(photos))
    torch.testing.assert_close(front, behind, rtol=0, atol=1e-5)
    assert sum(node.op_type == "QuantizeLinear" for node in graph.graph.node) == sum(
        node.op_type == "QuantizeLinear" for node in onnx.load(str(network)).graph.node)


@pytest.fixture(scope="module")
def run_files(fitted, tmp_path_factory):
    model, _ = fitted
    root = tmp_path_factory.mktemp("int8")
    write_synthetic(root / "data", SynthSpec(seed=5, train=6, val=4, size=64), progress=False)
    model.set_labels(atrous.data.SYNTHETIC_CLASSES, None)
    torch.save(model_checkpoint(model), root / "model.pt")
    config = Config()
    config.name, config.out_dir = "int8", str(root / "runs")
    config.model = model.spec
    config.data.dataset, config.data.root = "synthetic", str(root / "data")
    save_config(config, root / "config.yaml")
    return root


def test_eval_int8_prints_the_fp32_and_int8_scores(fitted, run_files, capsys):
    model, _ = fitted
    root = run_files
    out = root / "eval_int8"
    assert main(["eval", "--config", str(root / "config.yaml"), "--weights", str(root / "model.pt"), "--runtime",
                 "int8", "--out", str(out)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "calibrating on 6 images of synthetic train (cached" in printed
    found = re.search(r"mIoU fp32 \(onnxruntime\) (\d\.\d{4}), int8 (\d\.\d{4}): int8 loses (-?\d+\.\d\d) points; "
                      r"(\d+\.\d\d)% of the calibration pixels predicted as by the fp32 graph", printed)  # fmt: skip
    assert found, printed
    assert float(found.group(4)) >= 95.0  # export --int8 prints the same figure (test_predict_int8_and_export_int8)
    fp32_score, int8_score, lost = (float(value) for value in found.groups()[:3])
    metrics = __import__("json").loads((out / "metrics.json").read_text())
    assert f"{metrics['mIoU']:.4f}" == found.group(2)
    assert lost == pytest.approx(100 * (fp32_score - int8_score), abs=0.011)
    dataset = build_dataset("synthetic", root / "data", "val")
    reference = evaluate(prepare_inference(model, "onnxruntime", device=CPU), dataset, device=CPU,
                                progress=False)  # fmt: skip
    assert f"{reference.scores['mIoU']:.4f}" == found.group(1)
    assert abs(lost) <= 5.0  # a fitted toy model: a few points at most (the bench measures the demo model)


def test_predict_int8_and_export_int8(run_files, tmp_path, capsys):
    root = run_files
    images = sorted((root / "data").rglob("*.jpg"))[:2] or sorted((root / "data").rglob("*.png"))[:2]
    assert main(["predict", *map(str, images), "--weights", str(root / "model.pt"), "--runtime", "int8", "--out",
                 str(tmp_path / "predictions")]) == 0  # fmt: skip
    assert "calibrating on 2 of the input images" in capsys.readouterr().out
    assert len(list((tmp_path / "predictions").glob("*.png"))) >= 2
    out = tmp_path / "model.int8.onnx"
    assert main(["export", "--weights", str(root / "model.pt"), "--int8", "--config", str(root / "config.yaml"),
                 "--out", str(out)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "takes images (batch, 3, height, width) uint8, RGB 0..255 as decoded" in printed
    agreement = float(re.search(r"(\d+\.\d\d)% of the calibration pixels predicted as by the fp32 graph", printed)[1])
    assert out.is_file() and agreement >= 95.0
    assert onnx.load(str(out)).graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    normalized = tmp_path / "model.int8-normalized.onnx"
    assert main(["export", "--weights", str(root / "model.pt"), "--int8", "--normalized-input", "--config",
                 str(root / "config.yaml"), "--out", str(normalized)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "takes images (batch, 3, height, width) float32, normalised" in printed
    assert float(re.search(r"(\d+\.\d\d)% of the calibration pixels", printed)[1]) == pytest.approx(agreement, abs=0.1)
    assert main(["export", "--weights", str(root / "model.pt"), "--int8", "--out", str(tmp_path / "x.onnx")]) != 0
    assert "--int8 calibrates on the model's data: pass --config" in capsys.readouterr().err
    assert main(["export", "--weights", str(root / "model.pt"), "--config", str(root / "config.yaml")]) != 0
    assert "are for --int8's calibration data" in capsys.readouterr().err
