"""timm backbones under the DeepLab heads: ``backbone="timm:<name>"`` on five families (random weights, no
downloads): measured feature strides, odd and even sizes, OS8 and OS16, a training step, ONNX parity, the checkpoint
round trip, and the same logits as our torchvision ResNet-50 when it is the same network; timm's pretrained files read
as timm itself loads them (files made here, in the places atrous looks), and the errors offline or without timm."""

import pytest
import torch

import atrous
from atrous import load_trained_model
from atrous.checkpoint import model_checkpoint
from atrous.errors import ConfigError, MissingDependencyError, WeightsError

pytest.importorskip("timm")

# (timm model, a DeepLab head): aligned Xception-65 (DeepLabV3+'s paper backbone), ResNet-D, RegNet,
# ResNeSt, EfficientNet, ConvNeXt, MobileNetV2/V4 (small members of each family).
FAMILIES = ["xception65", "resnet18d", "resnest14d", "regnetx_002", "efficientnet_b0", "convnext_atto",
            "mobilenetv2_050", "mobilenetv4_conv_small"]


def _measured_strides(model, size: int) -> dict[str, int]:
    with torch.no_grad():
        features = model.backbone(torch.randn(1, 3, size, size))
    return {key: -(-size // feature.shape[-1]) for key, feature in features.items()}  # ceil: odd sizes round up


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("output_stride", [8, 16])
def test_features_sit_at_the_strides_the_heads_expect_and_logits_match_the_input(name, output_stride):
    model = atrous.build_model("deeplabv3plus", backbone=f"timm:{name}", num_classes=5, output_stride=output_stride,
                               aux=True).eval()  # fmt: skip
    assert _measured_strides(model, 64) == {"low": 4, "aux": output_stride, "out": output_stride}
    assert model.backbone.strides == {"low": 4, "aux": output_stride, "out": output_stride}
    for size in (65, 64):  # odd and even
        with torch.no_grad():
            out = model(torch.randn(2, 3, size, size))
        assert tuple(out.logits.shape) == (2, 5, size, size) and tuple(out.aux_logits.shape) == (2, 5, size, size)


def test_the_normalisation_is_what_timm_declares():
    assert atrous.build_model("deeplabv3", backbone="timm:xception65", num_classes=2).normalization.std == (
        127.5, 127.5, 127.5)  # fmt: skip
    assert atrous.build_model("deeplabv3", backbone="timm:convnext_atto", num_classes=2).normalization.name == (
        "imagenet_rgb")  # fmt: skip


@pytest.mark.parametrize("name", FAMILIES)
def test_one_training_step_and_the_checkpoint_round_trip(name, tmp_path):
    torch.manual_seed(0)
    model = atrous.build_model("deeplabv3plus", backbone=f"timm:{name}", num_classes=3, output_stride=16).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    before = [parameter.detach().clone() for parameter in model.parameters()]
    images, masks = torch.randn(2, 3, 64, 64), torch.randint(0, 3, (2, 64, 64))
    loss = torch.nn.functional.cross_entropy(model(images).logits, masks)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    torch.save(model_checkpoint(model.eval()), tmp_path / "model.pt")
    again = load_trained_model(tmp_path / "model.pt")
    assert again.spec.backbone == f"timm:{name}"
    with torch.no_grad():
        assert torch.equal(again(images).logits, model(images).logits)


@pytest.mark.parametrize("name", FAMILIES)
def test_onnx_export_gives_eager_logits(name, tmp_path):
    from atrous.export import PARITY_TOLERANCE, export_model, parity

    model = atrous.build_model("deeplabv3", backbone=f"timm:{name}", num_classes=4, output_stride=16).eval()
    export_model(model, tmp_path / "model.onnx", format="onnx")
    for size, difference, largest in parity(model, tmp_path / "model.onnx", format="onnx"):
        assert difference <= PARITY_TOLERANCE * max(1.0, largest), (size, difference, largest)


@pytest.mark.parametrize("output_stride", [8, 16])
def test_timm_resnet50_with_our_weights_gives_our_torchvision_resnet50_logits(output_stride):
    """The same network: timm's resnet50 keeps torchvision's key names, so the translation is the 'body.' level
    timm's feature wrapper adds, and the dilation rule (first block of a dilated stage at the previous rate) is
    the same."""
    torch.manual_seed(0)
    ours = atrous.build_model("deeplabv3", backbone="resnet50", num_classes=5, output_stride=output_stride).eval()
    theirs = atrous.build_model("deeplabv3", backbone="timm:resnet50", num_classes=5, output_stride=output_stride)
    translated = {key.replace("backbone.", "backbone.body.", 1): value for key, value in ours.state_dict().items()}
    theirs.load_state_dict(translated)  # strict: every key has its counterpart
    images = torch.randn(1, 3, 97, 97)
    with torch.no_grad():
        torch.testing.assert_close(theirs.eval()(images).logits, ours(images).logits, rtol=0, atol=1e-5)


def test_a_transformer_with_fixed_patching_is_refused_naming_the_families_that_dilate():
    with pytest.raises(ConfigError, match=r"does not reach output_stride 16 .* families that do \(by dilation\): "
                                          r"ResNet"):  # fmt: skip
        atrous.build_model("deeplabv3", backbone="timm:vit_tiny_patch16_224", num_classes=2, output_stride=16)


def test_unknown_timm_names_and_multi_grid_are_refused():
    with pytest.raises(ConfigError, match=r"unknown timm model 'resnet_nonexistent'.*timm.list_models"):
        atrous.build_model("deeplabv3", backbone="timm:resnet_nonexistent", num_classes=2)
    with pytest.raises(ConfigError, match=r"multi_grid is not an option of timm backbones"):
        atrous.build_model("deeplabv3", backbone="timm:resnet18d", num_classes=2, multi_grid=(1, 2, 4))


def test_tagged_names_pick_the_weights_and_unknown_tags_list_the_known_ones():
    model = atrous.build_model("deeplabv3plus", backbone="timm:xception65.tf_in1k", num_classes=2)
    assert model.normalization.std == (127.5, 127.5, 127.5)  # the TF-DeepLab port's input, [-1, 1]
    with pytest.raises(ConfigError, match=r"Invalid pretrained tag \(nope\).*xception65.ra3_in1k, xception65.tf_in1k"):
        atrous.build_model("deeplabv3", backbone="timm:xception65.nope", num_classes=2)


def _timm_file(model_name: str, folder, filename: str | None = None):
    """A whole timm model (classifier included) with random weights and BN statistics, saved as timm's hub file is:
    a safetensors state dict named as atrous looks for it in ``folder`` (the hub cache), or ``filename`` (a ``.pth``
    one by torch.save)."""
    import timm
    from safetensors.torch import save_file

    from atrous.models.backbones.timm import _pretrained_source

    torch.manual_seed(len(model_name))
    network = timm.create_model(model_name)
    for module in network.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.3, 0.3)
            module.running_var.uniform_(0.5, 1.5)
    path = folder / (filename or _pretrained_source(model_name)[2])
    folder.mkdir(parents=True, exist_ok=True)
    state = {key: value.contiguous() for key, value in network.state_dict().items()}
    save_file(state, str(path)) if path.suffix == ".safetensors" else torch.save(state, path)
    return path


@pytest.mark.parametrize("name", ["convnext_atto", "xception65.tf_in1k", "resnet18d", "efficientnet_b0"])
def test_imagenet_weights_from_the_hub_cache_give_timms_own_features(name, tmp_path, monkeypatch):
    """convnext's flattened stages (stages_0), xception65's hook wrapper with a tag, ResNet-D, EfficientNet: every
    feature equals timm's features_only network loading the same file its own way."""
    import timm

    from atrous.paths import hub_checkpoints

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path = _timm_file(name, hub_checkpoints())
    ours = atrous.build_model("deeplabv3plus", backbone=f"timm:{name}", num_classes=3, output_stride=16,
                              pretrained_backbone="imagenet").eval()  # fmt: skip
    theirs = timm.create_model(name, features_only=True, output_stride=16, pretrained=True,
                               pretrained_cfg_overlay={"file": str(path)}).eval()  # fmt: skip
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = theirs(images)
        features = ours.backbone(images)
    for key, index in ours.backbone.indices.items():
        assert torch.equal(features[key], expected[index]), key


def test_a_timm_file_by_path_loads_and_another_models_file_is_refused(tmp_path):
    import timm

    path = _timm_file("resnet18d", tmp_path, "mine.pth")
    model = atrous.build_model("deeplabv3", backbone="timm:resnet18d", num_classes=3, pretrained_backbone=path)
    expected = timm.create_model("resnet18d", features_only=True, pretrained=True, output_stride=8,
                                 pretrained_cfg_overlay={"file": str(path)}).state_dict()  # fmt: skip
    body = model.backbone.body.state_dict()
    assert body.keys() == expected.keys() and all(torch.equal(body[key], expected[key]) for key in body)
    with pytest.raises(WeightsError, match=r"mine.pth: none of its keys .* are those of timm's convnext_atto"):
        atrous.build_model("deeplabv3", backbone="timm:convnext_atto", num_classes=3, pretrained_backbone=path)
    with pytest.raises(WeightsError, match=r"missing: backbone.body"):  # the same family, other depth
        atrous.build_model("deeplabv3", backbone="timm:resnet34d", num_classes=3, pretrained_backbone=path)


def test_offline_the_error_names_the_url_and_where_to_put_the_file(tmp_path, monkeypatch):
    import huggingface_hub

    from atrous.paths import hub_checkpoints

    def offline(repo_id, filename, **_):
        raise huggingface_hub.errors.LocalEntryNotFoundError("cannot find the requested files in the local cache")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(WeightsError) as caught:
        atrous.build_model("deeplabv3", backbone="timm:xception65.tf_in1k", num_classes=2,
                           pretrained_backbone="imagenet")
    message = str(caught.value)
    assert "https://huggingface.co/timm/xception65.tf_in1k/resolve/main/model.safetensors" in message
    assert f"Put that file at {hub_checkpoints() / 'xception65.tf_in1k.safetensors'}" in message
    assert "model.pretrained_backbone=PATH" in message


def test_without_timm_the_error_says_what_to_install(monkeypatch):
    import sys

    from atrous.models.backbones.timm import timm_entry

    timm_entry.cache_clear()
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm now raises ImportError
    try:
        # The command that fits this copy (from this clone: its constraints and its [timm] extra), never
        # 'atrous[timm]' from the package index, where atrous is not.
        with pytest.raises(MissingDependencyError, match=r"timm package: python -m pip install -c .*constraints\.txt\" "
                                                         r"-e \".*\[timm\]\"$"):  # fmt: skip
            atrous.build_model("deeplabv3", backbone="timm:resnet18d", num_classes=2)
    finally:
        timm_entry.cache_clear()


@pytest.mark.parametrize("name", ["xception65", "convnext_atto", "efficientnet_b0"])
def test_activation_checkpointing_recomputes_the_body_in_the_backward_pass(name):
    model = atrous.build_model("deeplabv3", backbone=f"timm:{name}", num_classes=2, output_stride=16).train()
    convs = [module for module in model.backbone.body.modules() if isinstance(module, torch.nn.Conv2d)]
    calls = []  # a middle stage's conv: timm runs the stem and the last stage outside its checkpoints
    convs[len(convs) // 2].register_forward_hook(lambda *_: calls.append(1))
    images = torch.randn(2, 3, 64, 64)
    for checkpointing, forwards in ((False, 1), (True, 2)):
        model.backbone.activation_checkpointing = checkpointing
        calls.clear()
        model(images).logits.sum().backward()
        assert len(calls) == forwards, (checkpointing, len(calls))
