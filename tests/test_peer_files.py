"""Files as other projects' training runs write them: their tensors come out, their code never runs, and
``from_pretrained`` builds the model they describe with the same logits as the project's own architecture."""

import re
import subprocess
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import randomise_batchnorm
from torch import nn
from torchvision.models import segmentation
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

    def __init__(self, num_classes: int, rates: list[int], in_channels: int = 2048):
        super().__init__()
        self.classifier = segmentation.deeplabv3.DeepLabHead(in_channels, num_classes, rates)

    def forward(self, features):
        return self.classifier(features["out"])


class _VainFDeepLabV3(nn.Module):
    """VainF's ``deeplabv3_resnet50``: torchvision's ResNet-50 dilated to the output stride, its layer4 into the head,
    logits resized bilinearly to the input (``align_corners=False``)."""

    def __init__(self, output_stride: int, num_classes: int = 21, depth: int = 50):
        super().__init__()
        import torchvision

        dilation = [False, True, True] if output_stride == 8 else [False, False, True]
        resnet = getattr(torchvision.models, f"resnet{depth}")(replace_stride_with_dilation=dilation)
        self.backbone = IntermediateLayerGetter(resnet, {"layer4": "out"})
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
    with caplog.at_level("WARNING", logger="atrous"):  # a warning: Python shows it with no logging set up
        model = atrous.from_pretrained(path)
    assert model.output_stride == 16 and model.num_classes == 19
    assert f"{path}: assumed output stride 16, VainF's default" in caplog.text
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


# --------------------------------------------------------------------------------- kazuto1011 DeepLabV2 (MSC)


class _KazutoConvBnReLU(nn.Sequential):
    def __init__(self, in_ch, out_ch, kernel, stride, padding, dilation, relu=True):
        super().__init__()
        self.add_module("conv", nn.Conv2d(in_ch, out_ch, kernel, stride, padding, dilation, bias=False))
        self.add_module("bn", nn.BatchNorm2d(out_ch, eps=1e-5, momentum=0.001))
        if relu:
            self.add_module("relu", nn.ReLU())


class _KazutoBottleneck(nn.Module):
    def __init__(self, in_ch, out_ch, stride, dilation, downsample):
        super().__init__()
        mid = out_ch // 4
        self.reduce = _KazutoConvBnReLU(in_ch, mid, 1, stride, 0, 1)
        self.conv3x3 = _KazutoConvBnReLU(mid, mid, 3, 1, dilation, dilation)
        self.increase = _KazutoConvBnReLU(mid, out_ch, 1, 1, 0, 1, relu=False)
        self.shortcut = _KazutoConvBnReLU(in_ch, out_ch, 1, stride, 0, 1, relu=False) if downsample else nn.Identity()

    def forward(self, x):
        return F.relu(self.increase(self.conv3x3(self.reduce(x))) + self.shortcut(x))


class _KazutoDeepLabV2(nn.Sequential):
    """kazuto1011's DeepLabV2: layer1 = stem (7x7/2 conv, 3x3/2 ceil-mode pool), layer2-5 = stages of blocks
    block1..; strides (1, 2, 1, 1), dilations (1, 1, 2, 4); four summed 3x3 classifiers with bias. Stride-8 logits."""

    def __init__(self, num_classes, rates=(6, 12, 18, 24)):
        super().__init__()
        stem = nn.Sequential()
        stem.add_module("conv1", _KazutoConvBnReLU(3, 64, 7, 2, 3, 1))
        stem.add_module("pool", nn.MaxPool2d(3, 2, 1, ceil_mode=True))
        self.add_module("layer1", stem)
        channels = [64, 256, 512, 1024, 2048]
        for index, (blocks, stride, dilation) in enumerate(zip((3, 4, 23, 3), (1, 2, 1, 1), (1, 1, 2, 4))):
            layer = nn.Sequential()
            for b in range(blocks):
                in_ch = channels[index] if b == 0 else channels[index + 1]
                layer.add_module(f"block{b + 1}", _KazutoBottleneck(in_ch, channels[index + 1], stride if b == 0 else 1,
                                                                    dilation, downsample=b == 0))  # fmt: skip
            self.add_module(f"layer{index + 2}", layer)
        aspp = _KazutoASPP(2048, num_classes, rates)
        self.add_module("aspp", aspp)


class _KazutoASPP(nn.Module):
    def __init__(self, in_ch, num_classes, rates):
        super().__init__()
        for i, rate in enumerate(rates):
            self.add_module(f"c{i}", nn.Conv2d(in_ch, num_classes, 3, 1, padding=rate, dilation=rate, bias=True))

    def forward(self, x):
        return sum(stage(x) for stage in self.children())


class _KazutoMSC(nn.Module):
    """The wrapper its released files are saved from (keys "base."); eval at scale 1 is the base's logits."""

    def __init__(self, base):
        super().__init__()
        self.base = base


def test_kazuto_deeplabv2_msc_file_gives_its_logits_after_its_resize(tmp_path):
    torch.manual_seed(5)
    reference = _KazutoMSC(_KazutoDeepLabV2(num_classes=21))
    calibration = atrous.models.CAFFE_BGR(torch.randint(0, 256, (2, 3, 64, 64), generator=torch.Generator().manual_seed(2)))
    randomise_batchnorm(reference.base, 5, images=calibration).eval()
    for module in reference.modules():  # its summed classifier: give it a scale that shows in the logits
        if isinstance(module, _KazutoASPP):
            for conv in module.children():
                nn.init.normal_(conv.bias, 0.0, 0.5)
    path = tmp_path / "deeplabv2_resnet101_msc-vocaug-20000.pth"
    torch.save(reference.state_dict(), path)
    model = atrous.from_pretrained(path)
    assert (model.spec.name, model.spec.backbone, model.num_classes) == ("deeplabv2", "resnet101_caffe", 21)
    assert model.normalization.name == "caffe_bgr"
    images = calibration[:1, :, :57, :49]
    with torch.no_grad():
        logits = reference.base(images)
        assert logits.shape[-2:] == (8, 7)  # stride 8, as the peer returns it
        expected = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
        assert _relative_difference(model(images).logits, expected) < 1e-5
    state = reference.state_dict()
    key = "base.layer4.block7.conv3x3.bn.running_var"
    state[key] = state[key][torch.randperm(state[key].numel(), generator=torch.Generator().manual_seed(0))]
    with torch.no_grad():
        assert _relative_difference(atrous.from_pretrained(state)(images).logits, expected) > 1e-3


class _KazutoDeepLabV1(_KazutoDeepLabV2):
    """kazuto1011's "DeepLabV1": the same ResNet, one 1x1 classifier ``fc`` (with bias) in place of the ASPP."""

    def __init__(self, num_classes):
        super().__init__(num_classes)
        del self.aspp
        self.add_module("fc", nn.Conv2d(2048, num_classes, 1))


