"""timm backbones under the DeepLab heads: ``backbone="timm:<name>"`` on five families (random weights, no
downloads): measured feature strides, odd and even sizes, OS8 and OS16, a training step, ONNX parity, the checkpoint
round trip, and the same logits as our torchvision ResNet-50 when it is the same network."""

import pytest
import torch

import atrous
from atrous.checkpoint import load_trained_model, model_checkpoint
from atrous.errors import ConfigError

pytest.importorskip("timm")

# (timm model, a DeepLab head): aligned Xception-65 (DeepLabV3+'s paper backbone), ResNet-D, RegNet,
# EfficientNet, ConvNeXt, MobileNetV4.
FAMILIES = ["xception65", "resnet18d", "regnetx_002", "efficientnet_b0", "convnext_atto", "mobilenetv4_conv_small"]


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


@pytest.mark.parametrize("name", ["xception65", "convnext_atto"])
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


@pytest.mark.parametrize("name", ["efficientnet_b0", "resnet18d"])
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
