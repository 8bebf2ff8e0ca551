"""A checkpoint written by an earlier atrous (the landed main before the publisher folders, c372e5e) loads the same.

The fixture was written by that version's ``model_checkpoint`` (DeepLabV3+ on ResNet-18, aux head, 3 classes with
names and palette, checksum): sparse random weights, gzipped to stay small, and the logits that version computed on
a fixed image."""

import gzip
from pathlib import Path

import numpy as np
import torch

import atrous
from atrous.checkpoint import load_checkpoint

FIXTURES = Path(__file__).parent / "fixtures"
NAME = "atrous-0.1.0-c372e5e-deeplabv3plus-r18"


def _reference() -> dict[str, torch.Tensor]:
    """The fixed image and the logits that version computed on it (NumPy arrays in the fixture)."""
    with np.load(FIXTURES / f"{NAME}.logits.npz") as arrays:
        return {key: torch.from_numpy(arrays[key]) for key in ("image", "logits")}


def _unpacked(tmp_path: Path) -> Path:
    path = tmp_path / f"{NAME}.pt"
    path.write_bytes(gzip.decompress((FIXTURES / f"{NAME}.pt.gz").read_bytes()))
    return path


def test_an_earlier_versions_checkpoint_loads_with_its_logits_and_labels(tmp_path):
    path = _unpacked(tmp_path)
    reference = _reference()
    model = atrous.load_trained_model(path)
    assert model.spec.name == "deeplabv3plus" and model.spec.backbone == "resnet18" and model.aux_head is not None
    assert model.class_names == ["background", "cat", "dog"] and model.palette.tolist()[1] == [200, 30, 30]
    with torch.no_grad():
        logits = model(reference["image"]).logits
    assert reference["logits"].std() > 0.1  # the fixture's logits vary: a wrong tensor shows
    torch.testing.assert_close(logits, reference["logits"], rtol=0, atol=1e-5)
    assert load_checkpoint(path)["checksum"]  # the strict reader of training checkpoints takes it too


def test_a_wrong_tensor_in_the_old_checkpoint_changes_the_logits(tmp_path):
    """Negative control: the comparison above sees one tensor read into the wrong place."""
    path = _unpacked(tmp_path)
    reference = _reference()
    contents = load_checkpoint(path)
    state = contents["model"]
    state["head.fuse1.conv.weight"] = state["head.fuse1.conv.weight"].flip(0)  # its output channels reordered
    model = atrous.build_model(atrous.ModelSpec.from_dict(contents["spec"]))
    model.load_state_dict(state)
    with torch.no_grad():
        logits = model.eval()(reference["image"]).logits
    assert (logits - reference["logits"]).abs().max() > 1e-3
