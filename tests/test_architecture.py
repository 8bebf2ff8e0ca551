"""The architecture's contracts: one ModelSpec from build to checkpoint to command line, labels that travel with
the model, self-normalising exports, configs checked before any work, and a backbone added by one registry entry."""

import dataclasses

import numpy as np
import pytest
import torch
from conftest import randomise_batchnorm
from data_fixtures import make_cityscapes
from PIL import Image
from torch import nn

import atrous
from atrous.checkpoint import load_checkpoint, model_checkpoint
from atrous.cli import build_parser, main
from atrous.config import ConfigError, config_from_dict, load_config
from atrous.data import SynthSpec, write_synthetic
from atrous.data.cityscapes import CITYSCAPES_PALETTE
from atrous.data.io import read_mask
from atrous.engine import train
from atrous.models import PRESETS
from atrous.models.backbones import BACKBONES, Backbone, BackboneEntry, dilate
from atrous.models.normalization import IMAGENET_RGB


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    write_synthetic(root, SynthSpec(seed=4, train=8, val=3, size=40), progress=False)
    return root


def run_config(root, out, model, **train):
    return config_from_dict({
        "name": "run", "out_dir": str(out), "model": model,
        "data": {"dataset": "synthetic", "root": str(root), "crop_size": 32, "batch_size": 4, "val_batch_size": 1,
                 "workers": 0},
        "train": {"iterations": 2, "val_every": 2, "save_every": 2, "log_every": 1, **train},
    })  # fmt: skip


def test_spec_round_trip_through_training_and_checkpoint(synthetic, tmp_path):
    config = run_config(synthetic, tmp_path, {"name": "deeplabv3plus", "backbone": "resnet18", "num_classes": 7,
                                              "output_stride": 8, "aux": True, "multi_grid": [1, 2]})  # fmt: skip
    train(config)
    path = config.run_dir / "checkpoints" / "last.pt"
    state = load_checkpoint(path)
    loaded = atrous.load_trained_model(path)
    assert loaded.spec == atrous.build_model(config.model).spec == atrous.ModelSpec.from_dict(state["spec"])
    assert loaded.spec.multi_grid == (1, 2) and loaded.spec.frozen_bn == "none"  # defaults written in
    dataset = atrous.build_dataset("synthetic", synthetic, "val")
    assert loaded.class_names == dataset.class_names == list(atrous.data.SYNTHETIC_CLASSES)
    np.testing.assert_array_equal(loaded.palette, dataset.palette)
    reference = atrous.build_model(config.model).eval()
    reference.load_state_dict(state["model"])  # the weights as saved, in a model built independently
    images = torch.randn(2, 3, 37, 45)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images).logits, reference(images).logits, rtol=0, atol=0)
        torch.testing.assert_close(loaded(images).aux_logits, reference(images).aux_logits, rtol=0, atol=0)

    # The command line's spec flags: unset ones (None) change nothing, a set one changes only its own field.
    def spec_from(*flags):
        from atrous.cli import _load_model

        args = build_parser().parse_args(["predict", "--weights", str(path), "image.png", "--out", "o", *flags])
        return _load_model(args).spec

    assert spec_from() == loaded.spec
    changed = spec_from("--output-stride", "16")
    differing = {f.name for f in dataclasses.fields(changed) if getattr(changed, f.name) != getattr(loaded.spec, f.name)}
    assert differing == {"output_stride"}


def test_overrides_on_foreign_files_are_applied_and_presets_reproduce_them(tmp_path, capsys):
    from torchvision.models import segmentation

    reference = segmentation.deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, aux_loss=True)
    randomise_batchnorm(reference).eval()
    path = tmp_path / "deeplabv3_mobilenet_v3_large_coco.pth"
    torch.save(reference.state_dict(), path)
    # --backbone changes the architecture the file describes: weights that then do not fit are an error, not ignored.
    assert main(["export", "--weights", str(path), "--backbone", "resnet18", "--format", "torchscript"]) == 2
    assert "does not fit the model" in capsys.readouterr().err
    model = atrous.load_trained_model(path, spec=PRESETS["deeplabv3_mobilenet_v3_large"])
    images = torch.randn(1, 3, 65, 81)
    with torch.no_grad():
        torch.testing.assert_close(model(images).logits, reference(images)["out"], atol=1e-4, rtol=0)
    assert model.class_names is None  # a torchvision file names no classes


