"""transformers' DeepLabV3 models, against transformers itself: random-weight models of each class saved with its own
``save_pretrained``, read by atrous (folder, Hub cache, bare state dict), logits compared with transformers' forward
and its post-processing's upsampling; a permuted BatchNorm must fail the same comparison."""

import pytest
import torch
import torch.nn.functional as F
from test_hub import cache_snapshot, hub_cache  # noqa: F401  (a fixture)
from transformers import (
    MobileNetV2Config,
    MobileNetV2ForSemanticSegmentation,
    MobileViTConfig,
    MobileViTForSemanticSegmentation,
    MobileViTV2Config,
    MobileViTV2ForSemanticSegmentation,
)

import atrous
from atrous.errors import WeightsError
from atrous.registry import zoo

TOLERANCE = 1e-5  # of the largest logit: float32 reordering only (measured: at most 3.6e-7)
VOC = [f"class {i}" for i in range(21)]
XXS = {"hidden_sizes": [64, 80, 96], "neck_hidden_sizes": [16, 16, 24, 48, 64, 80, 320], "expand_ratio": 2.0}


def mobilenet_v2(output_stride=8):
    config = MobileNetV2Config(output_stride=output_stride, num_labels=21, tf_padding=True, layer_norm_eps=0.001,
                               hidden_act="relu6", first_layer_is_expansion=True,
                               id2label=dict(enumerate(VOC)), label2id={n: i for i, n in enumerate(VOC)})  # fmt: skip
    return MobileNetV2ForSemanticSegmentation(config)


def mobilevit(output_stride=16):
    return MobileViTForSemanticSegmentation(MobileViTConfig(output_stride=output_stride, num_labels=5, **XXS))


def mobilevit_v2(output_stride=16):
    config = MobileViTV2Config(width_multiplier=0.5, output_stride=output_stride, num_labels=4, aspp_out_channels=512)
    return MobileViTV2ForSemanticSegmentation(config)


MODELS = {"mobilenet_v2": mobilenet_v2, "mobilevit": mobilevit, "mobilevitv2": mobilevit_v2}


def randomised(model, seed=0):
    """BatchNorm statistics, affine parameters and biases away from their initial values, in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name.endswith("running_mean"):
                buffer.copy_(torch.randn(buffer.shape, generator=generator) * 0.1)
            elif name.endswith("running_var"):
                buffer.copy_(torch.rand(buffer.shape, generator=generator) + 0.5)
        for name, parameter in model.named_parameters():
            if parameter.ndim == 1:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.1)
            else:  # variance-keeping: transformers' 0.02 initialisation fades the signal layer by layer
                fan_in = parameter[0].numel()
                parameter.copy_(torch.randn(parameter.shape, generator=generator) / fan_in**0.5)
    return model.eval()


def pixels(kind, size, seed=1):
    """(transformers' pixel_values as its image processor makes them, the 0..255 RGB image atrous takes)."""
    values = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(seed))
    if kind == "mobilenet_v2":  # [-1, 1] RGB
        return values * 2 - 1, values * 255
    return values, values[:, [2, 1, 0]] * 255  # [0, 1] BGR


def worst(hf, ours, kind, size):
    """Largest difference / largest logit: at the head's resolution, and at the input's after upsampling as
    transformers' post_process_semantic_segmentation does."""
    pixel_values, image = pixels(kind, size)
    with torch.no_grad():
        theirs = hf(pixel_values=pixel_values).logits
        upsampled = F.interpolate(theirs, size=size, mode="bilinear", align_corners=False)
        normalised = ours.normalization(image)  # the model's own: it must turn the image into transformers' input
        head = ours.head(ours.backbone(normalised))
        full = ours(normalised).logits
    scale = theirs.abs().max()
    return float((head - theirs).abs().max() / scale), float((full - upsampled).abs().max() / scale)


STRIDES = [("mobilenet_v2", 8), ("mobilenet_v2", 16), ("mobilevit", 16), ("mobilevit", 8), ("mobilevitv2", 16),
           ("mobilevitv2", 8)]  # fmt: skip


@pytest.mark.parametrize("kind, output_stride", STRIDES)
def test_logits_equal_transformers_own(tmp_path, kind, output_stride):
    hf = randomised(MODELS[kind](output_stride))
    hf.save_pretrained(tmp_path / "model")
    ours = atrous.from_pretrained(tmp_path / "model")
    assert ours.output_stride == output_stride
    for size in ((65, 81), (64, 96), (97, 75)):  # odd sides: TF padding, MobileViT's resize, MobileViTV2's unfold
        assert max(worst(hf, ours, kind, size)) <= TOLERANCE, size


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_a_permuted_batchnorm_fails_the_comparison(tmp_path, kind):
    hf = randomised(MODELS[kind]())
    hf.save_pretrained(tmp_path / "model")
    ours = atrous.from_pretrained(tmp_path / "model")
    last = [module for module in ours.backbone.modules() if isinstance(module, torch.nn.BatchNorm2d)][-1]
    with torch.no_grad():  # the backbone's last BatchNorm with its channels in reverse order
        for tensor in (last.running_mean, last.running_var, last.weight, last.bias):
            tensor.copy_(tensor.flip(0))
    assert max(worst(hf, ours, kind, (64, 96))) > 10 * TOLERANCE


def test_names_labels_and_what_was_left_out_come_from_the_folder(tmp_path, caplog):
    hf = randomised(mobilenet_v2())
    hf.save_pretrained(tmp_path / "model")
    with caplog.at_level("INFO"):
        ours = atrous.from_pretrained(tmp_path / "model")
    assert ours.class_names == VOC and ours.spec.name == "deeplabv3_google" and ours.spec.backbone == "mobilenet_v2_google"
    assert "ignored mobilenet_v2.conv_1x1" in caplog.text  # the 1280-channel conv no segmentation reads