@pytest.mark.parametrize("version", ["v1_coco_init", "v2s"])
def test_kazuto_coco_init_and_v2s_files_give_its_logits(version, tmp_path):
    """The COCO init file as its convert.py writes it (no MSC prefix, 91 classes), and DeepLabV2S (rates 3-12, which
    no file records: given as an override)."""
    torch.manual_seed(9)
    reference = _KazutoDeepLabV1(91) if version == "v1_coco_init" else _KazutoDeepLabV2(5, rates=(3, 6, 9, 12))
    calibration = atrous.models.CAFFE_BGR(torch.randint(0, 256, (2, 3, 64, 64), generator=torch.Generator().manual_seed(2)))
    randomise_batchnorm(reference, 9, images=calibration).eval()
    path = tmp_path / ("deeplabv1_resnet101-coco.pth" if version == "v1_coco_init" else "checkpoint_final.pth")
    torch.save(reference.state_dict(), path)
    overrides = {} if version == "v1_coco_init" else {"atrous_rates": (3, 6, 9, 12)}
    model = atrous.from_pretrained(path, **overrides)
    expected_spec = ("deeplabv1_kazuto", 91, 8) if version == "v1_coco_init" else ("deeplabv2", 5, 8)
    assert (model.spec.name, model.num_classes, model.output_stride) == expected_spec
    images = calibration[:1, :, :57, :49]
    with torch.no_grad():
        expected = F.interpolate(reference(images), size=images.shape[-2:], mode="bilinear", align_corners=False)
        assert _relative_difference(model(images).logits, expected) < 1e-5
        if version == "v2s":  # the control: DeepLabV2's default rates are another network
            assert _relative_difference(atrous.from_pretrained(path)(images).logits, expected) > 1e-3
        else:
            state = reference.state_dict()
            key = "layer5.block2.conv3x3.bn.running_mean"
            broken = dict(state, **{key: state[key].flip(0)})
            assert _relative_difference(atrous.from_pretrained(broken)(images).logits, expected) > 1e-3


# --------------------------------------------------------------------------- segmentation_models_pytorch (smp)


class _SmpSeparableConv(nn.Sequential):
    """smp's SeparableConv2d: depthwise, then pointwise, nothing between."""

    def __init__(self, in_ch, out_ch, dilation=1):
        super().__init__(nn.Conv2d(in_ch, in_ch, 3, padding=dilation, dilation=dilation, groups=in_ch, bias=False),
                         nn.Conv2d(in_ch, out_ch, 1, bias=False))  # fmt: skip


class _SmpPooling(nn.Sequential):
    def __init__(self, in_ch):
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_ch, 256, 1, bias=False), nn.BatchNorm2d(256), nn.ReLU())

    def forward(self, x):
        return F.interpolate(super().forward(x), size=x.shape[-2:], mode="bilinear", align_corners=False)


class _SmpASPP(nn.Module):
    def __init__(self, in_ch, rates, separable):
        super().__init__()

        def atrous(rate):
            conv = _SmpSeparableConv(in_ch, 256, rate) if separable else nn.Conv2d(in_ch, 256, 3, padding=rate,
                                                                                   dilation=rate, bias=False)  # fmt: skip
            return nn.Sequential(conv, nn.BatchNorm2d(256), nn.ReLU())

        branches = [nn.Sequential(nn.Conv2d(in_ch, 256, 1, bias=False), nn.BatchNorm2d(256), nn.ReLU())]
        self.convs = nn.ModuleList(branches + [atrous(rate) for rate in rates] + [_SmpPooling(in_ch)])
        self.project = nn.Sequential(nn.Conv2d(5 * 256, 256, 1, bias=False), nn.BatchNorm2d(256), nn.ReLU(), nn.Dropout(0.5))

    def forward(self, x):
        return self.project(torch.cat([branch(x) for branch in self.convs], dim=1))


