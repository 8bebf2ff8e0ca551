"""Weight loading from every supported format, against state dicts and files made here (no downloads)."""


import pytest
import torch
import torchvision
from conftest import randomise_batchnorm
from safetensors.torch import save_file
from torchvision.models import segmentation

import atrous
from atrous.checkpoint import model_checkpoint
from atrous.errors import WeightsError
from atrous.models import TORCHVISION_DEEPLABV3
from atrous.weights.load import detect_format


@pytest.mark.parametrize(
    "tv_name", ["deeplabv3_resnet50", "deeplabv3_resnet101", "deeplabv3_mobilenet_v3_large"]
)
def test_torchvision_deeplabv3_weights_give_torchvisions_logits(tv_name):
    reference = getattr(segmentation, tv_name)(weights=None, weights_backbone=None, aux_loss=True, num_classes=21)
    randomise_batchnorm(reference).eval()
    model = atrous.build_model(TORCHVISION_DEEPLABV3[tv_name]).eval()  # 21 classes, aux head
    report = atrous.load_weights(model, reference.state_dict())
    assert report.ok and not report.skipped and report.format.startswith("torchvision_deeplabv3")
    images = torch.randn(2, 3, 67, 90)
    with torch.no_grad():
        expected, ours = reference(images), model(images)
    torch.testing.assert_close(ours.logits, expected["out"], atol=1e-4, rtol=0)
    torch.testing.assert_close(ours.aux_logits, expected["aux"], atol=1e-4, rtol=0)


def test_torchvision_weights_without_aux_and_into_a_model_without_aux():
    reference = segmentation.deeplabv3_resnet50(weights=None, weights_backbone=None, aux_loss=False, num_classes=21)
    with_aux = atrous.build_model(TORCHVISION_DEEPLABV3["deeplabv3_resnet50"], aux=True)
    report = atrous.load_weights(with_aux, reference.state_dict())
    assert any("no aux head" in message for message in report.messages) and not report.missing

    reference = segmentation.deeplabv3_resnet50(weights=None, weights_backbone=None, aux_loss=True, num_classes=21)
    no_aux = atrous.build_model(TORCHVISION_DEEPLABV3["deeplabv3_resnet50"], aux=False)
    report = atrous.load_weights(no_aux, reference.state_dict())
    assert report.skipped and all(key.startswith("aux_head.") for key in report.skipped)
    assert any("aux=False" in message for message in report.messages)


def test_loading_torchvision_weights_into_other_rates_says_so():
    reference = segmentation.deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=21)
    model = atrous.build_model("deeplabv3", backbone="resnet50", num_classes=21)  # OS16, rates (6, 12, 18)
    report = atrous.load_weights(model, reference.state_dict())
    assert any("output stride 8 with ASPP rates (12, 24, 36)" in message for message in report.messages)


def test_other_class_count_skips_the_classifier_and_keeps_its_init():
    reference = segmentation.deeplabv3_resnet50(weights=None, weights_backbone=None, aux_loss=True, num_classes=21)
    model = atrous.build_model(TORCHVISION_DEEPLABV3["deeplabv3_resnet50"], num_classes=19, aux=True)
    fresh = model.head.classifier.weight.clone()
    report = atrous.load_weights(model, reference.state_dict())
    assert set(report.skipped) == {
        "head.classifier.weight", "head.classifier.bias", "aux_head.classifier.weight", "aux_head.classifier.bias"
    }
    assert any("21 classes, the model 19" in message for message in report.messages)
    assert torch.equal(model.head.classifier.weight, fresh)
    torch.testing.assert_close(model.head.aspp.project.conv.weight, reference.classifier[0].project[0].weight)


def _caffe_state_dict(num_classes: int, seed: int) -> dict[str, torch.Tensor]:
    """A state dict in the layout of the Caffe-converted DeepLab-v2 file: every key ``Scale.``-prefixed, its
    2048-input classifier as ``layer5.conv2d_list``, no ``num_batches_tracked`` (the file predates them)."""
    torch.manual_seed(seed)
    source = randomise_batchnorm(atrous.build_model("deeplabv2", num_classes=num_classes), seed)
    state = {}
    for key, value in source.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        key = key.replace("backbone.", "", 1).replace("head.classifiers.", "layer5.conv2d_list.")
        state[f"Scale.{key}"] = value.clone()
    return state


