"""Google's TensorFlow DeepLab in atrous (issue 30): each network family gives the logits of an independent reference
written from the facts (tests/google_reference.py, TF layouts and names, NHWC), from the same TF-named variables;
checkpoints load as a tarball, an index, a prefix or a data file alike; every zoo entry builds and takes tensors in
its published layout (tests/test_zoo.py, from tarballs in the hub cache). tools/compare_google_deeplab.py compares
with Google's own code, which needs TensorFlow."""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest
import torch
from google_reference import Variables, forward, forward_mobilenet_v3
from PIL import Image
from tf_writer import write_checkpoint, write_tarball

import atrous
from atrous.cli import main
from atrous.errors import ConfigError, WeightsError
from atrous.registry import zoo

TOLERANCE = 1e-4  # of the largest logit, as the issue asks of the comparison with Google's code

# id: (reference backbone, head, output stride, image (height, width), crop, classes, rates, atrous overrides)
CASES = {
    "xception65_v3plus_os16_odd": ("xception_65", "aspp+decoder", 16, (65, 81), None, 21, (6, 12, 18), {}),
    "xception65_v3plus_os8_even": ("xception_65", "aspp+decoder", 8, (66, 80), None, 21, (12, 24, 36), {}),
    "xception65_v3_os16_padded": ("xception_65", "aspp", 16, (65, 81), (97, 113), 21, (6, 12, 18), {}),
    "xception41_v3plus_os16_even": ("xception_41", "aspp+decoder", 16, (66, 80), None, 21, (6, 12, 18), {}),
    "xception71_dpc_os16_odd": ("xception_71", "dpc+decoder", 16, (65, 81), None, 19, (), {}),
    "xception71_dpc_os8_even": ("xception_71", "dpc+decoder", 8, (66, 80), None, 19, (), {}),
    "mobilenetv2_os16_even": ("mobilenet_v2", "aspp", 16, (66, 80), None, 21, (), {}),
    "mobilenetv2_os8_padded": ("mobilenet_v2", "aspp", 8, (65, 81), (97, 97), 21, (), {}),
    "mobilenetv2_dm05_os16_even": ("mobilenet_v2_dm05", "aspp", 16, (66, 80), None, 21, (), {}),
    "mobilenetv2_decoder_ade20k": ("mobilenet_v2", "aspp+decoder", 16, (65, 81), None, 151, (), {}),
    "resnet50_beta_os16_even": ("resnet_v1_50", "aspp+decoder", 16, (66, 80), None, 21, (6, 12, 18), {}),
    "resnet101_beta_os8_multigrid": ("resnet_v1_101", "aspp+decoder", 8, (65, 81), None, 21, (12, 24, 36),
                                     {"multi_grid": (1, 2, 4)}),
    # MobileNetV3's head pools a 769x769 crop's window: images of that size at least, as Google's graph needs.
    "mobilenetv3_large_os32": ("mobilenet_v3_large", "mnv3", 32, (769, 1025), None, 19, (), {}),
    "mobilenetv3_small_os32_padded": ("mobilenet_v3_small", "mnv3", 32, (700, 1000), (769, 1025), 19, (), {}),
    "edgetpu_os32_even": ("edgetpu", "aspp", 32, (66, 80), None, 19, (), {}),
    "edgetpu_slim_os16_padded": ("edgetpu_slim", "aspp", 16, (65, 81), (97, 97), 19, (), {}),
}  # fmt: skip


def _google_forward(variables, images, *, backbone, head, output_stride, classes, rates=(), crop=None,
                    multi_grid=(1, 1, 1)):  # fmt: skip
    """The reference's forward of a case's network."""
    if backbone.startswith(("mobilenet_v3", "edgetpu")):
        variant = backbone.removeprefix("mobilenet_v3_").removesuffix("_slim")
        slim = backbone.endswith("_slim")
        return forward_mobilenet_v3(variables, images, variant=variant, output_stride=output_stride, classes=classes,
                                    crop=crop, depth_multiplier=0.75 if slim else 1.0, aspp_width=128 if slim else 256)
    return forward(variables, images, backbone=backbone, head=head, output_stride=output_stride, classes=classes,
                   rates=rates, crop=crop, multi_grid=multi_grid)  # fmt: skip


