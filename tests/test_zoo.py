"""The model zoo: every entry builds and takes a file in its publisher's layout; downloads are hash-checked and the
offline message says which file to put where. Nothing is downloaded here."""


import numpy as np
import pytest
import torch
from data_fixtures import write_jpeg
from test_google_deeplab import GOOGLE, published_variables
from test_peer_files import (
    _KazutoDeepLabV2,
    _KazutoMSC,
    _MMSegDeepLab,
    _VainFDeepLabV3,
    _VainFDeepLabV3Plus,
    _VainFMobileNet,
    vainf_mobilenet_keys,
)
from tf_writer import write_checkpoint, write_tarball
from torchvision.models import segmentation

import atrous
from atrous.cli import main
from atrous.errors import WeightsError
from atrous.registry import zoo
from atrous.weights import zoo as zoo_module
from atrous.weights.load import load_pretrained_backbone


def _published_layout(name: str) -> dict:
    """A state dict of random tensors as the entry's publisher writes it."""
    entry = zoo()[name]
    torch.manual_seed(0)
    if entry.publisher == "torchvision":
        builder = getattr(segmentation, f"deeplabv3_{entry.spec.backbone}")
        return builder(weights=None, weights_backbone=None, aux_loss=True, num_classes=21).state_dict()
    if entry.publisher == "kazuto1011/deeplab-pytorch":
        return _KazutoMSC(_KazutoDeepLabV2(num_classes=entry.spec.num_classes)).state_dict()
    if entry.publisher == "open-mmlab/mmsegmentation":
        depth = 101 if entry.spec.backbone == "resnet101_v1c" else 50
        model = _MMSegDeepLab(entry.spec.num_classes, plus="plus" in entry.spec.name, depth=depth)
        return {"meta": {"mmseg_version": "0.5.0"}, "state_dict": model.state_dict()}
    if entry.publisher == "VainF/DeepLabV3Plus-Pytorch":
        plus, classes = entry.spec.name == "deeplabv3plus_vainf", entry.spec.num_classes
        if entry.spec.backbone == "mobilenet_v2_vainf":
            state = vainf_mobilenet_keys(_VainFMobileNet(16, plus, num_classes=classes).state_dict())
        else:
            depth = int(entry.spec.backbone.removeprefix("resnet"))
            model = _VainFDeepLabV3Plus(16, classes, depth=depth) if plus else _VainFDeepLabV3(16, classes, depth=depth)
            state = model.state_dict()
        return {"cur_itrs": 30000, "model_state": state, "best_score": np.float64(0.7)}
    raise AssertionError(f"no layout writer for {entry.publisher}")


def _write_published(name: str, path, tensors=None) -> None:
    """The entry's file as its publisher ships it: Google's a tarball of a TensorFlow checkpoint, the others a torch
    file (``tensors``: what to write instead of a whole model of the entry's layout)."""
    if zoo()[name].publisher != GOOGLE:
        torch.save(tensors if tensors is not None else _published_layout(name), path)
        return
    values = tensors if tensors is not None else published_variables(zoo()[name].spec)
    prefix = write_checkpoint(path.parent / "train" / "model.ckpt", {k: v.numpy() for k, v in values.items()})
    write_tarball(path, prefix, gzip=False)  # a tarball as Google's; gzip'd ones: tests/test_google_deeplab.py


# Hub repositories (url hf-hub:...): tests/test_transformers_models.py and tests/test_keras_hub.py run them.
MODELS = sorted(name for name, entry in zoo().items() if entry.kind == "model" and not (entry.url or "").startswith("hf-hub:"))
BACKBONE_INITS = sorted(name for name, entry in zoo().items() if entry.kind == "backbone_init")


def test_the_catalogue_says_where_each_score_was_published():
    assert len(MODELS) >= 21 and len(BACKBONE_INITS) >= 2
    assert {zoo()[name].publisher for name in MODELS} >= {"torchvision", "kazuto1011/deeplab-pytorch",
                                                         "open-mmlab/mmsegmentation", "VainF/DeepLabV3Plus-Pytorch"}  # fmt: skip
    for entry in zoo().values():
        assert entry.url is None and "drive" in entry.download.lower() or entry.url.startswith(("https://", "http://",
                                                                                                  "hf-hub:"))
        if entry.kind == "model" and not ((entry.url or "").startswith("hf-hub:") and not entry.published):  # a card without a score
            assert entry.published["source"] and entry.published["mIoU"] > 0
        if entry.hash is not None:
            assert entry.hash in entry.filename  # the sha256 prefix the publisher's file name carries


