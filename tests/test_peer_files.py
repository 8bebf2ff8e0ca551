"""Files as other projects' training runs write them: their tensors come out, their code never runs, and
``from_pretrained`` builds the model they describe with the same logits as the project's own architecture."""

import subprocess
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import randomise_batchnorm
from torch import nn
from torchvision.models import resnet50, segmentation
from torchvision.models._utils import IntermediateLayerGetter

import atrous
from atrous.checkpoint import model_checkpoint
from atrous.cli import main
from atrous.errors import WeightsError


class _Payload:
    """Unpickled by a permissive loader, it runs ``exec`` and leaves a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def _small_model():
    torch.manual_seed(0)
    return randomise_batchnorm(atrous.build_model("deeplabv3", backbone="resnet18", num_classes=3)).eval()


def _relative_difference(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return ((ours - reference).abs().max() / reference.abs().max()).item()


def test_code_hidden_in_a_valid_training_run_file_never_runs(tmp_path, capsys):
    marker = tmp_path / "payload_ran"
    model = _small_model()
    model.set_labels(["a", "b", "c"], None)
    path = tmp_path / "best_deeplabv3_resnet18_voc_os16.pth"
    torch.save({**model_checkpoint(model), "best_score": np.float64(0.7), "hidden": _Payload(marker),
                "history": [_Payload(marker), {"deeper": _Payload(marker)}]}, path)  # fmt: skip
    report = atrous.load_weights(atrous.build_model(model.spec), path)
    assert report.ok and any("builtins.exec" in message for message in report.messages)
    loaded = atrous.from_pretrained(path)
    images = torch.randn(1, 3, 33, 41)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images).logits, model(images).logits, rtol=0, atol=0)
    assert loaded.class_names == ["a", "b", "c"]
    assert main(["export", "--weights", str(path), "--format", "torchscript", "--out", str(tmp_path / "m.pt")]) == 0
    bare = tmp_path / "payload_only.pth"
    torch.save(_Payload(marker), bare)
    with pytest.raises(WeightsError, match="payload_only.pth: expected a non-empty mapping"):
        atrous.load_weights(atrous.build_model(model.spec), bare)
    assert main(["predict", "--weights", str(bare), str(path), "--out", str(tmp_path / "out")]) == 2
    assert not marker.exists()  # through load_weights, from_pretrained, export and predict: nothing ran
    # The control: a permissive loader does run it, so the assertions above could have failed.
    subprocess.run([sys.executable, "-c", f"import torch; torch.load({str(bare)!r}, weights_only=False)"], check=True)
    assert marker.read_text() == "ran"


def _mmengine_history_buffer():
    """A class pickled under mmengine's name (mmengine is not installed: the reader must not need it)."""
    module = types.ModuleType("mmengine.logging.history_buffer")

    class HistoryBuffer:
        def __init__(self):
            self._log_history = np.array([0.5, 0.25])
            self._count_history = np.array([1, 1])

    HistoryBuffer.__module__, HistoryBuffer.__qualname__ = module.__name__, "HistoryBuffer"
    module.HistoryBuffer = HistoryBuffer
    return module, HistoryBuffer


def test_the_containers_peers_write_give_up_their_tensors(tmp_path, monkeypatch):
    model = _small_model()
    state = model.state_dict()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    module, history_buffer = _mmengine_history_buffer()
    for name in ("mmengine", "mmengine.logging", "mmengine.logging.history_buffer"):
        monkeypatch.setitem(sys.modules, name, module)
    files = {
        "vainf.pth": {"cur_itrs": 30000, "model_state": state, "optimizer_state": optimizer.state_dict(),
                      "scheduler_state": {"last_epoch": 3}, "best_score": np.float64(0.77)},
        "model_best.pth.tar": {"epoch": 50, "state_dict": state, "optimizer": optimizer.state_dict(),
                               "best_pred": np.float64(0.79)},
        "mmseg_iter_80000.pth": {"meta": {"cfg": "model = dict(type='EncoderDecoder')", "iter": 80000},
                                 "state_dict": state, "message_hub": {"log_scalars": {"loss": history_buffer()}}},
        "whole_model.pth": model,  # torch.save(model), as some smp users do
    }  # fmt: skip
    for name, contents in files.items():
        torch.save(contents, tmp_path / name)
    monkeypatch.delitem(sys.modules, "mmengine.logging.history_buffer")  # gone, as on a machine without mmengine
    images = torch.randn(1, 3, 29, 37)
    for name in files:
        fresh = atrous.build_model(model.spec)
        report = atrous.load_weights(fresh, tmp_path / name)
        assert report.ok and len(report.loaded) == len(state), name
        with torch.no_grad():
            torch.testing.assert_close(fresh.eval()(images).logits, model(images).logits, rtol=0, atol=0)
    mmseg = atrous.load_weights(atrous.build_model(model.spec), tmp_path / "mmseg_iter_80000.pth")
    assert any("HistoryBuffer" in message for message in mmseg.messages)


# ------------------------------------------------------------------------------------------ VainF DeepLabV3