def _smp_encoder(depth: int, output_stride: int) -> nn.Module:
    """torchvision's ResNet without fc/avgpool; every conv of a dilated stage loses its stride and gets the stage's
    rate (padding (k // 2) x rate), first block included."""
    import torchvision

    resnet = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    del resnet.fc, resnet.avgpool
    for stage, stage_stride in ((resnet.layer3, 16), (resnet.layer4, 32)):
        if stage_stride > output_stride:
            rate = stage_stride // output_stride
            for conv in (m for m in stage.modules() if isinstance(m, nn.Conv2d)):
                conv.stride, conv.dilation = (1, 1), (rate, rate)
                conv.padding = ((conv.kernel_size[0] // 2) * rate, (conv.kernel_size[1] // 2) * rate)
    return resnet


class _SmpDeepLab(nn.Module):
    """smp's DeepLabV3 (plus=False: aspp, 3x3 conv, bn, relu) or DeepLabV3+ (separable ASPP, separable conv after it,
    x4 up, 48-channel projection of layer1, ASPP first in the concat, one separable conv); a 1x1 head upsampled with
    align_corners=True."""

    def __init__(self, depth, classes, output_stride, plus):
        super().__init__()
        self.plus, self.output_stride = plus, output_stride
        self.encoder = _smp_encoder(depth, output_stride)
        self._decoder((2048, 256) if depth >= 50 else (512, 64), classes)

    def _decoder(self, channels, classes):
        top, low = channels
        self.decoder = nn.Module()
        if self.plus:
            self.decoder.aspp = nn.Sequential(_SmpASPP(top, (12, 24, 36), True), _SmpSeparableConv(256, 256),
                                              nn.BatchNorm2d(256), nn.ReLU())  # fmt: skip
            self.decoder.block1 = nn.Sequential(nn.Conv2d(low, 48, 1, bias=False), nn.BatchNorm2d(48), nn.ReLU())
            self.decoder.block2 = nn.Sequential(_SmpSeparableConv(304, 256), nn.BatchNorm2d(256), nn.ReLU())
        else:
            self.decoder.aspp = _SmpASPP(top, (12, 24, 36), False)
            self.decoder.conv, self.decoder.bn = nn.Conv2d(256, 256, 3, padding=1, bias=False), nn.BatchNorm2d(256)
        self.segmentation_head = nn.Sequential(nn.Conv2d(256, classes, 1))

    def features(self, x):
        """(the stride-4 feature, the deepest)."""
        e = self.encoder
        layer1 = e.layer1(e.maxpool(e.relu(e.bn1(e.conv1(x)))))
        return layer1, e.layer4(e.layer3(e.layer2(layer1)))

    def forward(self, x):
        layer1, top = self.features(x)
        if self.plus:
            up = 4 if self.output_stride == 16 else 2  # to stride 4
            context = F.interpolate(self.decoder.aspp(top), scale_factor=up, mode="bilinear", align_corners=True)
            decoded = self.decoder.block2(torch.cat([context, self.decoder.block1(layer1)], dim=1))
            scale = 4
        else:
            decoded = F.relu(self.decoder.bn(self.decoder.conv(self.decoder.aspp(top))))
            scale = self.output_stride
        return F.interpolate(self.segmentation_head(decoded), scale_factor=scale, mode="bilinear", align_corners=True)


@pytest.mark.parametrize("depth, output_stride, plus", [(50, 8, False), (34, 16, True), (50, 8, True)])
def test_smp_files_and_folders_give_smps_logits(depth, output_stride, plus, tmp_path):
    import json

    from safetensors.torch import save_file

    torch.manual_seed(depth + output_stride)
    reference = randomise_batchnorm(_SmpDeepLab(depth, 5, output_stride, plus), depth).eval()
    state = reference.state_dict()
    folder = tmp_path / "smp_model"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({
        "_model_class": "DeepLabV3Plus" if plus else "DeepLabV3", "encoder_name": f"resnet{depth}", "classes": 5,
        "encoder_output_stride": output_stride, "decoder_atrous_rates": [12, 24, 36], "decoder_aspp_separable": plus,
    }))  # fmt: skip
    images = torch.randn(1, 3, 64, 96)  # smp wants sides divisible by the output stride
    with torch.no_grad():
        expected = reference(images)
        for source in (folder, {"state_dict": state}):
            model = atrous.from_pretrained(source, output_stride=None if source is folder else output_stride)
            assert model.spec.align_corners and model.spec.first_block_dilation == "stage"
            assert _relative_difference(model(images).logits, expected) < 1e-5
        key = "encoder.layer2.1.bn1.running_mean"
        broken = dict(state, **{key: state[key].flip(0)})
        assert _relative_difference(atrous.from_pretrained(broken, output_stride=output_stride)(images).logits,
                                    expected) > 1e-3  # fmt: skip


class _SmpTimmDeepLab(_SmpDeepLab):
    """smp's model on a timm encoder ("tu-NAME", smp 0.5's TimmUniversalEncoder): timm's features_only network under
    ``encoder.model``; the decoder takes its stride-4 feature and its deepest."""

    def __init__(self, timm_name, classes, output_stride, plus):
        import timm

        nn.Module.__init__(self)
        self.plus, self.output_stride = plus, output_stride
        self.encoder = nn.Module()
        self.encoder.model = timm.create_model(timm_name, features_only=True, output_stride=output_stride)
        self.low_index = self.encoder.model.feature_info.reduction().index(4)
        channels = self.encoder.model.feature_info.channels()
        self._decoder((channels[-1], channels[self.low_index]), classes)

    def features(self, x):
        features = self.encoder.model(x)
        return features[self.low_index], features[-1]


@pytest.mark.parametrize("timm_name, output_stride, plus", [("xception65", 16, True), ("convnext_atto", 8, True),
                                                            ("resnet18d", 8, False)])  # fmt: skip
def test_smp_files_with_a_timm_encoder_give_smps_logits(timm_name, output_stride, plus, tmp_path):
    """The encoder is the same network as atrous's timm:NAME backbone: its keys fill that backbone as they are."""
    import json

    from safetensors.torch import save_file

    pytest.importorskip("timm")
    torch.manual_seed(output_stride)
    reference = randomise_batchnorm(_SmpTimmDeepLab(timm_name, 4, output_stride, plus), 1).eval()
    state = {key: value.contiguous() for key, value in reference.state_dict().items()}
    folder = tmp_path / "smp_model"
    folder.mkdir()
    save_file(state, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({
        "_model_class": "DeepLabV3Plus" if plus else "DeepLabV3", "encoder_name": f"tu-{timm_name}", "classes": 4,
        "encoder_output_stride": output_stride, "decoder_atrous_rates": [12, 24, 36], "decoder_aspp_separable": plus,
    }))  # fmt: skip
    images = torch.randn(1, 3, 64, 96)
    model = atrous.from_pretrained(folder)
    assert model.spec.backbone == f"timm:{timm_name}"
    with torch.no_grad():
        assert _relative_difference(model(images).logits, reference(images)) < 1e-5
    with pytest.raises(WeightsError, match=r"a timm encoder .* pass the folder, or spec=ModelSpec\(name="):
        atrous.from_pretrained(state)  # a bare state dict does not say which timm model


def test_unknown_layouts_get_hints_only_when_they_are_true():
    model = _small_model()
    prefixed = {f"net.{key}": value for key, value in model.state_dict().items()}
    with pytest.raises(WeightsError, match=r"without the prefix 'net\.' on every key it is atrous"):
        atrous.load_weights(atrous.build_model(model.spec), prefixed)
    with pytest.raises(WeightsError, match=r"its tensors are under \['net'\] \(\d+ of them\): pass ckpt\['net'\]"):
        atrous.load_weights(atrous.build_model(model.spec), {"epoch": 3, "net": model.state_dict()})
    with pytest.raises(WeightsError) as caught:
        atrous.load_weights(atrous.build_model(model.spec), {"foo.weight": torch.ones(1), "bar.weight": torch.ones(1)})
    assert "prefix" not in str(caught.value) and "pass ckpt" not in str(caught.value)
    assert "nearest" not in str(caught.value) and "2 keys: 1 under 'foo.', 1 under 'bar.'" in str(caught.value)


def test_an_unknown_variant_of_a_known_layout_names_the_format_and_what_differs():
    """A VainF DeepLabV3+ whose low-level projection was renamed (as a fork might): not five first keys, but the
    nearest format and the keys it does not name."""
    state = _VainFDeepLabV3Plus(16).state_dict()
    state = {key.replace("classifier.project.", "classifier.low_proj."): value for key, value in state.items()}
    with pytest.raises(WeightsError) as caught:
        atrous.from_pretrained(state)
    message = str(caught.value)
    assert "the nearest is vainf_deeplabv3plus" in message and "keys it does not name: classifier.low_proj.0.weight" in message
    assert "num_batches_tracked" not in message.split("nearest")[0]


class _VainFPlusHead(nn.Module):
    """VainF's ``DeepLabHeadV3Plus``: project (low_level -> 48), ASPP (torchvision's layout), then cat([low, aspp])
    -> classifier (3x3 conv, BN, ReLU, 1x1)."""

    def __init__(self, num_classes, rates, in_channels=2048, low_channels=256):
        super().__init__()
        self.project = nn.Sequential(nn.Conv2d(low_channels, 48, 1, bias=False), nn.BatchNorm2d(48), nn.ReLU())
        self.aspp = segmentation.deeplabv3.ASPP(in_channels, rates)
        self.classifier = nn.Sequential(nn.Conv2d(304, 256, 3, padding=1, bias=False), nn.BatchNorm2d(256), nn.ReLU(),
                                        nn.Conv2d(256, num_classes, 1))  # fmt: skip

    def forward(self, features):
        low = self.project(features["low_level"])
        context = F.interpolate(self.aspp(features["out"]), size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(torch.cat([low, context], dim=1))


class _VainFSeparable(nn.Module):
    """VainF's ``AtrousSeparableConvolution``: body = depthwise, pointwise (no BN between, no bias)."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(conv.in_channels, conv.in_channels, conv.kernel_size, padding=conv.padding, dilation=conv.dilation,
                      groups=conv.in_channels, bias=False),
            nn.Conv2d(conv.in_channels, conv.out_channels, 1, bias=False),
        )  # fmt: skip

    def forward(self, x):
        return self.body(x)


def _vainf_separable(module: nn.Module) -> None:
    """Its ``convert_to_separable_conv``: every conv with a kernel over 1 becomes a separable pair, in place."""
    for name, child in module.named_children():
        if isinstance(child, nn.Conv2d) and child.kernel_size[0] > 1:
            setattr(module, name, _VainFSeparable(child))
        else:
            _vainf_separable(child)


class _VainFDeepLabV3Plus(nn.Module):
    def __init__(self, output_stride, num_classes=21, separable=False, depth=50):
        super().__init__()
        import torchvision

        dilation = [False, True, True] if output_stride == 8 else [False, False, True]
        resnet = getattr(torchvision.models, f"resnet{depth}")(replace_stride_with_dilation=dilation)
        self.backbone = IntermediateLayerGetter(resnet, {"layer4": "out", "layer1": "low_level"})
        self.classifier = _VainFPlusHead(num_classes, [12, 24, 36] if output_stride == 8 else [6, 12, 18])
        if separable:
            _vainf_separable(self.classifier)

    def forward(self, images):
        logits = self.classifier(self.backbone(images))
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)


@pytest.mark.parametrize("output_stride, separable", [(16, False), (8, True)])
def test_vainf_deeplabv3plus_file_gives_vainfs_logits(output_stride, separable, tmp_path):
    torch.manual_seed(output_stride)
    reference = randomise_batchnorm(_VainFDeepLabV3Plus(output_stride, separable=separable), output_stride).eval()
    path = tmp_path / f"best_deeplabv3plus_resnet50_voc_os{output_stride}.pth"
    torch.save({"cur_itrs": 30000, "model_state": reference.state_dict(), "best_score": np.float64(0.78)}, path)
    model = atrous.from_pretrained(path)
    assert (model.spec.name, model.output_stride, model.spec.separable) == ("deeplabv3plus_vainf", output_stride,
                                                                            separable)  # fmt: skip
    images = torch.randn(1, 3, 65, 81)
    with torch.no_grad():
        expected = reference(images)
        assert _relative_difference(model(images).logits, expected) < 1e-5
        state = reference.state_dict()
        key = "classifier.project.1.running_mean"
        broken = dict(state, **{key: state[key].flip(0)})
        assert _relative_difference(atrous.from_pretrained({"model_state": broken}, output_stride=output_stride)(
            images).logits, expected) > 1e-3  # fmt: skip


# ------------------------------------------------------------------------------------------- mmsegmentation

_MMSEG_CONFIG = """norm_cfg = dict(type='SyncBN', requires_grad=True)
model = dict(
    type='EncoderDecoder',
    backbone=dict(type='ResNetV1c', depth=50, num_stages=4, out_indices=(0, 1, 2, 3), dilations=(1, 1, 2, 4),
                  strides=(1, 2, 1, 1), norm_cfg=norm_cfg, norm_eval=False, style='pytorch', contract_dilation=True),
    decode_head=dict(type='{head}', in_channels=2048, in_index=3, channels=512, dilations=(1, 12, 24, 36),
                     c1_in_channels=256, c1_channels=48, dropout_ratio=0.1, num_classes=5, align_corners=False),
    auxiliary_head=dict(type='FCNHead', in_channels=1024, in_index=2, channels=256, num_convs=1, concat_input=False,
                        dropout_ratio=0.1, num_classes=5, align_corners=False))
crop_size = (512, 512)
"""


class _ConvModule(nn.Module):
    """mmcv's ConvModule: conv (no bias before BN), bn, ReLU."""

    def __init__(self, in_ch, out_ch, kernel, dilation=1, groups=1):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, padding=(kernel // 2) * dilation, dilation=dilation, groups=groups,
                              bias=False)  # fmt: skip
        self.bn = nn.BatchNorm2d(out_ch)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class _DSConvModule(nn.Module):
    """mmcv's DepthwiseSeparableConvModule: a depthwise ConvModule then a pointwise one, each with BN and ReLU."""

    def __init__(self, in_ch, out_ch, dilation=1):
        super().__init__()
        self.depthwise_conv = _ConvModule(in_ch, in_ch, 3, dilation, groups=in_ch)
        self.pointwise_conv = _ConvModule(in_ch, out_ch, 1)

    def forward(self, x):
        return self.pointwise_conv(self.depthwise_conv(x))


class _MMSegHead(nn.Module):
    """ASPPHead (plus=False) or DepthwiseSeparableASPPHead: image_pool first, aspp_modules, 3x3 bottleneck (512);
    the V3+ one adds c1_bottleneck (48) and two separable sep_bottleneck convs; conv_seg. The widths are its configs'
    for ResNet-50/101 (in 2048, 512, low-level 256 -> 48) or ResNet-18 (512, 128, 64 -> 12)."""

    def __init__(self, classes, plus, in_ch=2048, width=512, low_in=256, low_width=48):
        super().__init__()
        self.plus = plus
        self.conv_seg = nn.Conv2d(width, classes, 1)
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), _ConvModule(in_ch, width, 1))
        atrous = [(_DSConvModule(in_ch, width, d) if plus else _ConvModule(in_ch, width, 3, d)) for d in (12, 24, 36)]
        self.aspp_modules = nn.ModuleList([_ConvModule(in_ch, width, 1), *atrous])
        self.bottleneck = _ConvModule(5 * width, width, 3)
        if plus:
            self.c1_bottleneck = _ConvModule(low_in, low_width, 1)
            self.sep_bottleneck = nn.Sequential(_DSConvModule(width + low_width, width), _DSConvModule(width, width))

    def forward(self, layer1, layer4):
        pooled = F.interpolate(self.image_pool(layer4), size=layer4.shape[-2:], mode="bilinear", align_corners=False)
        out = self.bottleneck(torch.cat([pooled] + [branch(layer4) for branch in self.aspp_modules], dim=1))
        if self.plus:
            low = self.c1_bottleneck(layer1)
            out = F.interpolate(out, size=low.shape[-2:], mode="bilinear", align_corners=False)
            out = self.sep_bottleneck(torch.cat([out, low], dim=1))
        return self.conv_seg(out)


