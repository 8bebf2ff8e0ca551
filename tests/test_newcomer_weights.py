"""What a new user met with published weights (issue 16, items 2, 3 and 8): the command line never runs another model
than the one a weights file implies, an export says what it takes and gives, and a published file that is not where
the user said is found in the torch hub cache or named with its URL. Every file is made here; nothing is downloaded."""

import json
import re

import numpy as np
import pytest
import torch
from conftest import randomise_batchnorm
from PIL import Image
from torchvision.models import segmentation

import atrous
from atrous.checkpoint import model_checkpoint
from atrous.cli import _load_model, build_parser, main
from atrous.errors import WeightsError
from atrous.export import export_metadata, export_model, exported_metadata
from atrous.weights import zoo as zoo_module

TORCHVISION_FILE = "deeplabv3_resnet50_coco-cd0a2569.pth"  # the published name; the values here are random
TORCHVISION_URL = "https://download.pytorch.org/models/deeplabv3_resnet50_coco-cd0a2569.pth"


@pytest.fixture(scope="module")
def torchvision_file(tmp_path_factory):
    """(torchvision's deeplabv3_resnet50 with random weights, its state dict saved under the published name)."""
    reference = segmentation.deeplabv3_resnet50(weights=None, weights_backbone=None, aux_loss=True, num_classes=21)
    randomise_batchnorm(reference)
    path = tmp_path_factory.mktemp("torchvision") / TORCHVISION_FILE
    torch.save(reference.state_dict(), path)
    return reference, path


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("images") / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(path)
    return path


def _loaded(*flags):
    """The model ``atrous predict`` builds from these flags."""
    return _load_model(build_parser().parse_args(["predict", *flags, "image.png", "--out", "out"]))


# ------------------------------------------------------------------- item 2: the architecture a file implies