@pytest.fixture(scope="module")
def cityscapes_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cityscapes")
    mask = np.tile(np.array([7, 8, 11, 21, 23, 24, 26, 0], dtype=np.uint8).repeat(6), (40, 1))  # (40, 48) labelIds
    make_cityscapes(root / "data", mask, split="train")
    make_cityscapes(root / "data", mask, split="val")
    config = config_from_dict({
        "name": "cs", "out_dir": str(root / "runs"), "model": {"name": "deeplabv3", "backbone": "resnet18", "num_classes": 19},
        "data": {"dataset": "cityscapes", "root": str(root / "data"), "crop_size": 32, "batch_size": 2, "workers": 0},
        "train": {"iterations": 1, "log_every": 1},
    })  # fmt: skip
    train(config)
    return root, config.run_dir / "checkpoints" / "last.pt"


def test_predict_with_a_cityscapes_model_writes_cityscapes_colours(cityscapes_run, tmp_path):
    root, checkpoint = cityscapes_run
    image = next((root / "data" / "leftImg8bit" / "val").rglob("*.png"))
    assert main(["predict", "--weights", str(checkpoint), str(image), "--out", str(tmp_path), "--runtime", "eager"]) == 0
    label_png = Image.open(tmp_path / f"{image.stem}.png")
    palette = np.array(label_png.getpalette()[: 19 * 3], dtype=np.uint8).reshape(19, 3)
    np.testing.assert_array_equal(palette, CITYSCAPES_PALETTE[:19])
    model = atrous.load_trained_model(checkpoint)
    assert model.class_names[:3] == ["road", "sidewalk", "building"]


@pytest.mark.parametrize("name, backbone", [("deeplabv3plus", "resnet18"), ("deeplabv2", "resnet101_caffe")])
def test_exported_onnx_on_raw_uint8_rgb_gives_the_labels_of_predict(name, backbone, tmp_path):
    """The graph normalises inside (ImageNet RGB, or Caffe BGR mean for DeepLab-v2): a deployment feeds the decoded
    file as it is."""
    import onnxruntime

    torch.manual_seed(0)
    model = atrous.build_model(name, backbone=backbone, num_classes=5, frozen_bn="none")
    calibration = model.normalization(torch.randint(0, 256, (2, 3, 64, 64), generator=torch.Generator().manual_seed(1)))
    randomise_batchnorm(model, images=calibration).eval()
    checkpoint = tmp_path / "model.pt"
    torch.save(model_checkpoint(model), checkpoint)
    photo = tmp_path / "photo.png"
    pixels = np.random.default_rng(0).integers(0, 256, (45, 61, 3), dtype=np.uint8)
    pixels[:, :30, 0] = 255  # strongly coloured halves: a channel-order mistake would change the labels
    Image.fromarray(pixels).save(photo)

    onnx_path = tmp_path / "model.onnx"
    assert main(["export", "--weights", str(checkpoint), "--out", str(onnx_path)]) == 0
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(uint8)"
    logits = session.run(None, {"images": pixels.transpose(2, 0, 1)[None].copy()})[0]
    exported = logits.argmax(1)[0]

    assert main(["predict", "--weights", str(checkpoint), str(photo), "--out", str(tmp_path / "out"),
                 "--runtime", "eager"]) == 0  # fmt: skip
    predicted = read_mask(tmp_path / "out" / "photo.png")
    assert len(np.unique(predicted)) > 1  # a model that predicts one class everywhere would prove nothing
    assert (exported != predicted).mean() <= 1e-3
    # The same graph fed normalised floats (the old behaviour) is a flag away, and differs from the raw graph.
    legacy = tmp_path / "legacy.onnx"
    assert main(["export", "--weights", str(checkpoint), "--out", str(legacy), "--normalized-input"]) == 0
    assert onnxruntime.InferenceSession(str(legacy), providers=["CPUExecutionProvider"]).get_inputs()[0].type == "tensor(float)"