class _MMSegDeepLab(nn.Module):
    """EncoderDecoder with ResNetV1c-50 D8 (deep stem as stem.0-7, torchvision's dilation rule = mmseg's
    contract_dilation) and the aux FCNHead; inference resizes the 1/8 (V3) or 1/4 (V3+) logits to the input."""

    def __init__(self, classes, plus, depth=50, strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4), multi_grid=None):
        super().__init__()
        resnet = _mmseg_dilated_resnet(depth, strides, dilations, multi_grid)
        self.backbone = nn.Module()
        self.backbone.stem = nn.Sequential(
            nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
        )  # fmt: skip
        for name in ("maxpool", "layer1", "layer2", "layer3", "layer4"):
            setattr(self.backbone, name, getattr(resnet, name))
        r18 = depth < 50  # its r18 configs: heads at 128 channels, a 12-channel low-level projection, aux 256 -> 64
        self.decode_head = _MMSegHead(classes, plus, 512, 128, 64, 12) if r18 else _MMSegHead(classes, plus)
        self.auxiliary_head = nn.Module()
        aux_in = 256 if r18 else 1024
        self.auxiliary_head.convs = nn.ModuleList([_ConvModule(aux_in, aux_in // 4, 3)])
        self.auxiliary_head.conv_seg = nn.Conv2d(aux_in // 4, classes, 1)

    def forward(self, images):
        b = self.backbone
        layer1 = b.layer1(b.maxpool(b.stem(images)))
        layer4 = b.layer4(b.layer3(b.layer2(layer1)))
        logits = self.decode_head(layer1, layer4)
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)


@pytest.mark.parametrize("plus", [False, True])
def test_mmseg_zoo_and_training_run_files_give_mmsegs_logits(plus, tmp_path, monkeypatch):
    torch.manual_seed(11)
    reference = randomise_batchnorm(_MMSegDeepLab(5, plus), 11).eval()
    classes = ("road", "wall", "tree", "sky", "car")
    palette = [[128, 64, 128], [102, 102, 156], [107, 142, 35], [70, 130, 180], [0, 0, 142]]
    config = _MMSEG_CONFIG.replace("{head}", "DepthwiseSeparableASPPHead" if plus else "ASPPHead")
    zoo_file = tmp_path / "deeplabv3_r50-d8_512x512_20k_voc12aug_20200617_010906-596905ef.pth"
    torch.save({"meta": {"mmseg_version": "0.5", "config": config, "CLASSES": classes, "PALETTE": palette},
                "state_dict": reference.state_dict()}, zoo_file)  # fmt: skip
    module, history_buffer = _mmengine_history_buffer()
    for name in ("mmengine", "mmengine.logging", "mmengine.logging.history_buffer"):
        monkeypatch.setitem(sys.modules, name, module)
    run_file = tmp_path / "iter_20000.pth"
    d16 = config.replace("strides=(1, 2, 1, 1)", "strides=(\n        1,\n        2,\n        2,\n        1)")  # pretty_text
    torch.save({"meta": {"cfg": d16.replace("dilations=(1, 1, 2, 4)", "dilations=(1, 1, 1, 2)"),
                         "dataset_meta": {"classes": classes}},
                "state_dict": reference.state_dict(), "message_hub": {"log_scalars": {"loss": history_buffer()}},
                "optimizer": {}, "param_schedulers": []}, run_file)  # fmt: skip
    images = torch.randn(1, 3, 65, 81)
    with torch.no_grad():
        expected = reference(images)
        model = atrous.from_pretrained(zoo_file)
        assert model.spec.name == ("deeplabv3plus_mmseg" if plus else "deeplabv3_mmseg")
        assert (model.spec.backbone, model.output_stride, model.spec.atrous_rates) == ("resnet50_v1c", 8, (12, 24, 36))
        assert model.class_names == list(classes) and model.palette[:5].tolist() == palette
        assert _relative_difference(model(images).logits, expected) < 1e-5
        # The run file's config says d16: the same weights built at output stride 16, as its config text asks.
        assert atrous.from_pretrained(run_file).output_stride == 16
        state = reference.state_dict()
        key = "backbone.stem.4.running_var"
        broken = {"state_dict": dict(state, **{key: state[key].flip(0)})}
        assert _relative_difference(atrous.from_pretrained(broken)(images).logits, expected) > 1e-3


def _mmseg_dilated_resnet(depth, strides, dilations, multi_grid=None):
    """mmsegmentation's ResLayer rules applied by hand to torchvision's ResNet: a stage of stride 1 loses its
    stride; contract_dilation gives a dilated stage's first block half the stage's dilation; multi_grid sets the last
    stage's block dilations outright; a BasicBlock dilates conv1 only, a Bottleneck its 3x3 (conv2)."""
    import torchvision

    resnet = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    for index, (layer, stride, dilation) in enumerate(zip([resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4],
                                                          strides, dilations)):  # fmt: skip
        if stride == 1:
            for conv in [m for m in layer[0].modules() if isinstance(m, nn.Conv2d)]:
                conv.stride = (1, 1)
        for number, block in enumerate(layer):
            if index == 3 and multi_grid is not None:
                block_dilation = multi_grid[number]
            else:
                block_dilation = dilation // 2 if number == 0 and dilation > 1 else dilation
            conv = block.conv1 if depth < 50 else block.conv2
            conv.dilation, conv.padding = (block_dilation,) * 2, (block_dilation,) * 2
    return resnet


@pytest.mark.parametrize(("depth", "plus", "d16_mg124"), [(18, True, False), (18, False, False), (50, False, True)])
def test_mmseg_resnet18_and_multi_grid_files_give_mmsegs_logits(depth, plus, d16_mg124, tmp_path):
    """mmseg's r18-d8 configs (BasicBlocks dilate conv1 only; heads at 128 channels) and its d16-mg124 ones (layer4
    dilations 1, 2, 4: set, not multiplied by the stage's 2)."""
    torch.manual_seed(depth)
    strides, dilations = ((1, 2, 2, 1), (1, 1, 1, 2)) if d16_mg124 else ((1, 2, 1, 1), (1, 1, 2, 4))
    reference = _MMSegDeepLab(3, plus, depth, strides, dilations, (1, 2, 4) if d16_mg124 else None)
    reference = randomise_batchnorm(reference, depth).eval()
    config = _MMSEG_CONFIG.replace("{head}", "DepthwiseSeparableASPPHead" if plus else "ASPPHead")
    config = config.replace("depth=50", f"depth={depth}")
    if d16_mg124:
        config = config.replace("dilations=(1, 1, 2, 4)", "dilations=(1, 1, 1, 2)").replace(
            "strides=(1, 2, 1, 1)", "strides=(1, 2, 2, 1), multi_grid=(1, 2, 4)")  # fmt: skip
    path = tmp_path / "iter_40000.pth"
    torch.save({"meta": {"cfg": config}, "state_dict": reference.state_dict()}, path)
    model = atrous.from_pretrained(path)
    assert (model.spec.backbone, model.output_stride) == (f"resnet{depth}_v1c", 16 if d16_mg124 else 8)
    assert model.spec.multi_grid == ((1, 2, 4) if d16_mg124 else None)
    images = torch.randn(1, 3, 65, 81)
    with torch.no_grad():
        expected = reference(images)
        assert _relative_difference(model(images).logits, expected) < 1e-5
        # The controls: the paper's multiplied multi-grid is another network, and so is a permuted BN.
        if d16_mg124:
            assert _relative_difference(atrous.from_pretrained(path, multi_grid_absolute=False)(images).logits,
                                        expected) > 1e-3  # fmt: skip
        state = reference.state_dict()
        key = "backbone.layer4.1.bn1.running_mean"
        broken = {"meta": {"cfg": config}, "state_dict": dict(state, **{key: state[key].flip(0)})}
        assert _relative_difference(atrous.from_pretrained(broken)(images).logits, expected) > 1e-3


class _KazutoDeepLabV3(nn.Sequential):
    """kazuto1011's DeepLabV3 (plus=False: ASPP stages c0-c3 + imagepool, fc1 projection, fc2 classifier, no 3x3 between)
    and DeepLabV3+ (reduce = 48-channel projection of layer2; fc2 = two 3x3 convs and the classifier; ASPP output
    first in the concat), on its Caffe ResNet-101 with multi-grid (1, 2, 4) on layer5. Returns its own resolution."""

    def __init__(self, num_classes, output_stride, plus):
        super().__init__()
        self.plus = plus
        strides, dilations = ((1, 2, 2, 1), (1, 1, 1, 2)) if output_stride == 16 else ((1, 2, 1, 1), (1, 1, 2, 4))
        stem = nn.Sequential()
        stem.add_module("conv1", _KazutoConvBnReLU(3, 64, 7, 2, 3, 1))
        stem.add_module("pool", nn.MaxPool2d(3, 2, 1, ceil_mode=True))
        self.add_module("layer1", stem)
        channels = [64, 256, 512, 1024, 2048]
        for index, blocks in enumerate((3, 4, 23, 3)):
            layer = nn.Sequential()
            grid = (1, 2, 4) if index == 3 else (1,) * blocks
            for b in range(blocks):
                in_ch = channels[index] if b == 0 else channels[index + 1]
                layer.add_module(f"block{b + 1}", _KazutoBottleneck(in_ch, channels[index + 1], strides[index] if b == 0 else 1,
                                                                    dilations[index] * grid[b], downsample=b == 0))  # fmt: skip
            self.add_module(f"layer{index + 2}", layer)
        rates = (6, 12, 18) if output_stride == 16 else (12, 24, 36)
        aspp = nn.Module()
        aspp.stages = nn.Module()
        aspp.stages.add_module("c0", _KazutoConvBnReLU(2048, 256, 1, 1, 0, 1))
        for i, rate in enumerate(rates):
            aspp.stages.add_module(f"c{i + 1}", _KazutoConvBnReLU(2048, 256, 3, 1, rate, rate))
        pool = nn.Module()
        pool.conv = _KazutoConvBnReLU(2048, 256, 1, 1, 0, 1)
        aspp.stages.add_module("imagepool", pool)
        self.aspp = aspp
        self.fc1 = _KazutoConvBnReLU(256 * (len(rates) + 2), 256, 1, 1, 0, 1)
        if plus:
            self.reduce = _KazutoConvBnReLU(256, 48, 1, 1, 0, 1)
            self.fc2 = nn.Sequential()
            self.fc2.add_module("conv1", _KazutoConvBnReLU(304, 256, 3, 1, 1, 1))
            self.fc2.add_module("conv2", _KazutoConvBnReLU(256, 256, 3, 1, 1, 1))
            self.fc2.add_module("conv3", nn.Conv2d(256, num_classes, 1))
        else:
            self.fc2 = nn.Conv2d(256, num_classes, 1)

    def forward(self, x):
        h = self.layer2(self.layer1(x))
        low = self.reduce(h) if self.plus else None
        h = self.layer5(self.layer4(self.layer3(h)))
        stages = self.aspp.stages
        pooled = stages.imagepool.conv(F.adaptive_avg_pool2d(h, 1))
        pooled = F.interpolate(pooled, size=h.shape[-2:], mode="bilinear", align_corners=False)
        h = self.fc1(torch.cat([stages.c0(h), stages.c1(h), stages.c2(h), stages.c3(h), pooled], dim=1))
        if self.plus:
            h = F.interpolate(h, size=low.shape[-2:], mode="bilinear", align_corners=False)
            return F.interpolate(self.fc2(torch.cat([h, low], dim=1)), size=x.shape[-2:], mode="bilinear",
                                 align_corners=False)  # fmt: skip
        return self.fc2(h)


@pytest.mark.parametrize("plus", [False, True])
def test_kazuto_deeplabv3_files_give_its_logits(plus, tmp_path):
    torch.manual_seed(7)
    reference = _KazutoMSC(_KazutoDeepLabV3(num_classes=4, output_stride=16, plus=plus))
    calibration = atrous.models.CAFFE_BGR(torch.randint(0, 256, (2, 3, 64, 64), generator=torch.Generator().manual_seed(3)))
    randomise_batchnorm(reference.base, 7, images=calibration).eval()
    path = tmp_path / "checkpoint_final.pth"
    torch.save(reference.state_dict(), path)
    model = atrous.from_pretrained(path)
    assert model.spec.name == ("deeplabv3plus" if plus else "deeplabv3_kazuto") and model.spec.multi_grid == (1, 2, 4)
    images = calibration[:1, :, :57, :49]
    with torch.no_grad():
        logits = reference.base(images)
        expected = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
        assert _relative_difference(model(images).logits, expected) < 1e-5
        state = reference.state_dict()
        key = "base.aspp.stages.c2.bn.running_mean"
        broken = dict(state, **{key: state[key].flip(0)})
        assert _relative_difference(atrous.from_pretrained(broken)(images).logits, expected) > 1e-3


class _VainFConvBNReLU(nn.Sequential):
    def __init__(self, inp, oup, kernel=3, stride=1, dilation=1, groups=1):
        super().__init__(nn.Conv2d(inp, oup, kernel, stride, 0, dilation=dilation, groups=groups, bias=False),
                         nn.BatchNorm2d(oup), nn.ReLU6())  # fmt: skip


class _VainFInvertedResidual(nn.Module):
    """Pads the block input by fixed_padding(3, dilation) before the expansion conv; convs themselves unpadded."""

    def __init__(self, inp, oup, stride, dilation, expand_ratio):
        super().__init__()
        hidden = inp * expand_ratio
        self.use_res_connect = stride == 1 and inp == oup
        layers = [_VainFConvBNReLU(inp, hidden, kernel=1)] if expand_ratio != 1 else []
        layers += [_VainFConvBNReLU(hidden, hidden, stride=stride, dilation=dilation, groups=hidden),
                   nn.Conv2d(hidden, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup)]  # fmt: skip
        self.conv = nn.Sequential(*layers)
        effective = 3 + 2 * (dilation - 1)
        begin = (effective - 1) // 2
        self.input_padding = (begin, effective - 1 - begin, begin, effective - 1 - begin)

    def forward(self, x):
        out = self.conv(F.pad(x, self.input_padding))
        return x + out if self.use_res_connect else out


class _VainFMobileNet(nn.Module):
    """VainF's ``deeplabv3(plus)_mobilenet``: its MobileNetV2 (stride traded for dilation past the output stride, a
    stage's first block at the previous dilation), low_level_features = features[0:4], high_level_features =
    features[4:18]; the V3 head on 320 channels or the V3+ head with 24 low-level channels."""

    def __init__(self, output_stride, plus, num_classes=21):
        super().__init__()
        features = [_VainFConvBNReLU(3, 32, stride=2)]
        current, dilation, channels = 2, 1, 32
        for t, c, n, s in [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1], [6, 160, 3, 2],
                           [6, 320, 1, 1]]:  # fmt: skip
            previous = dilation
            if current == output_stride:
                stride, dilation = 1, dilation * s
            else:
                stride, current = s, current * s
            for i in range(n):
                features.append(_VainFInvertedResidual(channels, c, stride if i == 0 else 1,
                                                       previous if i == 0 else dilation, t))  # fmt: skip
                channels = c
        self.backbone = nn.Module()
        self.backbone.low_level_features = nn.Sequential(*features[0:4])
        self.backbone.high_level_features = nn.Sequential(*features[4:])
        rates = [12, 24, 36] if output_stride == 8 else [6, 12, 18]
        self.plus = plus
        self.classifier = _VainFPlusHead(num_classes, rates, 320, 24) if plus else _VainFHead(num_classes, rates, 320)

    def forward(self, images):
        low = self.backbone.low_level_features(images)
        out = self.backbone.high_level_features(low)
        logits = self.classifier({"low_level": low, "out": out})
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)


@pytest.mark.parametrize("output_stride, plus", [(16, False), (16, True), (8, True)])
def test_vainf_mobilenet_files_give_vainfs_logits(output_stride, plus, tmp_path):
    torch.manual_seed(output_stride + plus)
    reference = randomise_batchnorm(_VainFMobileNet(output_stride, plus), output_stride).eval()
    state = vainf_mobilenet_keys(reference.state_dict())
    path = tmp_path / f"best_deeplabv3{'plus' if plus else ''}_mobilenet_voc_os{output_stride}.pth"
    torch.save({"cur_itrs": 30000, "model_state": state, "best_score": np.float64(0.71)}, path)
    model = atrous.from_pretrained(path)
    assert model.spec.backbone == "mobilenet_v2_vainf" and model.output_stride == output_stride
    images = torch.randn(1, 3, 65, 81)
    with torch.no_grad():
        expected = reference(images)
        assert _relative_difference(model(images).logits, expected) < 1e-5
        key = "backbone.high_level_features.9.conv.1.1.running_mean"
        broken = dict(state, **{key: state[key].flip(0)})
        assert _relative_difference(atrous.from_pretrained({"model_state": broken}, output_stride=output_stride)(
            images).logits, expected) > 1e-3  # fmt: skip


# ----------------------------------------------------------------------------------- jfzhang95 (ResNet-101)


class _JfASPPModule(nn.Module):
    def __init__(self, in_ch, kernel, dilation):
        super().__init__()
        self.atrous_conv = nn.Conv2d(in_ch, 256, kernel, padding=0 if kernel == 1 else dilation, dilation=dilation,
                                     bias=False)  # fmt: skip
        self.bn = nn.BatchNorm2d(256)

    def forward(self, x):
        return F.relu(self.bn(self.atrous_conv(x)))


class _JfDeepLab(nn.Module):
    """jfzhang95's DeepLab('resnet'): ResNet-101 whose dilated stages dilate every block (first included), layer4 with
    multi-grid (1, 2, 4) x the stage dilation; ASPP aspp1-4 + global_avg_pool + conv1/bn1; decoder conv1/bn1 (48) and
    last_conv; every upsampling with align_corners=True, the ASPP output first in the concat."""

    def __init__(self, output_stride, num_classes=21):
        super().__init__()
        import torchvision

        self.backbone = torchvision.models.resnet101(weights=None)
        del self.backbone.fc, self.backbone.avgpool
        stages = {16: [(self.backbone.layer4, 2, (1, 2, 4))],
                  8: [(self.backbone.layer3, 2, (1,) * 23), (self.backbone.layer4, 4, (1, 2, 4))]}[output_stride]  # fmt: skip
        for layer, dilation, grid in stages:
            layer[0].conv2.stride, layer[0].downsample[0].stride = (1, 1), (1, 1)
            for block, multiplier in zip(layer, grid):
                block.conv2.dilation = block.conv2.padding = (dilation * multiplier,) * 2
        self._add_head(output_stride, num_classes, in_channels=2048, low_channels=256)

    def _add_head(self, output_stride, num_classes, *, in_channels, low_channels):
        rates = (6, 12, 18) if output_stride == 16 else (12, 24, 36)
        self.aspp = nn.Module()
        self.aspp.aspp1 = _JfASPPModule(in_channels, 1, 1)
        for i, rate in enumerate(rates):
            setattr(self.aspp, f"aspp{i + 2}", _JfASPPModule(in_channels, 3, rate))
        self.aspp.global_avg_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_channels, 256, 1, bias=False),
                                                  nn.BatchNorm2d(256), nn.ReLU())  # fmt: skip
        self.aspp.conv1, self.aspp.bn1 = nn.Conv2d(1280, 256, 1, bias=False), nn.BatchNorm2d(256)
        self.decoder = nn.Module()
        self.decoder.conv1, self.decoder.bn1 = nn.Conv2d(low_channels, 48, 1, bias=False), nn.BatchNorm2d(48)
        self.decoder.last_conv = nn.Sequential(
            nn.Conv2d(304, 256, 3, padding=1, bias=False), nn.BatchNorm2d(256), nn.ReLU(), nn.Dropout(0.5),
            nn.Conv2d(256, 256, 3, padding=1, bias=False), nn.BatchNorm2d(256), nn.ReLU(), nn.Dropout(0.1),
            nn.Conv2d(256, num_classes, 1),
        )  # fmt: skip

    def _features(self, images):
        """(top feature, stride-4 low-level feature)."""
        b = self.backbone
        low = b.layer1(b.maxpool(b.relu(b.bn1(b.conv1(images)))))
        return b.layer4(b.layer3(b.layer2(low))), low

    def forward(self, images):
        (x, low), a, d = self._features(images), self.aspp, self.decoder
        pooled = F.interpolate(a.global_avg_pool(x), size=x.shape[-2:], mode="bilinear", align_corners=True)
        x = torch.cat([a.aspp1(x), a.aspp2(x), a.aspp3(x), a.aspp4(x), pooled], dim=1)
        x = F.relu(a.bn1(a.conv1(x)))
        low = F.relu(d.bn1(d.conv1(low)))
        x = F.interpolate(x, size=low.shape[-2:], mode="bilinear", align_corners=True)
        x = d.last_conv(torch.cat([x, low], dim=1))
        return F.interpolate(x, size=images.shape[-2:], mode="bilinear", align_corners=True)


