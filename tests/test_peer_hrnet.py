"""VainF/DeepLabV3Plus-Pytorch's DeepLabV3/V3+ on HRNetV2-W32/W48: its files, saved as its main.py saves them, give
its logits through ``from_pretrained``; HRNet's one output stride (4) is the only one accepted."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import randomise_batchnorm
from test_peer_files import _VainFPlusHead
from torch import nn
from torchvision.models import segmentation

import atrous
from atrous.errors import ConfigError
from atrous.models.backbones import build_backbone

# ----------------------------------------------------------------------------- an independent VainF reference
# Written from network/backbone/hrnetv2.py, network/utils.py (IntermediateLayerGetter, hrnet_flag=True),
# network/modeling.py (_segm_hrnet) and network/_deeplab.py at 4e1087d.


def _conv_bn(cin, cout, kernel, stride=1, relu=True):
    layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.ReLU()) if relu else nn.Sequential(*layers)


class _Basic(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False), nn.BatchNorm2d(channels)
        self.conv2, self.bn2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False), nn.BatchNorm2d(channels)

    def forward(self, x):
        return F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))) + x)


class _Bottleneck(nn.Module):
    def __init__(self, cin, downsample=None):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, 64, 1, bias=False), nn.BatchNorm2d(64)
        self.conv2, self.bn2 = nn.Conv2d(64, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64)
        self.conv3, self.bn3 = nn.Conv2d(64, 256, 1, bias=False), nn.BatchNorm2d(256)
        self.downsample = downsample

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn3(self.conv3(F.relu(self.bn2(self.conv2(out)))))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class _StageModule(nn.Module):
    """Its StageModule: 4 basic blocks per branch, then fuse_layers[i][j] from branch j to branch i: empty Sequential
    (i == j); 1x1 conv, BN, nn.Upsample(scale_factor=2**(j-i), nearest) (j > i); (i-j-1) x [3x3/2 conv, BN, ReLU] +
    3x3/2 conv, BN (j < i); summed from j = 0 up, then ReLU."""

    def __init__(self, branches, c):
        super().__init__()
        width = [c * 2**b for b in range(branches)]
        self.branches = nn.ModuleList(nn.Sequential(*[_Basic(w) for _ in range(4)]) for w in width)
        self.fuse_layers = nn.ModuleList()
        for i in range(branches):
            row = nn.ModuleList()
            for j in range(branches):
                if j == i:
                    row.append(nn.Sequential())
                elif j > i:
                    row.append(nn.Sequential(nn.Conv2d(width[j], width[i], 1, bias=False), nn.BatchNorm2d(width[i]),
                                             nn.Upsample(scale_factor=2.0 ** (j - i), mode="nearest")))  # fmt: skip
                else:
                    steps = [_conv_bn(width[j], width[j], 3, 2) for _ in range(i - j - 1)]
                    row.append(nn.Sequential(*steps, _conv_bn(width[j], width[i], 3, 2, relu=False)))
            self.fuse_layers.append(row)

    def forward(self, xs):
        xs = [branch(x) for branch, x in zip(self.branches, xs)]
        return [F.relu(sum(fuse(x) for fuse, x in zip(row, xs))) for row in self.fuse_layers]


class _VainFHRNet(nn.Module):
    """Its HRNet's children, registered in its order (the classifier left out, as its IntermediateLayerGetter stops at
    stage4), and run as that getter runs them: each child once, in registration order."""

    def __init__(self, c):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 64, 3, 2, 1, bias=False), nn.BatchNorm2d(64)
        self.conv2, self.bn2 = nn.Conv2d(64, 64, 3, 2, 1, bias=False), nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        shortcut = nn.Sequential(nn.Conv2d(64, 256, 1, bias=False), nn.BatchNorm2d(256))
        self.layer1 = nn.Sequential(_Bottleneck(64, shortcut), *[_Bottleneck(256) for _ in range(3)])
        self.transition1 = nn.ModuleList([_conv_bn(256, c, 3), nn.Sequential(_conv_bn(256, 2 * c, 3, 2))])
        self.stage2 = nn.Sequential(_StageModule(2, c))
        self.transition2 = _conv_bn(2 * c, 4 * c, 3, 2)
        self.stage3 = nn.Sequential(*[_StageModule(3, c) for _ in range(4)])
        self.transition3 = _conv_bn(4 * c, 8 * c, 3, 2)
        self.stage4 = nn.Sequential(*[_StageModule(4, c) for _ in range(3)])

    def forward(self, x):
        features = {}
        for name, child in self.named_children():
            if name == "transition1":
                x = [transition(x) for transition in child]
            elif name.startswith("transition"):
                x = [*x, child(x[-1])]
            else:
                x = child(x)
            if name == "layer1":
                features["low_level"] = x
        size = x[0].shape[-2:]
        upsampled = [F.interpolate(branch, size=size, mode="bilinear", align_corners=False) for branch in x[1:]]
        features["out"] = torch.cat([x[0], *upsampled], dim=1)
        return features


class _V3Head(nn.Module):
    """Its DeepLabHead: classifier = [ASPP, 3x3 conv, BN, ReLU, 1x1 conv] (torchvision's layout)."""

    def __init__(self, cin, classes):
        super().__init__()
        self.classifier = segmentation.deeplabv3.DeepLabHead(cin, classes, [12, 24, 36])

    def forward(self, features):
        return self.classifier(features["out"])


class _VainFModel(nn.Module):
    def __init__(self, width, plus, classes):
        super().__init__()
        self.backbone = _VainFHRNet(width)
        self.classifier = (_VainFPlusHead(classes, [12, 24, 36], in_channels=15 * width) if plus
                           else _V3Head(15 * width, classes))  # fmt: skip

    def forward(self, images):
        logits = self.classifier(self.backbone(images))
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)