def test_a_choice_typo_fails_naming_key_value_and_choices_before_any_model_is_built(tmp_path, monkeypatch, capsys):
    def no_model(*args, **kwargs):
        raise AssertionError("a model was built before the config was checked")

    monkeypatch.setattr(atrous.models, "build_model", no_model)
    monkeypatch.setattr(atrous.engine, "build_model", no_model)
    recipe = tmp_path / "typo.yaml"
    recipe.write_text("model: {name: deeplabv3, backbone: resnet18}\noptim: {name: sgdd}\n")
    with pytest.raises(ConfigError, match=r"optim.name: unknown value 'sgdd'; choose from \['sgd', 'adamw'\]"):
        load_config(recipe)
    assert main(["train", "--config", str(recipe)]) == 2
    assert "optim.name: unknown value 'sgdd'" in capsys.readouterr().err
    for values, message in [
        ({"model": {"frozen_bn": "yes"}}, r"model.frozen_bn: unknown value 'yes'; choose from \['none', 'affine', 'all'\]"),
        ({"model": {"backbone": "resnet5"}}, r"model: unknown backbone 'resnet5'; choose from \["),
        ({"train": {"amp": "fp32"}}, r"train.amp: unknown value 'fp32'; choose from \['none', 'bf16', 'fp16'\]"),
        ({"data": {"dataset": "vco"}}, r"data.dataset: unknown value 'vco'; choose from \['ade20k'"),
        ({"optim": {"momentum": 1.5}}, r"optim.momentum=1.5: must be in \[0, 1\)"),
        ({"train": {"amp": "fp16", "device": "cpu"}}, "fp16 needs CUDA"),
        ({"data": {"batch_size": 6}, "train": {"grad_accum": 4}}, "must be divisible by train.grad_accum=4"),
    ]:
        with pytest.raises(ConfigError, match=message):
            config_from_dict(values)


class ToyBackbone(Backbone):
    """Four strided 3x3 convs (strides 4, 8, 16, 32 before dilation): a backbone atrous has never seen."""

    def __init__(self, *, output_stride, multi_grid=None):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=4, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.stage2 = nn.Sequential(nn.Conv2d(8, 12, 3, stride=2, padding=1), nn.BatchNorm2d(12), nn.ReLU())
        self.stage3 = nn.Sequential(nn.Conv2d(12, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.stage4 = nn.Sequential(nn.Conv2d(16, 24, 3, stride=2, padding=1), nn.BatchNorm2d(24), nn.ReLU())
        strides = dilate([[self.stage2], [self.stage3], [self.stage4]], input_stride=4, output_stride=output_stride,
                         multi_grid=multi_grid)  # fmt: skip
        self.channels = {"low": 8, "aux": 16, "out": 24}
        self.strides = {"low": 4, "aux": strides[1], "out": strides[2]}
        self.output_stride = output_stride

    def forward(self, images):
        low = self.stem(images)
        aux = self.stage3(self.stage2(low))
        return {"low": low, "aux": aux, "out": self.stage4(aux)}


def test_a_backbone_added_by_one_registry_entry_trains_evaluates_and_exports(synthetic, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(BACKBONES, "toy", BackboneEntry(build=ToyBackbone, normalization=IMAGENET_RGB))
    for output_stride in (8, 16):
        body = atrous.build_model("deeplabv3", backbone="toy", num_classes=3, output_stride=output_stride).backbone
        assert body.strides["out"] == output_stride
        assert body.eval()(torch.randn(1, 3, 64, 64))["out"].shape[-1] == 64 // output_stride
    config = run_config(synthetic, tmp_path, {"name": "deeplabv3plus", "backbone": "toy", "num_classes": 7, "aux": True},
                        iterations=3)  # fmt: skip
    summary = train(config)
    assert summary["iteration"] == 3 and summary["last_val"] is not None
    checkpoint = config.run_dir / "checkpoints" / "last.pt"
    recipe = tmp_path / "toy.yaml"
    recipe.write_text((config.run_dir / "config.yaml").read_text())
    assert main(["eval", "--config", str(recipe), "--weights", str(checkpoint), "--out", str(tmp_path / "eval")]) == 0
    assert "mIoU" in capsys.readouterr().out
    assert main(["export", "--weights", str(checkpoint), "--out", str(tmp_path / "toy.onnx")]) == 0
    assert "parity OK" in capsys.readouterr().out


def test_bench_training_times_the_engines_own_step(monkeypatch):
    import atrous.engine
    from atrous.bench.training import compare_training_step

    calls = []
    real_step = atrous.engine.train_step

    def counted(run):
        calls.append(run.iteration)
        return real_step(run)

    monkeypatch.setattr(atrous.engine, "train_step", counted)
    result = compare_training_step(65, rounds=1)
    assert len(calls) == len(result["losses_atrous"]) >= 2  # warm-up and timed rounds all ran train_step
    assert result["max_relative_loss_difference"] < 1e-3  # the same optimisation as torchvision's plain loop