@pytest.mark.parametrize("output_stride", [16, 8])
def test_jfzhang95_files_give_its_logits(output_stride, tmp_path):
    torch.manual_seed(output_stride)
    reference = randomise_batchnorm(_JfDeepLab(output_stride), output_stride).eval()
    path = tmp_path / "model_best.pth.tar"
    torch.save({"epoch": 50, "state_dict": reference.state_dict(), "optimizer": {}, "best_pred": np.float64(0.78)}, path)
    model = atrous.from_pretrained(path, output_stride=output_stride)
    assert (model.spec.name, model.spec.multi_grid, model.spec.align_corners) == ("deeplabv3plus", (1, 2, 4), True)
    images = torch.randn(1, 3, 65, 81)
    with torch.no_grad():
        expected = reference(images)
        assert _relative_difference(model(images).logits, expected) < 1e-5
        state = reference.state_dict()
        key = "aspp.aspp3.bn.running_var"
        broken = {"state_dict": dict(state, **{key: state[key].flip(0)})}
        assert _relative_difference(atrous.from_pretrained(broken, output_stride=output_stride)(images).logits,
                                    expected) > 1e-3  # fmt: skip


def vainf_mobilenet_keys(state: dict) -> dict:
    """VainF's keys keep the features' numbering (4-17) in high_level_features."""
    return {re.sub(r"high_level_features\.(\d+)", lambda m: f"high_level_features.{int(m[1]) + 4}", key): value
            for key, value in state.items()}  # fmt: skip