def test_caffe_file_loads_every_backbone_key_and_the_head_when_classes_match():
    state = _caffe_state_dict(num_classes=21, seed=1)
    assert detect_format(state) == "deeplabv2_caffe"
    assert "Scale.layer1.0.downsample.1.weight" in state and "Scale.layer5.conv2d_list.3.weight" in state
    model = atrous.build_model("deeplabv2", num_classes=21)
    report = atrous.load_weights(model, state)
    assert report.ok and not report.missing and not report.skipped
    torch.testing.assert_close(model.backbone.layer4[2].conv3.weight, state["Scale.layer4.2.conv3.weight"])
    torch.testing.assert_close(model.head.classifiers[3].bias, state["Scale.layer5.conv2d_list.3.bias"])


def test_caffe_file_with_other_classes_keeps_the_fresh_head(tmp_path):
    path = tmp_path / "DeepLab_resnet_pretrained_init-f81d91e8.pth"
    torch.save(_caffe_state_dict(num_classes=21, seed=2), path)
    model = atrous.get_deeplab_v2(num_classes=19, pretrain=True, pretrain_model_path=path)
    assert model.num_classes == 19 and model.head.classifiers[0].weight.shape[0] == 19
    saved = torch.load(path, weights_only=True)
    torch.testing.assert_close(model.backbone.conv1.weight, saved["Scale.conv1.weight"])
    report = atrous.load_weights(model, path)
    assert len([k for k in report.skipped if k.startswith("head.classifiers.")]) == 8
    assert not [k for k in report.missing if k.startswith("backbone.")]
    head_group = model.optim_parameters(2.5e-4)[1]
    assert head_group["lr"] == pytest.approx(2.5e-3)


def test_port_checkpoint_with_both_classifiers_loads_main_and_aux_heads():
    source = atrous.build_model("deeplabv2", num_classes=19, aux=True)
    state = {}
    for key, value in source.state_dict().items():
        key = key.replace("backbone.", "", 1)
        key = key.replace("aux_head.classifiers.", "layer5.conv2d_list.").replace("head.classifiers.", "layer6.conv2d_list.")
        state[key] = value
    assert detect_format(state) == "deeplabv2_port"
    model = atrous.get_deeplab_v2(num_classes=19, multi_level=True)
    report = atrous.load_weights(model, state)
    assert report.ok and not report.skipped
    torch.testing.assert_close(model.aux_head.classifiers[1].weight, source.aux_head.classifiers[1].weight)
    torch.testing.assert_close(model.head.classifiers[1].weight, source.head.classifiers[1].weight)


def test_caffe_weights_into_a_torchvision_resnet_is_the_wrong_architecture():
    model = atrous.build_model("deeplabv2", backbone="resnet101", num_classes=21)
    with pytest.raises(WeightsError, match="wrong architecture.*resnet101_caffe"):
        atrous.load_weights(model, _caffe_state_dict(num_classes=21, seed=3))
    report = atrous.load_weights(model, _caffe_state_dict(num_classes=21, seed=3), strict=False)
    assert any(message.startswith("warning:") for message in report.messages)


def test_torchvision_deeplabv3_weights_into_deeplabv3plus_raise_naming_keys():
    reference = segmentation.deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=21)
    model = atrous.build_model("deeplabv3plus", backbone="resnet50", num_classes=21)
    with pytest.raises(WeightsError, match=r"missing: head\.low_project"):
        atrous.load_weights(model, reference.state_dict())
    report = atrous.load_weights(model, reference.state_dict(), strict=False)
    assert report.missing and report.unexpected and report.loaded


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "mobilenet_v3_large"])
def test_torchvision_imagenet_backbones_load_into_the_backbone(name):
    imagenet = getattr(torchvision.models, name)(weights=None)
    model = atrous.build_model("deeplabv3plus", backbone=name, num_classes=5)
    report = atrous.load_weights(model, imagenet.state_dict())
    assert report.ok and report.format.startswith("torchvision_")
    assert all(key.startswith("backbone.") for key in report.loaded)
    ours = model.backbone.state_dict()
    for key, value in imagenet.state_dict().items():
        if not key.startswith(("fc.", "classifier.")):
            assert torch.equal(ours[key], value), key


