"""jfzhang95/pytorch-deeplab-xception's DeepLabV3+ on its DRN backbone (``DeepLab(backbone='drn')``: fyu/drn's DRN-D-54
at a fixed output stride of 8), and fyu/drn's ImageNet file of that backbone: the files as they are written, read by
``from_pretrained`` / ``pretrained_backbone`` and compared with an independent reference of the network."""

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import randomise_batchnorm
from test_peer_files import _JfDeepLab
from torch import nn

import atrous
from atrous.errors import ConfigError, WeightsError
from atrous.models.backbones import build_backbone


def _relative_difference(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return ((ours - reference).abs().max() / reference.abs().max()).item()


class _Bottleneck(nn.Module):
    """DRN's bottleneck: 1x1, 3x3 (stride and dilation, padding = dilation), 1x1 (x4), each with BN; the shortcut a
    1x1 conv + BN when given; ReLU after the sum."""

    def __init__(self, inplanes, planes, stride, dilation, downsample=None):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(inplanes, planes, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3, self.bn3 = nn.Conv2d(planes, planes * 4, 1, bias=False), nn.BatchNorm2d(planes * 4)
        self.downsample = downsample

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class _DRND54(nn.Module):
    """drn_d_54 as jfzhang95's drn.py builds it: DRN(Bottleneck, [1, 1, 3, 4, 6, 3, 1, 1], arch='D'), channels
    (16, 32, 64, 128, 256, 512, 512, 512). layer0/1/2/7/8 are Sequentials (conv, BN, ReLU); layer3-6 bottleneck stages
    (layer5 dilation 2, layer6 dilation 4, first blocks included: new_level=False); returns (layer8, layer3)."""

    def __init__(self):
        super().__init__()
        self.inplanes = 32

        def conv_layer(inp, out, kernel, stride=1, dilation=1):
            padding = 3 if kernel == 7 else dilation
            conv = nn.Conv2d(inp, out, kernel, stride, padding=padding, dilation=dilation, bias=False)
            return nn.Sequential(conv, nn.BatchNorm2d(out), nn.ReLU(inplace=True))

        self.layer0 = conv_layer(3, 16, 7)
        self.layer1 = conv_layer(16, 16, 3)
        self.layer2 = conv_layer(16, 32, 3, stride=2)
        self.layer3 = self._stage(64, 3, stride=2)
        self.layer4 = self._stage(128, 4, stride=2)
        self.layer5 = self._stage(256, 6, dilation=2)
        self.layer6 = self._stage(512, 3, dilation=4)
        self.layer7 = conv_layer(2048, 512, 3, dilation=2)
        self.layer8 = conv_layer(512, 512, 3, dilation=1)
        del self.inplanes

    def _stage(self, planes, blocks, stride=1, dilation=1):
        downsample = nn.Sequential(
            nn.Conv2d(self.inplanes, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4)
        )
        layers = [_Bottleneck(self.inplanes, planes, stride, dilation, downsample)]
        self.inplanes = planes * 4
        layers += [_Bottleneck(self.inplanes, planes, 1, dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        low = self.layer3(self.layer2(self.layer1(self.layer0(x))))
        x = self.layer6(self.layer5(self.layer4(low)))
        return self.layer8(self.layer7(x)), low


class _JfDRNDeepLab(_JfDeepLab):
    """jfzhang95's DeepLab(backbone='drn'): its __init__ sets output_stride = 8 for 'drn' before building the ASPP, so
    the ASPP (inplanes 512) has dilations (1, 12, 24, 36) whatever --out-stride says; the decoder takes layer3 as the
    low-level feature (low_level_inplanes 256); the head and its upsampling are its ResNet model's."""

    def __init__(self, num_classes=21):
        nn.Module.__init__(self)
        self.backbone = _DRND54()
        self._add_head(8, num_classes, in_channels=512, low_channels=256)

    def _features(self, images):
        return self.backbone(images)


@pytest.fixture(scope="module")
def jfzhang95_drn_run(tmp_path_factory):
    """(reference, its file as jfzhang95's train.py / Saver writes it: model_best.pth.tar)."""
    torch.manual_seed(54)
    reference = randomise_batchnorm(_JfDRNDeepLab(), 54).eval()
    # train.py's optimizer: SGD over get_1x_lr_params (backbone) and get_10x_lr_params (aspp, decoder).
    head = [p for name, p in reference.named_parameters() if not name.startswith("backbone.")]
    optimizer = torch.optim.SGD([{"params": list(reference.backbone.parameters()), "lr": 0.007},
                                 {"params": head, "lr": 0.07}], momentum=0.9, weight_decay=5e-4)  # fmt: skip
    path = tmp_path_factory.mktemp("run") / "model_best.pth.tar"
    torch.save({"epoch": 50, "state_dict": reference.state_dict(), "optimizer": optimizer.state_dict(),
                "best_pred": np.float64(0.7887)}, path)  # fmt: skip
    return reference, path


def test_jfzhang95_drn_file_gives_its_logits(jfzhang95_drn_run, caplog):
    reference, path = jfzhang95_drn_run
    images = torch.randn(1, 3, 65, 81)
    with caplog.at_level(logging.INFO, logger="atrous"):
        model = atrous.from_pretrained(path)
    spec = model.spec
    assert (spec.name, spec.backbone, spec.output_stride, spec.align_corners) == ("deeplabv3plus", "drn_d_54", 8, True)
    assert [branch.conv.dilation[0] for branch in model.head.aspp.atrous_branches] == [12, 24, 36]
    assert "drn_d_54" in caplog.text and "assumed" not in caplog.text  # its code fixes the stride: nothing assumed
    with torch.no_grad():
        expected = reference(images)
        assert _relative_difference(model(images).logits, expected) < 1e-5
        # Negative control: one BN of a renamed DRN layer (layer7, positional in the file) with its statistics flipped.
        state = reference.state_dict()
        key = "backbone.layer7.1.running_var"
        broken = atrous.from_pretrained({"state_dict": dict(state, **{key: state[key].flip(0)})})
        assert _relative_difference(broken(images).logits, expected) > 1e-3
        # The comparison sees the dilations at this size: the reference with layer6 at dilation 2 is another network.
        for block in reference.backbone.layer6:
            block.conv2.dilation = block.conv2.padding = (2, 2)
        try:
            assert _relative_difference(model(images).logits, reference(images)) > 1e-3
        finally:
            for block in reference.backbone.layer6:
                block.conv2.dilation = block.conv2.padding = (4, 4)


def test_drn_output_stride_is_fixed_at_8(jfzhang95_drn_run):
    _, path = jfzhang95_drn_run
    with pytest.raises(ConfigError, match=r"unsupported output_stride 16; choose from \[8\] on drn_d_54"):
        atrous.from_pretrained(path, output_stride=16)
    with pytest.raises(ConfigError, match=r"unsupported output_stride 32; choose from \[8\] on drn_d_54"):
        atrous.build_model("deeplabv3plus", backbone="drn_d_54", output_stride=32)
    with pytest.raises(ConfigError, match="drn_d_54 has its own fixed dilations"):
        atrous.build_model("deeplabv3plus", backbone="drn_d_54", output_stride=8, multi_grid=(1, 2, 4))


def test_drn_backbone_reports_its_strides_and_channels():
    body = build_backbone("drn_d_54", output_stride=8).eval()
    assert body.output_stride == 8
    with torch.no_grad():
        small, large = body(torch.randn(1, 3, 64, 96)), body(torch.randn(1, 3, 128, 224))
    for name in ("low", "aux", "out"):
        grown = (large[name].shape[2] - small[name].shape[2], large[name].shape[3] - small[name].shape[3])
        assert (64 // grown[0], 128 // grown[1]) == (body.strides[name],) * 2, name
        assert small[name].shape[1] == body.channels[name], name
    assert body.channels == {"low": 256, "aux": 1024, "out": 512}
    assert body.strides == {"low": 4, "aux": 8, "out": 8}


def test_fyu_drn_imagenet_file_fills_the_backbone(tmp_path):
    """fyu/drn's drn_d_54-0e0534ff.pth: a plain state dict of its DRN (2017: BN without num_batches_tracked) with the
    1x1-conv classifier "fc" that jfzhang95 deletes before loading it."""
    torch.manual_seed(1)
    drn = randomise_batchnorm(_DRND54(), 1)
    state = {key: value for key, value in drn.state_dict().items() if not key.endswith("num_batches_tracked")}
    state |= {"fc.weight": torch.randn(1000, 512, 1, 1), "fc.bias": torch.randn(1000)}
    path = tmp_path / "drn_d_54-0e0534ff.pth"
    torch.save(state, path)
    model = atrous.build_model("deeplabv3plus", backbone="drn_d_54", output_stride=8, pretrained_backbone=str(path))
    images = torch.randn(1, 3, 33, 41)
    with torch.no_grad():
        out, low = drn(images)
        features = model.eval().backbone(images)
        assert _relative_difference(features["out"], out) < 1e-5 and _relative_difference(features["low"], low) < 1e-5
    with pytest.raises(WeightsError, match=r"http://dl\.yf\.io/drn/drn_d_54-0e0534ff\.pth: pass that file's path"):
        atrous.build_model("deeplabv3plus", backbone="drn_d_54", output_stride=8, pretrained_backbone="imagenet")