def test_msc_max_fusion_gives_kazutos_msc_logits(tmp_path):
    """kazuto1011's MSC at eval: the base's stride-8 logits at scale 1 and at 0.5 and 0.75 (inputs resized by scale
    factor, logits resized to scale 1's), max-fused, then upsampled to the image as its demo does."""
    from atrous.inference import InferenceOptions, max_fused_logits, predict

    torch.manual_seed(9)
    base = _KazutoDeepLabV2(num_classes=6)
    calibration = atrous.models.CAFFE_BGR(torch.randint(0, 256, (2, 3, 64, 64), generator=torch.Generator().manual_seed(4)))
    randomise_batchnorm(base, 9, images=calibration).eval()
    for module in base.modules():
        if isinstance(module, _KazutoASPP):
            for conv in module.children():
                nn.init.normal_(conv.bias, 0.0, 0.5)
    model = atrous.from_pretrained(_KazutoMSC(base).state_dict())
    images = calibration[:1, :, :61, :53]
    with torch.no_grad():
        logits = base(images)
        pyramid = [F.interpolate(base(F.interpolate(images, scale_factor=p, mode="bilinear", align_corners=False)),
                                 size=logits.shape[-2:], mode="bilinear", align_corners=False) for p in (0.5, 0.75)]  # fmt: skip
        fused = torch.max(torch.stack([logits, *pyramid]), dim=0)[0]
        expected = F.interpolate(fused, size=images.shape[-2:], mode="bilinear", align_corners=False)
        ours = max_fused_logits(model, images, (1.0, 0.75, 0.5))
        assert _relative_difference(ours, expected) < 1e-5
        options = InferenceOptions(scales=(1.0, 0.75, 0.5), fusion="max")
        assert torch.equal(predict(model, images, options), expected.argmax(1))
        single = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
        assert not torch.equal(ours, single)  # the other scales took part
    with pytest.raises(atrous.ConfigError, match="no flip"):
        InferenceOptions(scales=(1.0, 0.5), fusion="max", flip=True)