def _images(size, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand((2, *size, 3), generator=generator) * 255


def _reference(case: str, seed: int = 0):
    backbone, head, stride, size, crop, classes, rates, extra = CASES[case]
    variables = Variables(seed)
    images = _images(size, seed)
    expected = _google_forward(variables, images, backbone=backbone, head=head, output_stride=stride, classes=classes,
                               rates=rates, crop=crop, multi_grid=extra.get("multi_grid", (1, 1, 1)))  # fmt: skip
    overrides = {"output_stride": stride, "pad_to": crop, **extra}
    if rates:
        overrides["atrous_rates"] = rates
    return variables, images, expected, overrides


def _ours(model, images):
    with torch.no_grad():
        return model(model.normalization(images.permute(0, 3, 1, 2))).logits.permute(0, 2, 3, 1)


def _assert_close(ours, expected):
    scale = expected.abs().max()
    difference = float((ours - expected).abs().max() / scale)
    assert difference <= TOLERANCE, difference
    # The same class wherever the reference's best two differ by more than the tolerance (between near-ties, float
    # rounding may pick either; on the million pixels of a 769x1025 image some are that close).
    top2 = expected.topk(2, dim=-1).values
    decided = (top2[..., 0] - top2[..., 1]) > 2 * TOLERANCE * scale
    assert decided.float().mean() > 0.99
    assert torch.equal(ours.argmax(-1)[decided], expected.argmax(-1)[decided])


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_family_gives_the_logits_of_the_independent_reference(case):
    variables, images, expected, overrides = _reference(case)
    model = atrous.from_pretrained(variables.values, **overrides)
    _assert_close(_ours(model, images), expected)


def test_an_image_larger_than_pad_to_is_its_own_crop_there():
    """Google's graph cannot take an image larger than its crop; atrous pads each side to the larger of the two, which
    is Google's evaluation with a crop as large as the image."""
    variables, images, _, overrides = _reference("xception65_v3plus_os16_odd")
    model = atrous.from_pretrained(variables.values, **{**overrides, "pad_to": (49, 97)})
    _assert_close(_ours(model, images), forward(Variables(0, variables.values), images, backbone="xception_65",
                  head="aspp+decoder", output_stride=16, classes=21, rates=(6, 12, 18), crop=(65, 97)))  # fmt: skip


@pytest.mark.parametrize("scope", ["MobilenetV2/expanded_conv_16/project", "concat_projection"])
def test_a_permuted_batchnorm_misses_the_reference(scope):
    """Negative control: one BatchNorm's statistics in another channel order must show in the logits."""
    variables, images, expected, overrides = _reference("mobilenetv2_os16_even")
    values = dict(variables.values)
    for statistic in ("moving_mean", "moving_variance"):
        key = f"{scope}/BatchNorm/{statistic}"
        values[key] = values[key].flip(0)
    model = atrous.from_pretrained(values, **overrides)
    difference = float((_ours(model, images) - expected).abs().max() / expected.abs().max())
    assert difference > 100 * TOLERANCE, difference


def test_the_file_describes_its_model_and_says_what_it_assumed(caplog):
    variables, *_ = _reference("xception71_dpc_os16_odd")
    with caplog.at_level(logging.INFO, logger="atrous"):
        model = atrous.from_pretrained(variables.values)
    assert (model.spec.name, model.spec.backbone, model.spec.num_classes) == ("deeplabv3plus_dpc_google", "xception71_google", 19)
    assert model.spec.output_stride == 16 and model.spec.align_corners and model.spec.pad_to is None
    assert model.normalization.name == "google_rgb"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("assumed output stride 16, Google's eval.py default" in w and "--output-stride" in w for w in warnings)
    assert any("assumed no padding: the image is its own crop" in w and "--pad-to" in w for w in warnings)
    variables, *_ = _reference("mobilenetv2_os16_even")
    model = atrous.from_pretrained(variables.values)
    assert (model.spec.name, model.spec.backbone, model.spec.atrous_rates) == ("deeplabv3_google", "mobilenet_v2_google", ())


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 52, 3), dtype=np.uint8)).save(folder / "a.png")
    return folder


def _small_checkpoint(tmp_path, *, training_state: bool = True):
    """A MobileNetV2-0.5 DeepLab checkpoint as Google's training leaves it: the network, Momentum slots, a step."""
    variables, images, expected, overrides = _reference("mobilenetv2_dm05_os16_even")
    tensors = {name: value.numpy() for name, value in variables.values.items()}
    if training_state:
        tensors |= {f"{name}/Momentum": np.zeros_like(value) for name, value in tensors.items()}
        tensors["global_step"] = np.array(30000.0)
    prefix = write_checkpoint(tmp_path / "train" / "model.ckpt", tensors)
    return prefix, images, expected, overrides


