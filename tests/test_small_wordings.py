"""Issue 29 D17: the small wordings a user trips over, each said right: the missing best.pt names what is there,
invalid labels name the flags that fix them, a missing dataset root names data.root, from_pretrained's assumptions
are warnings, the int8 log names the final file, one image is "a label PNG", an animated image says which frame."""

from __future__ import annotations

import logging
import shutil
import warnings

import numpy as np
import pytest
import torch
from data_fixtures import write_png
from PIL import Image

import atrous
import atrous.quantize
from atrous.checkpoint import model_checkpoint
from atrous.cli import main
from atrous.data import build_dataset
from atrous.data.io import read_image
from atrous.errors import DataError, MissingFileError
from atrous.runtime import cached_int8_onnx


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    model = atrous.build_model("deeplabv2", backbone="mobilenet_v3_large", num_classes=3, output_stride=32).eval()
    path = tmp_path_factory.mktemp("small") / "model.pt"
    torch.save(model_checkpoint(model), path)
    return path, model


def test_a_missing_best_pt_names_the_checkpoints_beside_it(weights, tmp_path, capsys):
    """A run stopped with --stop-at before its first validation has last.pt and no best.pt."""
    checkpoints = tmp_path / "run" / "checkpoints"
    checkpoints.mkdir(parents=True)
    shutil.copy(weights[0], checkpoints / "last.pt")
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    code = main(["predict", "--weights", str(checkpoints / "best.pt"), str(tmp_path / "a.png"), "--out",
                 str(tmp_path / "out")])  # fmt: skip
    assert code == 2
    assert capsys.readouterr().err.strip() == (f"atrous predict: error: weights file not found: {checkpoints}/best.pt "
                                               f"({checkpoints} holds last.pt)")  # fmt: skip


def test_invalid_labels_of_a_folder_dataset_name_the_flags_that_fix_them(tmp_path, capsys):
    write_png(tmp_path / "train" / "images" / "a.png", np.zeros((8, 8, 3), dtype=np.uint8))
    write_png(tmp_path / "train" / "masks" / "a.png", np.full((8, 8), 5, dtype=np.uint8))
    dataset = build_dataset("folder", tmp_path, "train", num_classes=3)
    with pytest.raises(DataError) as invalid:
        dataset.load(0)
    assert str(invalid.value).endswith(f"label values [5] are not valid for folder {tmp_path}/train (3 classes: "
                                       "expected 0..2, 255); if the masks hold more classes, say how many: --num-classes N "
                                       "(data.num_classes); if their values are not class indices, map them: "
                                       "--label-map RAW:CLASS,... (data.label_mapping)")  # fmt: skip
    assert main(["data", "check", "--dataset", "folder", "--root", str(tmp_path), "--num-classes", "3"]) == 1
    assert "--num-classes N (data.num_classes)" in capsys.readouterr().out


def test_a_missing_dataset_root_names_the_setting_and_flags(tmp_path):
    with pytest.raises(MissingFileError) as missing:
        build_dataset("voc", tmp_path / "VOCdevkit", "train")
    assert str(missing.value) == (f"dataset root {tmp_path}/VOCdevkit does not exist (dataset 'voc'): point "
                                  "data.root=PATH (atrous train --data-root, atrous data --root) at the folder that "
                                  "holds it")  # fmt: skip


def test_the_int8_log_names_the_file_it_leaves_not_its_temporary(weights, tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(atrous.quantize, "quantize_onnx", lambda fp32, out, calibration: shutil.copyfile(fp32, out))
    with caplog.at_level(logging.INFO, logger="atrous"):
        path = cached_int8_onnx(weights[1], torch.zeros(1, 3, 33, 33), cache_dir=tmp_path)
    said = [record.getMessage() for record in caplog.records if "int8" in record.getMessage()]
    assert said and said[-1].endswith(f": {path}") and ".partial" not in " ".join(said)


def test_one_image_is_a_label_png_not_1_label_pngs(weights, tmp_path, capsys):
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    out = tmp_path / "out"
    assert main(["predict", "--weights", str(weights[0]), str(tmp_path / "a.png"), "--out", str(out),
                 "--runtime", "eager"]) == 0  # fmt: skip
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    assert printed == f"a label PNG and an overlay, and the legend of their colours, written to {out}"


@pytest.mark.parametrize(("suffix", "kind"), [(".gif", "GIF"), (".tiff", "TIFF")])
def test_an_animated_or_multi_page_image_says_its_first_frame_is_used(tmp_path, caplog, suffix, kind):
    frames = [Image.fromarray(np.full((6, 8, 3), value, dtype=np.uint8)) for value in (10, 200, 90)]
    path = tmp_path / f"moving{suffix}"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    with caplog.at_level(logging.WARNING, logger="atrous"):
        image = read_image(path)
    assert f"{path}: {kind} of 3 frames: the first is used" in caplog.text
    assert image.shape == (6, 8, 3) and abs(int(image[0, 0, 0]) - 10) <= 2
    caplog.clear()
    Image.fromarray(np.zeros((6, 8, 3), dtype=np.uint8)).save(tmp_path / "still.gif")
    with warnings.catch_warnings(), caplog.at_level(logging.WARNING, logger="atrous"):
        read_image(tmp_path / "still.gif")
    assert "frames" not in caplog.text  # the control: a single frame says nothing