class _VainFHead(nn.Module):
    """VainF's ``DeepLabHead``: ASPP, 3x3 conv + BN + ReLU, 1x1 classifier, kept under one more ``classifier``."""

    def __init__(self, num_classes: int, rates: list[int]):
        super().__init__()
        self.classifier = segmentation.deeplabv3.DeepLabHead(2048, num_classes, rates)

    def forward(self, features):
        return self.classifier(features["out"])


class _VainFDeepLabV3(nn.Module):
    """VainF's ``deeplabv3_resnet50``: torchvision's ResNet-50 dilated to the output stride, its layer4 into the head,
    logits resized bilinearly to the input (``align_corners=False``)."""

    def __init__(self, output_stride: int, num_classes: int = 21):
        super().__init__()
        dilation = [False, True, True] if output_stride == 8 else [False, False, True]
        self.backbone = IntermediateLayerGetter(resnet50(replace_stride_with_dilation=dilation), {"layer4": "out"})
        self.classifier = _VainFHead(num_classes, [12, 24, 36] if output_stride == 8 else [6, 12, 18])

    def forward(self, images):
        logits = self.classifier(self.backbone(images))
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)


@pytest.mark.parametrize("output_stride", [16, 8])
def test_vainf_deeplabv3_file_gives_vainfs_logits(output_stride, tmp_path):
    torch.manual_seed(output_stride)
    reference = randomise_batchnorm(_VainFDeepLabV3(output_stride), output_stride).eval()
    path = tmp_path / f"best_deeplabv3_resnet50_voc_os{output_stride}.pth"
    torch.save({"cur_itrs": 30000, "model_state": reference.state_dict(), "optimizer_state": {},
                "scheduler_state": {}, "best_score": np.float64(0.77)}, path)  # fmt: skip
    model = atrous.from_pretrained(path)
    assert (model.spec.name, model.spec.backbone, model.output_stride) == ("deeplabv3", "resnet50", output_stride)
    images = torch.randn(1, 3, 65, 81)
    with torch.no_grad():
        expected = reference(images)
        assert _relative_difference(model(images).logits, expected) < 1e-5
    # The negative control: one BatchNorm's statistics permuted in the file, and the comparison fails.
    state = reference.state_dict()
    key = "backbone.layer3.2.bn2.running_mean"
    state[key] = state[key][torch.randperm(state[key].numel(), generator=torch.Generator().manual_seed(0))]
    broken = atrous.from_pretrained({"model_state": state}, output_stride=output_stride)
    with torch.no_grad():
        assert _relative_difference(broken(images).logits, expected) > 1e-3


def test_vainf_file_without_its_stride_in_the_name_says_what_it_assumed(tmp_path, caplog):
    reference = _VainFDeepLabV3(16, num_classes=19)
    path = tmp_path / "checkpoint.pth"
    torch.save({"model_state": reference.state_dict(), "best_score": np.float64(0.5)}, path)
    with caplog.at_level("INFO", logger="atrous"):
        model = atrous.from_pretrained(path)
    assert model.output_stride == 16 and model.num_classes == 19
    assert "assumed output stride 16, VainF's default" in caplog.text
    assert atrous.from_pretrained(path, output_stride=8).output_stride == 8


# ----------------------------------------------------------------------------------- torchvision, DeepLab-v2


@pytest.mark.parametrize("tv_name", ["deeplabv3_resnet50", "deeplabv3_mobilenet_v3_large"])
def test_torchvision_files_build_torchvisions_model(tv_name, tmp_path):
    reference = getattr(segmentation, tv_name)(weights=None, weights_backbone=None, aux_loss=True, num_classes=21)
    randomise_batchnorm(reference).eval()
    path = tmp_path / f"{tv_name}_coco.pth"
    torch.save(reference.state_dict(), path)
    model = atrous.from_pretrained(path)
    assert model.spec == atrous.build_model(atrous.PRESETS[tv_name]).spec
    images = torch.randn(1, 3, 67, 90)
    with torch.no_grad():
        expected = reference(images)
        assert _relative_difference(model(images).logits, expected["out"]) < 1e-5
        assert _relative_difference(model(images).aux_logits, expected["aux"]) < 1e-5


def test_deeplabv2_files_say_their_classes_and_the_init_file_is_pointed_to_pretrained_backbone():
    source = atrous.build_model("deeplabv2", num_classes=19, aux=True)
    port = {}
    for key, value in source.state_dict().items():
        key = key.replace("backbone.", "", 1)
        port[key.replace("aux_head.classifiers.", "layer5.conv2d_list.").replace("head.classifiers.", "layer6.conv2d_list.")] = value
    model = atrous.from_pretrained(port)
    assert (model.num_classes, model.spec.aux, model.spec.backbone) == (19, True, "resnet101_caffe")
    init_file = {f"Scale.{k}": v for k, v in port.items() if not k.startswith(("layer5", "layer6"))}
    with pytest.raises(WeightsError, match="ImageNet init file.*pretrained_backbone"):
        atrous.from_pretrained(init_file)
    with pytest.raises(WeightsError, match="backbone only.*pretrained_backbone"):
        atrous.from_pretrained(torchvision_resnet_state())


def torchvision_resnet_state():
    import torchvision

    return torchvision.models.resnet18(weights=None).state_dict()