@pytest.mark.parametrize(
    "flags, asked, instead",
    [
        (["--model", "deeplabv3", "--backbone", "resnet50", "--output-stride", "16"],
         "output_stride 16 (output_stride=16, --output-stride 16) where the file has 8",
         "leave out --output-stride 16; or --preset deeplabv3_resnet50; or --output-stride 8"),
        (["--preset", "deeplabv3_resnet101"],
         "backbone resnet101 (spec=PRESETS['deeplabv3_resnet101'], --preset deeplabv3_resnet101) where the file has",
         "leave out --preset deeplabv3_resnet101; or --preset deeplabv3_resnet50"),
        (["--model", "deeplabv3plus"],
         "name deeplabv3plus (name='deeplabv3plus', --model deeplabv3plus) where the file has deeplabv3",
         "leave out --model deeplabv3plus; or --preset deeplabv3_resnet50; or --model deeplabv3"),
        (["--atrous-rates", "6,12,18"], "atrous_rates (6, 12, 18)", "--atrous-rates 12,24,36"),
    ],
)  # fmt: skip
def test_the_cli_refuses_another_architecture_than_a_torchvision_file_implies(
    torchvision_file, image, tmp_path, capsys, flags, asked, instead
):
    _, path = torchvision_file
    assert main(["predict", "--weights", str(path), *flags, str(image), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    implied = ("its torchvision_deeplabv3_resnet weights are for deeplabv3 on resnet50 at output stride 8 with rates "
               "(12, 24, 36)")  # fmt: skip
    assert implied in error and asked in error and instead in error
    assert not (tmp_path / "out").exists()  # refused before anything ran


def test_the_cli_builds_what_a_torchvision_file_implies_when_no_flag_contradicts_it(torchvision_file, image, tmp_path):
    """The issue's command: --model deeplabv3 --backbone resnet50 --num-classes 21 used to build OS16, rates (6, 12, 18)."""
    reference, path = torchvision_file
    flags = ["--weights", str(path), "--model", "deeplabv3", "--backbone", "resnet50", "--num-classes", "21"]
    model = _loaded(*flags)
    assert model.spec == atrous.build_model(atrous.PRESETS["deeplabv3_resnet50"]).spec  # OS8, (12, 24, 36), aux
    images = torch.randn(1, 3, 41, 53)
    with torch.no_grad():
        torch.testing.assert_close(model(images).logits, reference(images)["out"], atol=1e-4, rtol=0)
    assert _loaded("--weights", str(path), "--preset", "deeplabv3_resnet50").spec == model.spec
    assert main(["predict", *flags, str(image), "--out", str(tmp_path / "out"), "--runtime", "eager"]) == 0
    assert (tmp_path / "out" / "photo.png").is_file()


def test_python_builds_what_it_is_asked_and_warns(torchvision_file, caplog):
    _, path = torchvision_file
    with caplog.at_level("WARNING", logger="atrous"):
        model = atrous.from_pretrained(path, output_stride=16)
    assert model.spec.output_stride == 16
    assert "does not fit the model asked" in caplog.text and "(built as asked)" in caplog.text
    with pytest.raises(WeightsError, match="output_stride 16 .* where the file has 8"):
        atrous.from_pretrained(path, output_stride=16, other_architecture="refuse")


def _vainf_layout(torchvision_state: dict) -> dict:
    """VainF's DeepLabV3 on ResNet-50: torchvision's backbone and head one level deeper, no aux head."""
    return {key.replace("classifier.", "classifier.classifier.", 1): value for key, value in torchvision_state.items()
            if not key.startswith("aux_classifier.")}  # fmt: skip


def test_a_stride_a_peer_file_records_is_kept_and_one_it_does_not_is_the_users(torchvision_file, tmp_path, capsys):
    """VainF records the output stride only in its file names: there it is the file's, elsewhere the user's to say."""
    state = _vainf_layout(torchvision_file[0].state_dict())
    named = tmp_path / "best_deeplabv3_resnet50_voc_os16.pth"
    unnamed = tmp_path / "my_vainf_run.pth"
    torch.save({"model_state": state}, named)
    torch.save({"model_state": state}, unnamed)
    assert main(["export", "--weights", str(named), "--output-stride", "8"]) == 2
    error = capsys.readouterr().err
    assert "its vainf_deeplabv3 weights are for deeplabv3 on resnet50 at output stride 16" in error
    assert "output_stride 8 (output_stride=8, --output-stride 8) where the file has 16" in error
    assert _loaded("--weights", str(unnamed), "--output-stride", "8").spec.output_stride == 8


# ------------------------------------------------------------------------------ item 3: exports say what they are


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """(a small model with class names and a palette, its atrous checkpoint)."""
    torch.manual_seed(0)
    model = randomise_batchnorm(atrous.build_model("deeplabv3", backbone="resnet18", num_classes=3)).eval()
    model.set_labels(["sky", "road", "car"], np.array([[70, 130, 180], [128, 64, 128], [0, 0, 142]], np.uint8))
    path = tmp_path_factory.mktemp("labelled") / "labelled.pt"
    torch.save(model_checkpoint(model), path)
    return model, path


def test_the_export_command_writes_and_prints_what_the_onnx_file_takes_and_gives(labelled, tmp_path, capsys):
    import onnx
    import onnxruntime

    model, checkpoint = labelled
    out = tmp_path / "model.onnx"
    assert main(["export", "--weights", str(checkpoint), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    stored = {prop.key: prop.value for prop in onnx.load(str(out)).metadata_props}
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_modelmeta().custom_metadata_map == stored == export_metadata(model)
    assert json.loads(stored["class_names"]) == ["sky", "road", "car"]
    assert json.loads(stored["palette"]) == [[70, 130, 180], [128, 64, 128], [0, 0, 142]]
    normalization = json.loads(stored["normalization"])
    assert normalization["mean"] == pytest.approx(model.normalization.mean) and normalization["channel_order"] == "RGB"
    assert normalization["applied"] == "inside the graph" and stored["input_dtype"] == "uint8"
    assert atrous.ModelSpec.from_dict(json.loads(stored["model_spec"])) == model.spec
    assert stored["atrous_version"] == atrous.__version__ and stored["num_classes"] == "3"
    assert session.get_inputs()[0].shape == ["batch", 3, "height", "width"]
    assert session.get_outputs()[0].shape == ["batch", "classes", "height", "width"]
    for key, value in stored.items():
        assert f"  {key}: {value}" in printed
    assert "parity OK" in printed


def test_a_torchscript_export_carries_the_metadata_that_feeds_it(labelled, tmp_path):
    """The normalisation the metadata states is the one the graph needs: applied by hand, it gives eager's logits."""
    model, _ = labelled
    path = export_model(model, tmp_path / "model.pt", format="torchscript", normalized_input=True)
    stored = exported_metadata(path)
    assert stored == export_metadata(model, normalized_input=True) and stored["input_dtype"] == "float32"
    normalization = json.loads(stored["normalization"])
    assert normalization["applied"] == "by the caller, before the graph"
    photos = torch.randint(0, 256, (2, 3, 37, 45), dtype=torch.uint8)
    order = [2, 1, 0] if normalization["channel_order"] == "BGR" else [0, 1, 2]
    mean, std = (torch.tensor(normalization[key]).view(1, 3, 1, 1) for key in ("mean", "std"))
    fed = (photos[:, order].float() - mean) / std
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(str(path))(fed), model(model.normalization(photos)).logits,
                                   atol=1e-4, rtol=0)  # fmt: skip


# --------------------------------------------------------------------- item 8: where a published file is


def test_a_published_file_missing_where_named_is_taken_from_the_torch_hub_cache(
    torchvision_file, tmp_path, monkeypatch, caplog
):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = tmp_path / "hub" / "checkpoints" / TORCHVISION_FILE
    cached.parent.mkdir(parents=True)
    cached.write_bytes(torchvision_file[1].read_bytes())
    named = tmp_path / "elsewhere" / TORCHVISION_FILE  # does not exist
    with pytest.raises(WeightsError, match=f"{cached}: its sha256 starts [0-9a-f]{{8}}, not cd0a2569"):
        atrous.from_pretrained(named)  # a file under the published name that is not the publisher's is refused
    monkeypatch.setattr(zoo_module, "check_hash", lambda path, entry: None)  # a stand-in: not the publisher's bytes
    with caplog.at_level("INFO", logger="atrous"):
        model = atrous.from_pretrained(named)
    assert f"{named} does not exist: using the file of the zoo entry deeplabv3_resnet50_coco_voc" in caplog.text
    assert f"from the torch hub cache, {cached}" in caplog.text
    assert model.spec.output_stride == 8


@pytest.mark.parametrize(
    "name, expected",
    [
        (TORCHVISION_FILE, f"download {TORCHVISION_URL} into {{hub}} .* --weights deeplabv3_resnet50_coco_voc"),
        ("resnet50-0676ba61.pth",
         "ImageNet weights of resnet50: download https://download.pytorch.org/models/resnet50-0676ba61.pth into {hub}"),
        ("DeepLab_resnet_pretrained_imagenet.pth", "no direct download: .* Put DeepLab_resnet_pretrained_imagenet.pth"),
    ],
)  # fmt: skip
def test_a_missing_published_file_names_its_url_and_the_folder_to_put_it_in(
    offline_hub, image, tmp_path, capsys, name, expected
):
    assert main(["predict", "--weights", name, str(image), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"atrous predict: error: weights file not found: {name}. It is ")
    assert re.search(expected.format(hub=re.escape(str(offline_hub))), error), error
    assert f"{offline_hub} (the torch hub cache" in error


def test_an_unknown_missing_file_is_only_not_found(offline_hub, image, tmp_path, capsys):
    assert main(["predict", "--weights", "my_model.pth", str(image), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip() == "atrous predict: error: weights file not found: my_model.pth"


def test_messages_the_cli_reaches_name_the_override_to_type(offline_hub, image, tmp_path, capsys):
    import torchvision

    init = "deeplabv2_resnet101_caffe_init_adaptsegnet"
    assert main(["predict", "--weights", init, str(image), "--out", str(tmp_path / "out")]) == 2
    assert f"model.pretrained_backbone={init}" in capsys.readouterr().err
    backbone_only = tmp_path / "resnet18_imagenet.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), backbone_only)
    assert main(["predict", "--weights", str(backbone_only), str(image), "--out", str(tmp_path / "out")]) == 2
    assert f"model.pretrained_backbone={backbone_only}" in capsys.readouterr().err
    with pytest.raises(WeightsError, match=r"model\.pretrained_backbone=PATH"):  # atrous train's imagenet download
        atrous.build_model("deeplabv3", backbone="resnet18", num_classes=3, pretrained_backbone="imagenet")