class _JfInvertedResidual(nn.Module):
    """jfzhang95's block: one flat Sequential (expansion conv/BN/ReLU6, depthwise conv/BN/ReLU6, projection conv/BN;
    no expansion for t=1), the input padded by fixed_padding(3, dilation) before it, depthwise unpadded."""

    def __init__(self, inp, oup, stride, dilation, t):
        super().__init__()
        hidden = inp * t
        self.use_res_connect, self.dilation = stride == 1 and inp == oup, dilation
        depthwise = [nn.Conv2d(hidden, hidden, 3, stride, 0, dilation, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
                     nn.ReLU6()]  # fmt: skip
        expand = [nn.Conv2d(inp, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()] if t != 1 else []
        self.conv = nn.Sequential(*expand, *depthwise, nn.Conv2d(hidden, oup, 1, bias=False), nn.BatchNorm2d(oup))

    def forward(self, x):
        pad = self.dilation  # (3 + 2 (d - 1) - 1) / 2 on every side
        out = self.conv(F.pad(x, (pad, pad, pad, pad)))
        return x + out if self.use_res_connect else out


class _JfMobileNetDeepLab(_JfDeepLab):
    """jfzhang95's DeepLab('mobilenet'): padded stem, its blocks, and its rule past the output stride (that stage at
    the running rate, the rate multiplied for the stages after); the same ASPP (320 in) and decoder (24 low)."""

    def __init__(self, output_stride, num_classes=21):
        nn.Module.__init__(self)
        features = [nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6())]
        current, rate, channels = 2, 1, 32
        for t, c, n, s in [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1], [6, 160, 3, 2],
                           [6, 320, 1, 1]]:  # fmt: skip
            if current == output_stride:
                stride, dilation, rate = 1, rate, rate * s
            else:
                stride, dilation, current = s, 1, current * s
            for i in range(n):
                features.append(_JfInvertedResidual(channels, c, stride if i == 0 else 1, dilation, t))
                channels = c
        self.backbone = nn.Module()
        self.backbone.features = nn.Sequential(*features)
        self.backbone.low_level_features = self.backbone.features[0:4]  # views: its state dict holds every key twice
        self.backbone.high_level_features = self.backbone.features[4:]
        self._add_head(output_stride, num_classes, in_channels=320, low_channels=24)

    def _features(self, images):
        low = self.backbone.low_level_features(images)
        return self.backbone.high_level_features(low), low


