"""What a user hears when --weights is not a weights file (a FIFO, a device, an image, an empty file, a Git LFS
pointer, another zip) or a checkpoint's stored description is not a model atrous builds: one line naming the file,
saying what it is and what to do, and the flags it suggests do fix it."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import atrous
from atrous.checkpoint import model_checkpoint
from atrous.cli import main


@pytest.fixture(scope="module")
def checkpoint():
    torch.manual_seed(0)
    model = atrous.build_model("deeplabv2", backbone="mobilenet_v3_large", num_classes=3, output_stride=32).eval()
    return model_checkpoint(model)


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(np.zeros((20, 24, 3), dtype=np.uint8)).save(folder / "a.png")
    return folder


def _said(capsys, weights, photos, *flags) -> str:
    out = photos.parent / "out"
    code = main(["predict", "--weights", str(weights), *flags, str(photos), "--out", str(out), "--runtime", "eager"])
    error = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in error, error
    return error.removeprefix("atrous predict: error: ")


def _strange(tmp_path, kind):
    path = tmp_path / f"{kind}.pt"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        path.symlink_to("/dev/zero")
    elif kind == "jpeg":
        Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(path, format="JPEG")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "lfs":
        path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 178793939\n")
    elif kind == "zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("weights/README.md", "the weights are elsewhere")
    elif kind == "dangling":
        path.symlink_to(tmp_path / "gone.pt")
    return path


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("fifo", "{path} is a FIFO (named pipe), not a weights file: pass the weights file itself"),
        ("device", "{path} is a character device (a link to /dev/zero), not a weights file: pass the weights file"),
        ("jpeg", "{path} is a JPEG image, not a weights file (a .pt or .pth file is a zip archive or a pickle"),
        ("empty", "{path} is empty (0 bytes: an interrupted download or copy?), not a weights file"),
        ("lfs", "{path} is a Git LFS pointer, not the file itself (run `git lfs pull` where you cloned it)"),
        ("zip", "{path} is a zip archive without a data.pkl (it holds weights/README.md): not a weights file"),
        ("dangling", "{path} is a link to {tmp_path}/gone.pt, which does not exist"),
    ],
)
def test_a_file_that_is_not_weights_is_named_for_what_it_is(tmp_path, photos, capsys, kind, expected):
    path = _strange(tmp_path, kind)
    said = _said(capsys, path, photos)
    assert said.startswith(expected.format(path=path, tmp_path=tmp_path)), said
    assert not (photos.parent / "out").exists()


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("num_classes", 1e9, "num_classes must be an integer in [1, 65535], got 1000000000.0"),
        ("output_stride", 3, "unsupported output_stride 3; choose from [8, 16, 32] on mobilenet_v3_large"),
        ("backbone", "../../etc", "unknown backbone '../../etc'; choose from"),
        ("name", "x" * 500, "unknown model 'xxxxxxxx"),
    ],
)
def test_a_stored_description_that_is_no_model_names_the_file_and_the_flags_that_fix_it(
    checkpoint, tmp_path, photos, capsys, field, value, problem
):
    path = tmp_path / "described.pt"
    torch.save({**checkpoint, "spec": {**checkpoint["spec"], field: value}}, path)
    said = _said(capsys, path, photos)
    assert said.startswith(f"{path}: the model description stored in it is not valid ({problem}"), said
    assert said.endswith("pass --preset NAME, or --model, --backbone and --num-classes to say which architecture the "
                         "weights are for (spec= or name=, backbone=, num_classes= in Python)")  # fmt: skip
    assert len(said) < 600  # a 500-character name is cut, not repeated
    flags = ["--model", "deeplabv2", "--backbone", "mobilenet_v3_large", "--num-classes", "3", "--output-stride", "32"]
    out = photos.parent / "fixed"
    assert main(["predict", "--weights", str(path), *flags, str(photos), "--out", str(out), "--runtime", "eager"]) == 0
    assert (out / "a.png").is_file()


def test_a_tensorflow_checkpoint_of_a_backbone_only_is_named_as_one(tmp_path, photos, capsys):
    fixture = Path(__file__).parent / "fixtures" / "tf" / "tf1_dtypes"  # an xception_65 stem among other variables
    for name in ("model.ckpt.index", "model.ckpt.data-00000-of-00001"):
        said = _said(capsys, fixture / name, photos)
        assert said == (f"{fixture / name}: Google's xception_65 checkpoint holds a backbone only (no logits/semantic), "
                        "not a segmentation model: start a training from it, model.pretrained_backbone="
                        f"{fixture / name} (in Python build_model(..., pretrained_backbone=path))")  # fmt: skip