def _vainf_model(name, *, num_classes, output_stride):
    """``network.modeling.<name>(num_classes=..., output_stride=...)`` as its main.py calls it. Its
    deeplabv3_hrnetv2_* pass output_stride where _load_model takes num_classes (and _segm_hrnet ignores the stride):
    their classifier has ``output_stride`` outputs."""
    width, plus = int(name[-2:]), name.startswith("deeplabv3plus")
    return _VainFModel(width, plus, num_classes if plus else output_stride)


def _relative_difference(ours, reference):
    return ((ours - reference).abs().max() / reference.abs().max()).item()


# ------------------------------------------------------------------------------------------------------ tests


@pytest.mark.parametrize(
    "name, dataset, classes, bn_key",
    [
        ("deeplabv3plus_hrnetv2_32", "voc", 21, "backbone.stage4.2.fuse_layers.0.3.1.running_mean"),
        ("deeplabv3_hrnetv2_48", "cityscapes", 16, "backbone.stage3.3.fuse_layers.2.0.0.1.running_mean"),
    ],
)
def test_vainf_hrnet_files_give_vainfs_logits(name, dataset, classes, bn_key, tmp_path, caplog):
    torch.manual_seed(0)
    reference = _vainf_model(name, num_classes=21 if dataset == "voc" else 19, output_stride=16)
    randomise_batchnorm(reference, 1).eval()
    # main.py's save_ckpt; it names the file with --output_stride (default 16) although HRNet ignores it.
    path = tmp_path / f"best_{name}_{dataset}_os16.pth"
    torch.save({"cur_itrs": 30000, "model_state": reference.state_dict(), "optimizer_state": {},
                "scheduler_state": {}, "best_score": np.float64(0.7)}, path)  # fmt: skip
    with caplog.at_level("INFO", logger="atrous"):
        model = atrous.from_pretrained(path)
    width = name[-2:]
    spec = model.spec
    assert (spec.name, spec.backbone) == ("deeplabv3plus_vainf" if "plus" in name else "deeplabv3", f"hrnetv2_w{width}")
    assert (spec.output_stride, model.output_stride, spec.atrous_rates) == (4, 4, (12, 24, 36))
    assert model.num_classes == classes
    assert "assumed" not in caplog.text  # nothing was: the stride is HRNet's, the _os16 in the name is not its
    images = torch.randn(1, 3, 64, 96)  # VainF's nearest upsampling by scale factor needs sides divisible by 32
    with torch.no_grad():
        expected = reference(images)
        assert _relative_difference(model(images).logits, expected) < 1e-5
        # Negative control: one BatchNorm's statistics permuted in the file, and the comparison fails.
        state = reference.state_dict()
        broken = {"model_state": dict(state, **{bn_key: state[bn_key].flip(0)})}
        assert _relative_difference(atrous.from_pretrained(broken)(images).logits, expected) > 1e-3