@pytest.mark.parametrize("output_stride", [16, 8])
def test_jfzhang95_mobilenet_files_give_its_logits(output_stride, tmp_path):
    torch.manual_seed(output_stride + 1)
    reference = randomise_batchnorm(_JfMobileNetDeepLab(output_stride), output_stride).eval()
    state = reference.state_dict()
    assert any(key.startswith("backbone.high_level_features.") for key in state)  # the duplicated keys, as it saves
    path = tmp_path / "checkpoint.pth.tar"
    torch.save({"epoch": 50, "state_dict": state, "optimizer": {}, "best_pred": np.float64(0.7)}, path)
    model = atrous.from_pretrained(path, output_stride=output_stride)
    assert model.spec.backbone == "mobilenet_v2_jfzhang95"
    images = torch.randn(1, 3, 65, 81)
    with torch.no_grad():
        expected = reference(images)
        assert _relative_difference(model(images).logits, expected) < 1e-5
        key = "backbone.features.12.conv.4.running_mean"
        broken = {"state_dict": {k: (v.flip(0) if k.endswith(key.split("backbone.features.")[1]) else v)
                                 for k, v in state.items()}}  # fmt: skip
        assert _relative_difference(atrous.from_pretrained(broken, output_stride=output_stride)(images).logits,
                                    expected) > 1e-3  # fmt: skip