def test_a_bare_state_dict_gets_the_hub_models_stride_and_says_so(tmp_path, caplog):
    hf = randomised(mobilevit())
    torch.save(hf.state_dict(), tmp_path / "mobilevit.pt")
    with caplog.at_level("WARNING"):
        ours = atrous.from_pretrained(tmp_path / "mobilevit.pt")
    assert ours.output_stride == 16 and "assumed output stride 16" in caplog.text
    assert max(worst(hf, ours, "mobilevit", (64, 96))) <= TOLERANCE


def test_a_hub_repository_in_the_cache_reads_by_name(hub_cache, tmp_path):  # noqa: F811
    hf = randomised(mobilevit_v2())
    root = hub_cache / "models--apple--mobilevitv2-1.0-voc-deeplabv3" / "snapshots" / "c0ffee"
    hf.save_pretrained(root)
    (root.parent.parent / "refs").mkdir()
    (root.parent.parent / "refs" / "main").write_text("c0ffee")
    ours = atrous.from_pretrained("hf-hub:apple/mobilevitv2-1.0-voc-deeplabv3")
    assert max(worst(hf, ours, "mobilevitv2", (64, 64))) <= TOLERANCE


def test_a_configuration_atrous_does_not_build_is_named(tmp_path):
    config = MobileNetV2Config(output_stride=8, num_labels=3, tf_padding=False)
    MobileNetV2ForSemanticSegmentation(config).save_pretrained(tmp_path / "model")
    with pytest.raises(WeightsError, match="tf_padding=False"):
        atrous.from_pretrained(tmp_path / "model")


def test_the_zoo_names_the_hub_models():
    entries = zoo()
    assert entries["deeplabv3-mobilevit-small"].url == "hf-hub:apple/deeplabv3-mobilevit-small"
    assert entries["deeplabv3-mobilevit-small"].published["mIoU"] == 79.1
    assert entries["deeplabv3_mobilenet_v2_1.0_513"].spec.backbone == "mobilenet_v2_google"


# The Hub models' configurations (their config.json files' fields that shape the network).
HUB_MODELS = {
    "deeplabv3_mobilenet_v2_1.0_513": lambda: mobilenet_v2(8),
    "deeplabv3-mobilevit-xx-small": lambda: MobileViTForSemanticSegmentation(MobileViTConfig(output_stride=16, num_labels=21, **XXS)),
    "deeplabv3-mobilevit-x-small": lambda: MobileViTForSemanticSegmentation(MobileViTConfig(
        output_stride=16, num_labels=21, hidden_sizes=[96, 120, 144], neck_hidden_sizes=[16, 32, 48, 64, 80, 96, 384])),
    "deeplabv3-mobilevit-small": lambda: MobileViTForSemanticSegmentation(MobileViTConfig(output_stride=16, num_labels=21)),
    "mobilevitv2-1.0-voc-deeplabv3": lambda: MobileViTV2ForSemanticSegmentation(
        MobileViTV2Config(width_multiplier=1.0, output_stride=16, num_labels=21, aspp_out_channels=512)),
    "mobilevitv2-1.5-voc-deeplabv3": lambda: MobileViTV2ForSemanticSegmentation(
        MobileViTV2Config(width_multiplier=1.5, output_stride=16, num_labels=21, aspp_out_channels=512)),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(HUB_MODELS))
def test_each_hub_model_of_the_zoo_runs_by_name_from_the_cache(hub_cache, name):  # noqa: F811
    entry = zoo()[name]
    hf = randomised(HUB_MODELS[name]())
    repo = entry.url.removeprefix("hf-hub:")
    root = hub_cache / f"models--{repo.replace('/', '--')}"
    hf.save_pretrained(root / "snapshots" / "0a1b2c")
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text("0a1b2c")
    ours = atrous.from_pretrained(name)
    for field in ("name", "backbone", "output_stride", "atrous_rates", "num_classes"):
        assert getattr(ours.spec, field) == getattr(entry.spec, field)
    assert ours.class_names[:2] == ["background", "aeroplane"]
    kind = "mobilenet_v2" if "mobilenet_v2" in name else "mobilevitv2" if "v2" in name else "mobilevit"
    assert max(worst(hf, ours, kind, (64, 64))) <= TOLERANCE


@pytest.mark.parametrize("kind", ["mobilevit", "mobilevitv2"])
def test_the_onnx_export_computes_the_patch_grid_of_every_input(tmp_path, kind):
    """MobileViT resizes to whole patches and MobileViTV2 unfolds them by the input's size: an exported graph must
    compute both per input (timm's math.ceil froze the example's: 3-6% of the largest logit off at every size)."""
    import numpy as np
    import onnxruntime

    from atrous.export import export_model

    hf = randomised(MODELS[kind]())
    hf.save_pretrained(tmp_path / "model")
    ours = atrous.from_pretrained(tmp_path / "model")
    session = onnxruntime.InferenceSession(str(export_model(ours, tmp_path / "model.onnx", format="onnx")))
    for size in ((65, 81), (64, 96), (130, 98)):
        image = pixels(kind, size)[1].round()
        with torch.no_grad():
            expected = ours(ours.normalization(image)).logits.numpy()
        got = session.run(None, {session.get_inputs()[0].name: image.to(torch.uint8).numpy()})[0]
        assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max(), size