@pytest.mark.parametrize("name", BACKBONE_INITS)
def test_backbone_init_entries_start_a_backbone_and_are_not_models(name, tmp_path, monkeypatch, offline_hub):
    entry = zoo()[name]
    source = atrous.build_model(entry.spec, num_classes=4)
    if entry.publisher == GOOGLE:  # Google's ImageNet variables, as its tarball holds them
        init_file = {key: value for key, value in published_variables(source.spec).items()
                     if key.startswith(("xception", "resnet"))}  # fmt: skip
        load_pretrained_backbone(source, init_file)
    else:
        init_file = {f"Scale.{key.removeprefix('backbone.')}": value for key, value in source.state_dict().items()
                     if key.startswith("backbone.")}  # fmt: skip
    with pytest.raises(WeightsError, match=f"{entry.filename} at {offline_hub / entry.filename}"):
        atrous.build_model(entry.spec, num_classes=4, pretrained_backbone=name)
    offline_hub.mkdir(parents=True, exist_ok=True)
    _write_published(name, offline_hub / entry.filename, init_file)
    monkeypatch.setattr(zoo_module, "check_hash", lambda path, entry: None)  # a stand-in: not the publisher's bytes
    model = atrous.build_model(entry.spec, num_classes=4, pretrained_backbone=name)
    for key, value in model.backbone.state_dict().items():
        torch.testing.assert_close(value, source.backbone.state_dict()[key], rtol=0, atol=0)
    with pytest.raises(WeightsError, match=f"pretrained_backbone={name!r}"):
        atrous.from_pretrained(name)


@pytest.mark.parametrize("name", MODELS)
def test_every_entry_runs_from_a_file_in_its_publishers_layout(name, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    entry = zoo()[name]
    cached = tmp_path / "hub" / "checkpoints" / entry.filename
    cached.parent.mkdir(parents=True)
    _write_published(name, cached)
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("downloaded a cached file"))
    monkeypatch.setattr(zoo_module, "check_hash", lambda path, entry: None)  # a stand-in: not the publisher's bytes
    model = atrous.from_pretrained(name)
    assert model.num_classes == entry.spec.num_classes and not model.training
    names, _ = entry.class_names_and_palette()
    assert model.class_names == names and model.palette is not None
    model.pad_to = None  # Google's published canvas (up to 1025x2049) is too slow here: the weights are the test
    with torch.no_grad():
        assert model(torch.randn(1, 3, 33, 41)).logits.shape == (1, entry.spec.num_classes, 33, 41)


def test_offline_the_error_names_the_file_and_the_folder(offline_hub, tmp_path, capsys):
    expected = offline_hub / "deeplabv3_resnet50_coco-cd0a2569.pth"
    with pytest.raises(WeightsError, match=f"Put the file deeplabv3_resnet50_coco-cd0a2569.pth at {expected}"):
        atrous.from_pretrained("deeplabv3_resnet50_coco_voc")
    photos = tmp_path / "photos"  # inputs and --out are checked first: a folder with an image, --out beside it
    write_jpeg(photos / "a.jpg", 24, 32)
    assert main(["predict", "--weights", "deeplabv3_resnet50_coco_voc", str(photos), "--out", str(tmp_path / "o")]) == 2
    assert "Offline?" in capsys.readouterr().err


def test_a_download_is_checked_against_the_published_hash(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    calls = []

    def download(url, path, hash_prefix=None, progress=True):
        calls.append((url, hash_prefix))
        raise RuntimeError(f'invalid hash value (expected "{hash_prefix}", got "0000")')

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    with pytest.raises(WeightsError, match="does not match the published hash cd0a2569"):
        atrous.from_pretrained("deeplabv3_resnet50_coco_voc")
    assert calls == [(zoo()["deeplabv3_resnet50_coco_voc"].url, "cd0a2569")]


def test_a_cached_file_that_is_not_the_publishers_is_refused(tmp_path, monkeypatch):
    """A byte flipped in the hub cache, or another file put there under the published name, never loads."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    entry = zoo()["deeplabv3_resnet50_coco_voc"]
    cached = tmp_path / "hub" / "checkpoints" / entry.filename
    cached.parent.mkdir(parents=True)
    torch.save(_published_layout("deeplabv3_resnet50_coco_voc"), cached)
    with pytest.raises(WeightsError, match=f"{cached}: its sha256 starts [0-9a-f]{{8}}, not cd0a2569 .* Delete it"):
        atrous.from_pretrained("deeplabv3_resnet50_coco_voc")
    assert cached.is_file()  # the user's file is left for them to look at


def test_models_pretrained_lists_the_zoo(capsys):
    assert main(["models", "--pretrained"]) == 0
    printed = capsys.readouterr().out
    assert all(name in printed for name in zoo()) and "published mIoU 76.65" in printed