def test_the_tarball_the_index_the_prefix_and_a_data_file_load_the_same_model(tmp_path, caplog):
    prefix, images, expected, overrides = _small_checkpoint(tmp_path)
    tarball = write_tarball(tmp_path / "deeplabv3_mnv2_dm05_pascal_trainaug_2018_10_01.tar.gz", prefix)
    paths = [tarball, prefix, prefix.with_name("model.ckpt.index"), prefix.with_name("model.ckpt.data-00000-of-00001")]
    for path in paths:
        with caplog.at_level(logging.INFO, logger="atrous"):
            model = atrous.from_pretrained(str(path), **overrides)
        _assert_close(_ours(model, images), expected)
    report = "\n".join(r.getMessage() for r in caplog.records)
    assert "ignored 273 variables of training state (Momentum, global_step): not the network" in report
    assert "took the 272 variables of the network by their own names, as Google's eval.py" in report


def test_a_flipped_byte_in_a_network_checkpoint_is_refused_naming_the_variable(tmp_path):
    prefix, *_ = _small_checkpoint(tmp_path, training_state=False)
    data = prefix.with_name("model.ckpt.data-00000-of-00001")
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0x40
    data.write_bytes(bytes(raw))
    with pytest.raises(WeightsError, match="do not match their checksum: the file is damaged") as error:
        atrous.from_pretrained(str(prefix))
    assert str(data) in str(error.value) and "MobilenetV2/" in str(error.value)


def published_variables(spec) -> dict[str, torch.Tensor]:
    """TF-named random tensors in the layout a published file of ``spec`` holds (the reference's variables)."""
    backbone = {"xception41_google": "xception_41", "xception65_google": "xception_65", "xception71_google": "xception_71",
                "mobilenet_v2_google": "mobilenet_v2", "mobilenet_v2_dm05_google": "mobilenet_v2_dm05",
                "resnet50_beta_google": "resnet_v1_50", "resnet101_beta_google": "resnet_v1_101",
                "mobilenet_v3_large_seg_google": "mobilenet_v3_large", "mobilenet_v3_small_seg_google": "mobilenet_v3_small",
                "mobilenet_edgetpu_google": "edgetpu", "mobilenet_edgetpu_dm075_google": "edgetpu_slim"}[spec.backbone]  # fmt: skip
    head = {"deeplabv3_google": "aspp", "deeplabv3_google_slim": "aspp", "deeplabv3plus": "aspp+decoder",
            "deeplabv3plus_dpc_google": "dpc+decoder", "deeplabv3plus_mnv3_google": "mnv3"}[spec.name]  # fmt: skip
    variables = Variables(1)
    size = (769, 769) if head == "mnv3" else (33, 33)  # MobileNetV3's head pools a 769x769 crop's window
    _google_forward(variables, _images(size)[:1], backbone=backbone, head=head, output_stride=spec.output_stride or 16,
                    classes=spec.num_classes, rates=spec.atrous_rates or ())  # fmt: skip
    return variables.values


GOOGLE = "tensorflow/models research/deeplab (Google)"
GOOGLE_ENTRIES = sorted(name for name, entry in zoo().items() if entry.publisher == GOOGLE)


def test_the_zoo_lists_every_published_segmentation_checkpoint_of_googles_table():
    models = {name for name in GOOGLE_ENTRIES if zoo()[name].kind == "model"}
    assert models == {
        "mobilenetv2_dm05_coco_voc_trainaug", "mobilenetv2_dm05_coco_voc_trainval", "mobilenetv2_coco_voc_trainaug",
        "mobilenetv2_coco_voc_trainval", "xception65_coco_voc_trainaug", "xception65_coco_voc_trainval",
        "mobilenetv2_coco_cityscapes_trainfine", "xception65_cityscapes_trainfine", "xception71_dpc_cityscapes_trainfine",
        "xception71_dpc_cityscapes_trainval", "mobilenetv2_ade20k_train", "xception65_ade20k_train",
        "mobilenetv3_large_cityscapes_trainfine", "mobilenetv3_small_cityscapes_trainfine", "edgetpu_deeplab",
        "edgetpu_deeplab_slim",
    }  # fmt: skip
    for name in models:
        entry = zoo()[name]
        assert entry.url.startswith("http://download.tensorflow.org/models/") and entry.url.endswith(".tar.gz")
        assert entry.hash is None  # Google publishes none: unverified
        assert entry.spec.pad_to in ((513, 513), (1025, 2049), (257, 257)) and entry.spec.align_corners
        assert entry.published["mIoU"] > 30 and "model_zoo.md" in entry.published["source"]
        names, palette = entry.class_names_and_palette()
        assert len(names) == entry.spec.num_classes and len(palette) >= entry.spec.num_classes
    assert zoo()["xception65_coco_voc_trainval"].published["mIoU"] == 87.80
    assert zoo()["mobilenetv2_ade20k_train"].class_names_and_palette()[0][:2] == ["other", "wall"]