def test_vainf_hrnet_stem_has_one_relu():
    """VainF's getter calls ``relu`` once, after bn2: with a ReLU after bn1 too (HRNet's own forward) the logits of
    the same weights are not VainF's, so the test above tells the two apart."""
    torch.manual_seed(1)
    reference = randomise_batchnorm(_vainf_model("deeplabv3plus_hrnetv2_32", num_classes=5, output_stride=16), 2)
    model = atrous.from_pretrained({"model_state": reference.state_dict()})
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = reference(images)
        assert _relative_difference(model(images).logits, expected) < 1e-5
        reference.backbone.bn1.register_forward_hook(lambda module, inputs, output: F.relu(output))
        assert _relative_difference(model(images).logits, reference(images)) > 1e-3


def test_hrnet_backbone_reports_its_strides_and_channels():
    body = build_backbone("hrnetv2_w32", output_stride=4).eval()
    assert body.channels == {"low": 256, "aux": 480, "out": 480} and body.strides == {"low": 4, "aux": 4, "out": 4}
    with torch.no_grad():
        # Any size runs (VainF's scale-factor upsampling needs sides divisible by 32; upsampling to size does not).
        small, large = body(torch.randn(1, 3, 65, 81)), body(torch.randn(1, 3, 129, 209))
    for name in ("low", "aux", "out"):
        assert small[name].shape[1] == body.channels[name]
        assert (large[name].shape[2] - small[name].shape[2], large[name].shape[3] - small[name].shape[3]) == (16, 32)


def test_hrnet_has_one_output_stride():
    assert atrous.build_model("deeplabv3plus_vainf", backbone="hrnetv2_w32", num_classes=2).output_stride == 4
    with pytest.raises(ConfigError, match=r"unsupported output_stride 16; choose from \[4\] on hrnetv2_w32"):
        atrous.build_model("deeplabv3", backbone="hrnetv2_w32", output_stride=16)
    with pytest.raises(ConfigError, match=r"unsupported output_stride 8; choose from \[4\] on hrnetv2_w48"):
        build_backbone("hrnetv2_w48", output_stride=8)
    with pytest.raises(ConfigError, match=r"hrnetv2_w32 has no dilated stage: multi_grid"):
        atrous.build_model("deeplabv3", backbone="hrnetv2_w32", multi_grid=(1, 2, 4))
    # 4 is HRNet's, not a choice of the dilating backbones.
    with pytest.raises(ConfigError, match=r"unsupported output_stride 4; choose from \[8, 16, 32\] on resnet18"):
        atrous.build_model("deeplabv3", backbone="resnet18", output_stride=4)
    with pytest.raises(ConfigError, match=r"unsupported output_stride 4; choose from \[8, 16, 32\] on resnet18"):
        build_backbone("resnet18", output_stride=4)
    # A VainF HRNet file asked for another stride says which one it has.
    reference = _vainf_model("deeplabv3plus_hrnetv2_32", num_classes=3, output_stride=16)
    with pytest.raises(ConfigError, match=r"unsupported output_stride 8; choose from \[4\] on hrnetv2_w32"):
        atrous.from_pretrained({"model_state": reference.state_dict()}, output_stride=8)