def test_atrous_files_round_trip_in_pt_and_safetensors(tmp_path):
    model = randomise_batchnorm(atrous.build_model("deeplabv3", backbone="resnet18", num_classes=4, aux=True)).eval()
    torch.save({**model_checkpoint(model), "iteration": 3}, tmp_path / "ckpt.pt")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    images = torch.randn(1, 3, 33, 35)
    for path in (tmp_path / "ckpt.pt", tmp_path / "w.safetensors"):
        fresh = atrous.build_model("deeplabv3", backbone="resnet18", num_classes=4, aux=True).eval()
        report = atrous.load_weights(fresh, path)
        assert report.format == "atrous" and report.ok
        with torch.no_grad():
            torch.testing.assert_close(fresh(images).logits, model(images).logits)


def test_ddp_module_prefix_is_stripped():
    model = atrous.build_model("deeplabv3", backbone="resnet18", num_classes=4)
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    assert atrous.load_weights(atrous.build_model("deeplabv3", backbone="resnet18", num_classes=4), state).ok


def test_corrupt_and_truncated_files_raise_naming_the_file(tmp_path):
    good = tmp_path / "good.pth"
    torch.save(atrous.build_model("deeplabv3", backbone="resnet18", num_classes=2).state_dict(), good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00not a safetensors file" * 10)
    model = atrous.build_model("deeplabv3", backbone="resnet18", num_classes=2)
    for path in (truncated, garbage):
        with pytest.raises(WeightsError, match=str(path.name)):
            atrous.load_weights(model, path)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        atrous.load_weights(model, tmp_path / "missing.pth")


def test_unrecognised_layout_lists_the_formats():
    with pytest.raises(WeightsError, match=r"unrecognised weights layout \(1 key: 1 under 'foo\.'\); atrous reads \["):
        atrous.load_weights(atrous.build_model("deeplabv3", backbone="resnet18", num_classes=2), {"foo.weight": torch.ones(1)})


def test_imagenet_backbone_comes_from_the_torch_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    cached.parent.mkdir(parents=True)
    imagenet = torchvision.models.resnet18(weights=None)
    torch.save(imagenet.state_dict(), cached)
    model = atrous.build_model("deeplabv3", backbone="resnet18", num_classes=3, pretrained_backbone="imagenet")
    assert torch.equal(model.backbone.layer4[1].conv2.weight, imagenet.layer4[1].conv2.weight)


def test_imagenet_backbone_offline_names_the_file_and_where_to_put_it(offline_hub):
    expected = offline_hub / "resnet50-0676ba61.pth"
    with pytest.raises(WeightsError, match=f"Put the file resnet50-0676ba61.pth at {expected}"):
        atrous.build_model("deeplabv3", backbone="resnet50", num_classes=3, pretrained_backbone="imagenet")
    with pytest.raises(WeightsError, match="DeepLab_resnet_pretrained_imagenet.pth"):
        atrous.build_model("deeplabv2", num_classes=3, pretrained_backbone="imagenet")


def test_pretrained_backbone_from_a_path(tmp_path):
    path = tmp_path / "init.pth"
    torch.save(_caffe_state_dict(num_classes=21, seed=4), path)
    model = atrous.build_model("deeplabv2", num_classes=19, pretrained_backbone=path)
    assert torch.equal(model.backbone.conv1.weight, torch.load(path, weights_only=True)["Scale.conv1.weight"])
    assert not any(p.requires_grad for p in model.backbone.bn1.parameters())
