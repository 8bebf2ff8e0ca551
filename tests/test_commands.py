"""`atrous eval`, `predict` and `export` end to end on files made here."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import atrous
from atrous.checkpoint import model_checkpoint
from atrous.cli import main
from atrous.config import Config, save_config
from atrous.data import SynthSpec, build_dataset, write_synthetic


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A synthetic dataset, its config file and an atrous checkpoint (random weights, calibrated BN)."""
    root = tmp_path_factory.mktemp("commands")
    write_synthetic(root / "data", SynthSpec(seed=3, train=4, val=5, size=40), progress=False)
    torch.manual_seed(0)
    model = atrous.build_model("deeplabv3", backbone="resnet18", num_classes=7).eval()
    checkpoint = root / "model.pt"
    model.set_labels(atrous.data.SYNTHETIC_CLASSES, None)
    torch.save(model_checkpoint(model), checkpoint)
    config = Config()
    config.name, config.out_dir = "cmd", str(root / "runs")
    config.model = atrous.ModelSpec(name="deeplabv3", backbone="resnet18", num_classes=7)
    config.data.dataset, config.data.root = "synthetic", str(root / "data")
    save_config(config, root / "config.yaml")
    return root, model, checkpoint


def test_eval_writes_metrics_and_plots_equal_to_the_library(trained, capsys):
    root, model, checkpoint = trained
    out = root / "eval"
    assert main(["eval", "--config", str(root / "config.yaml"), "--weights", str(checkpoint), "--out", str(out),
                 "--save-predictions"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "mIoU" in printed and "triangle" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    # The reference: one eager forward per image, counted with NumPy.
    reference = np.zeros((7, 7), dtype=np.int64)
    with torch.no_grad():
        dataset = build_dataset("synthetic", root / "data", "val")
        for image, mask in (dataset[index] for index in range(len(dataset))):
            batch = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None]
            labels = model(model.normalization(batch)).logits.argmax(1)[0].numpy()
            valid = mask != 255
            np.add.at(reference, (mask[valid], labels[valid]), 1)
    assert metrics["confusion_matrix"] == reference.tolist()
    intersection = np.diag(reference)
    union = reference.sum(0) + reference.sum(1) - intersection
    with np.errstate(invalid="ignore", divide="ignore"):
        expected_miou = np.nanmean(np.where(union > 0, intersection / union, np.nan))
    assert metrics["mIoU"] == pytest.approx(expected_miou, nan_ok=True)
    for name in ("per_class_iou.png", "confusion_matrix.png"):
        assert Image.open(out / name).size[0] > 100
    report = (out / "report.html").read_text()
    assert 'src="per_class_iou.png"' in report and 'src="report_assets/sample_004.jpg"' in report
    assert len(list((out / "predictions").glob("*.png"))) == 5


def test_eval_with_tta_and_sliding_window(trained):
    root, _, checkpoint = trained
    out = root / "eval_tta"
    assert main(["eval", "--config", str(root / "config.yaml"), "--weights", str(checkpoint), "--out", str(out),
                 "--tta", "--slide", "--crop", "32", "--stride", "16"]) == 0  # fmt: skip
    assert json.loads((out / "metrics.json").read_text())["pixels"] > 0


def test_predict_on_real_photograph_formats(trained, tmp_path):
    _, _, checkpoint = trained
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated by 90 degrees
    Image.fromarray(base).save(photos / "rotated.jpg", exif=exif.tobytes())
    Image.fromarray(base).convert("L").save(photos / "gray.jpg")
    Image.fromarray(base).convert("RGBA").save(tmp_path / "alpha.png")
    out = tmp_path / "out"
    assert main(["predict", "--weights", str(checkpoint), str(photos), str(tmp_path / "*.png"), "--out", str(out)]) == 0
    sizes = {p.stem: Image.open(p).size for p in out.glob("*.png")  # the class colours
             if p.name != "legend.png" and not p.stem.endswith("_overlay")}
    assert sizes == {"rotated": (30, 50), "gray": (50, 30), "alpha": (50, 30)}  # (width, height), EXIF applied
    assert Image.open(out / "rotated.png").mode == "P"
    assert Image.open(out / "rotated_overlay.png").size == (30, 50)


def test_predict_missing_input_is_a_clear_error(trained, tmp_path, capsys):
    _, _, checkpoint = trained
    assert main(["predict", "--weights", str(checkpoint), str(tmp_path / "nope.jpg"), "--out", str(tmp_path)]) == 2
    assert "no such file, folder or matching glob" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_round_trips_with_dynamic_sizes(trained, tmp_path, fmt, capsys):
    _, _, checkpoint = trained
    out = tmp_path / f"model.{fmt}"
    assert main(["export", "--weights", str(checkpoint), "--format", fmt, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("parity ") == 4 and "321x479" in printed and "parity OK" in printed
    assert out.is_file()


def test_foreign_weights_need_an_architecture(trained, tmp_path, capsys):
    _, model, _ = trained
    bare = tmp_path / "bare.pth"
    torch.save(model.state_dict(), bare)
    assert main(["export", "--weights", str(bare)]) == 2
    assert "--model, --backbone and --num-classes" in capsys.readouterr().err
    assert main(["export", "--weights", str(bare), "--format", "torchscript", "--model", "deeplabv3", "--backbone",
                 "resnet18", "--num-classes", "7", "--out", str(tmp_path / "m.pt")]) == 0  # fmt: skip


def test_eval_with_msc_max_fusion(trained, capsys):
    root, _, checkpoint = trained
    out = root / "eval_msc"
    assert main(["eval", "--config", str(root / "config.yaml"), "--weights", str(checkpoint), "--out", str(out),
                 "--msc", "--runtime", "eager"]) == 0  # fmt: skip
    assert json.loads((out / "metrics.json").read_text())["pixels"] > 0
    capsys.readouterr()
    assert main(["eval", "--config", str(root / "config.yaml"), "--weights", str(checkpoint), "--out", str(out),
                 "--msc", "--runtime", "onnxruntime"]) == 2  # fmt: skip
    assert "--runtime eager" in capsys.readouterr().err


def test_commands_never_write_over_inputs_or_weights(trained, tmp_path, capsys):
    _, _, checkpoint = trained
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(np.full((20, 24), 90, np.uint8)).save(photos / "gray.png")
    before = (photos / "gray.png").read_bytes()
    assert main(["predict", "--weights", str(checkpoint), str(photos), "--out", str(photos)]) == 2
    assert f"--out {photos} is the input folder {photos}" in capsys.readouterr().err
    # The input named as a file: its own outputs are checked one by one, and the label PNG would replace it.
    assert main(["predict", "--weights", str(checkpoint), str(photos / "gray.png"), "--out", str(photos)]) == 2
    assert f"refusing to write {photos / 'gray.png'}: it is the input image" in capsys.readouterr().err
    assert (photos / "gray.png").read_bytes() == before and sorted(p.name for p in photos.iterdir()) == ["gray.png"]
    weights = checkpoint.read_bytes()
    assert main(["export", "--weights", str(checkpoint), "--out", str(checkpoint)]) == 2
    assert "the --weights file" in capsys.readouterr().err
    assert checkpoint.read_bytes() == weights


def test_eval_into_an_unwritable_folder_fails_before_evaluating(trained, tmp_path, capsys):
    root, _, checkpoint = trained
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")  # refuses root too, unlike chmod
    assert main(["eval", "--config", str(root / "config.yaml"), "--weights", str(checkpoint),
                 "--out", str(blocker / "eval")]) == 2  # fmt: skip
    captured = capsys.readouterr()
    assert "cannot write the evaluation output folder" in captured.err and str(blocker) in captured.err
    assert "mIoU" not in captured.out  # refused before the work, not after it