def test_a_zoo_name_reads_the_tarball_from_the_cache_with_its_labels_and_crop(tmp_path, monkeypatch, photos):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    entry = zoo()["mobilenetv2_dm05_coco_voc_trainaug"]
    prefix, *_ = _small_checkpoint(tmp_path)
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    write_tarball(cache / entry.filename, prefix)
    model = atrous.from_pretrained("mobilenetv2_dm05_coco_voc_trainaug")
    assert model.spec.pad_to == (513, 513) and model.class_names[15] == "person"
    out = tmp_path / "pred"
    # The default runtime: ONNX Runtime on the CPU, exported from the model (its padding computed per input).
    assert main(["predict", "--weights", "mobilenetv2_dm05_coco_voc_trainaug", str(photos), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.glob("*.png"))


def test_the_command_line_takes_the_index_or_prefix_and_pad_to(tmp_path, photos, capsys):
    prefix, *_ = _small_checkpoint(tmp_path)
    for weights in (str(prefix), f"{prefix}.index"):
        out = tmp_path / f"pred_{len(weights)}"
        assert main(["predict", "--weights", weights, "--pad-to", "97,97", str(photos), "--out", str(out),
                     "--runtime", "eager"]) == 0  # fmt: skip
        assert sorted(p.name for p in out.glob("*.png"))
    with pytest.raises(SystemExit) as exit_:
        main(["predict", "--weights", str(prefix), "--pad-to", "97", str(photos), "--out", str(tmp_path / "x")])
    assert exit_.value.code == 2
    assert "expected a height and a width like 513,513, got '97'" in capsys.readouterr().err


def test_a_checkpoint_of_a_network_atrous_does_not_build_is_named():
    with pytest.raises(WeightsError, match=re.escape("a Google DeepLab checkpoint on Auto-DeepLab's HNASNet "
                                                     "(hnasnet/...): atrous does not build that network yet")):  # fmt: skip
        atrous.from_pretrained({"hnasnet/stem/weights": torch.zeros(3, 3, 3, 16),
                                "logits/semantic/weights": torch.zeros(1, 1, 19, 19)})  # fmt: skip
    with pytest.raises(WeightsError, match=re.escape("Google's plain resnet_v1_50 (a 7x7 stem, ImageNet-mean input): "
                                                     "atrous builds the beta variant")):  # fmt: skip
        atrous.from_pretrained({"resnet_v1_50/conv1/weights": torch.zeros(7, 7, 3, 64),
                                "logits/semantic/weights": torch.zeros(1, 1, 256, 21)})  # fmt: skip


def test_spec_values_for_google_models_are_checked():
    with pytest.raises(ConfigError, match=r"pad_to must be \[height, width\], two integers >= 1, got \[513\]"):
        atrous.build_model("deeplabv3_google", backbone="mobilenet_v2_google", pad_to=[513])
    with pytest.raises(ConfigError, match="deeplabv2 needs one atrous rate at least"):
        atrous.build_model("deeplabv2", atrous_rates=[])
    with pytest.raises(ConfigError, match="multi_grid .* needs three values"):
        atrous.build_model("deeplabv3plus", backbone="xception65_google", multi_grid=[1, 2])
    model = atrous.build_model("deeplabv3_google", backbone="mobilenet_v2_google", atrous_rates=[], pad_to=[65, 65])
    assert model.spec.atrous_rates == () and len(model.head.aspp.atrous_branches) == 0
    with pytest.raises(ConfigError, match="a model that pads its input to"):
        model.head_logits(torch.zeros(1, 3, 33, 33))


def test_the_onnx_export_keeps_tensorflows_padding_at_every_size(tmp_path):
    """'SAME' padding of the strided layers and the padding to pad_to depend on the input's size: the exported graph
    computes them per input (odd, even, larger than pad_to), not as traced at the example size."""
    onnxruntime = pytest.importorskip("onnxruntime")
    from atrous.export import export_model

    variables, _, _, overrides = _reference("mobilenetv2_os16_even")
    model = atrous.from_pretrained(variables.values, **{**overrides, "pad_to": (97, 97)})
    session = onnxruntime.InferenceSession(str(export_model(model, tmp_path / "google.onnx", format="onnx")))
    for size in [(65, 81), (66, 80), (100, 120)]:
        images = _images(size).round()[:1]
        expected = _ours(model, images).permute(0, 3, 1, 2).numpy()
        got = session.run(None, {session.get_inputs()[0].name: images.permute(0, 3, 1, 2).to(torch.uint8).numpy()})[0]
        assert np.abs(got - expected).max() <= TOLERANCE * np.abs(expected).max(), size


def test_mobilenetv3_exports_at_its_published_canvas_and_refuses_a_smaller_one(tmp_path):
    """Its image pooling's window is fixed in a graph: right only where every input's features cover it, as on the
    zoo's 1025x2049 canvas; without pad_to the export would freeze the example's window, so it is refused."""
    onnxruntime = pytest.importorskip("onnxruntime")
    from atrous.export import export_model

    variables, _, _, overrides = _reference("mobilenetv3_small_os32_padded")
    model = atrous.from_pretrained(variables.values, **{**overrides, "pad_to": None})
    with pytest.raises(ConfigError, match="export this model with pad_to of 769x769 at least"):
        export_model(model, tmp_path / "small.onnx", format="onnx")
    model = atrous.from_pretrained(variables.values, **overrides)
    session = onnxruntime.InferenceSession(str(export_model(model, tmp_path / "mnv3.onnx", format="onnx")))
    images = _images((700, 1000)).round()[:1]
    expected = _ours(model, images).permute(0, 3, 1, 2).numpy()
    got = session.run(None, {session.get_inputs()[0].name: images.permute(0, 3, 1, 2).to(torch.uint8).numpy()})[0]
    assert np.abs(got - expected).max() <= TOLERANCE * np.abs(expected).max()


def test_a_tensorflow_checkpoint_given_as_a_pytorch_file_says_where_it_is_read(tmp_path):
    from atrous.weights.torch_file import read_torch_file

    prefix, *_ = _small_checkpoint(tmp_path, training_state=False)
    with pytest.raises(WeightsError) as error:
        read_torch_file(f"{prefix}.index", what="checkpoint", objects="refuse")  # what --resume reads
    assert str(error.value) == (f"{prefix}.index is part of the TensorFlow checkpoint {prefix}, not a PyTorch "
                                "checkpoint: pass it as weights (--weights, model.weights, from_pretrained), which read "
                                "TensorFlow checkpoints")  # fmt: skip


def test_eval_takes_a_checkpoint_and_a_dataset_without_a_config(tmp_path, capsys):
    """The issue's `atrous eval --weights deeplabv3_cityscapes_train/model.ckpt --dataset cityscapes --root ...`."""
    from data_fixtures import make_cityscapes

    variables = Variables(0)
    forward(variables, _images((33, 33))[:1], backbone="mobilenet_v2_dm05", head="aspp", output_stride=16, classes=19)
    prefix = write_checkpoint(tmp_path / "deeplabv3_cityscapes_train" / "model.ckpt",
                              {key: value.numpy() for key, value in variables.values.items()})  # fmt: skip
    make_cityscapes(tmp_path / "data", np.random.default_rng(0).integers(0, 34, (40, 72)).astype(np.uint8), split="val")
    out = tmp_path / "eval"
    assert main(["eval", "--weights", str(prefix), "--dataset", "cityscapes", "--root", str(tmp_path / "data"),
                 "--pad-to", "65,129", "--out", str(out), "--runtime", "eager"]) == 0  # fmt: skip
    assert (out / "metrics.json").is_file() and "mIoU" in capsys.readouterr().out
    assert main(["eval", "--weights", str(prefix)]) == 2
    assert "atrous eval needs --config (a run's config.yaml or a recipe) or --dataset NAME" in capsys.readouterr().err
