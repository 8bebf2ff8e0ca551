"""jfzhang95/pytorch-deeplab-xception's DeepLabV3+ on its Aligned Xception (``DeepLab(backbone='xception')``):
``from_pretrained`` reads its training file and gives the logits of an independent reference of its network."""

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

# output stride -> (block3's stride, middle flow's dilation, exit flow's dilations: block20's, conv3-5's)
_JF_STRIDES = {16: (2, 1, (1, 2)), 8: (1, 2, (2, 4))}


class _JfSeparableConv2d(nn.Module):
    """Depthwise ``conv1`` (unpadded: the input is padded by fixed_padding, d on each side for a 3x3 kernel) -> ``bn``
    -> ``pointwise``; nothing after (the block's own BN follows)."""

    def __init__(self, inp, out, stride=1, dilation=1):
        super().__init__()
        self.conv1 = nn.Conv2d(inp, inp, 3, stride, 0, dilation, groups=inp, bias=False)
        self.bn = nn.BatchNorm2d(inp)
        self.pointwise = nn.Conv2d(inp, out, 1, bias=False)

    def forward(self, x):
        d = self.conv1.dilation[0]
        return self.pointwise(self.bn(self.conv1(F.pad(x, (d, d, d, d)))))


class _JfBlock(nn.Module):
    """``rep``: (ReLU, separable conv, BN) per unit. The units: grow_first: in->out then out->out (reps - 1), else
    in->in (reps - 1) then in->out; then a stride-2 unit (stride 2), or an undilated one (is_last). The first ReLU is
    dropped without start_with_relu. One shared in-place ReLU module: on the block's input it rectifies what the
    skip (``skip`` 1x1 + ``skipbn`` where the shape changes, else the input) reads."""

    def __init__(self, inp, out, reps, stride=1, dilation=1, start_with_relu=True, grow_first=True, is_last=False):
        super().__init__()
        self.relu = nn.ReLU(inplace=True)
        if grow_first:
            units = [(inp, out, 1, dilation)] + [(out, out, 1, dilation)] * (reps - 1)
        else:
            units = [(inp, inp, 1, dilation)] * (reps - 1) + [(inp, out, 1, dilation)]
        if stride != 1:
            units.append((out, out, 2, 1))
        elif is_last:
            units.append((out, out, 1, 1))
        rep = [m for i, o, s, d in units for m in (self.relu, _JfSeparableConv2d(i, o, s, d), nn.BatchNorm2d(o))]
        self.rep = nn.Sequential(*(rep if start_with_relu else rep[1:]))
        self.skip = nn.Conv2d(inp, out, 1, stride=stride, bias=False) if out != inp or stride != 1 else None
        if self.skip is not None:
            self.skipbn = nn.BatchNorm2d(out)

    def forward(self, inp):
        x = self.rep(inp)
        return x + (inp if self.skip is None else self.skipbn(self.skip(inp)))


class _JfAlignedXception(nn.Module):
    """Stem conv1/bn1 (3->32, stride 2), conv2/bn2 (->64); entry blocks 1-3 (1 and 2 without the leading ReLU, a ReLU
    after block 1 giving the low-level feature, 3 is_last); middle blocks 4-19; exit block 20 (728->1024, not
    grow_first, is_last), ReLU, then separable conv3-5 (1536, 1536, 2048) each with BN and ReLU."""

    def __init__(self, output_stride):
        super().__init__()
        block3_stride, middle, (exit1, exit2) = _JF_STRIDES[output_stride]
        self.relu = nn.ReLU(inplace=True)
        self.conv1, self.bn1 = nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32)
        self.conv2, self.bn2 = nn.Conv2d(32, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64)
        self.block1 = _JfBlock(64, 128, 2, stride=2, start_with_relu=False)
        self.block2 = _JfBlock(128, 256, 2, stride=2, start_with_relu=False)
        self.block3 = _JfBlock(256, 728, 2, stride=block3_stride, is_last=True)
        for i in range(4, 20):
            setattr(self, f"block{i}", _JfBlock(728, 728, 3, dilation=middle))
        self.block20 = _JfBlock(728, 1024, 2, dilation=exit1, grow_first=False, is_last=True)
        for i, (inp, out) in zip((3, 4, 5), ((1024, 1536), (1536, 1536), (1536, 2048))):
            setattr(self, f"conv{i}", _JfSeparableConv2d(inp, out, dilation=exit2))
            setattr(self, f"bn{i}", nn.BatchNorm2d(out))

    def forward(self, x):
        x = self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))))
        low = self.relu(self.block1(x))
        for i in range(2, 21):
            x = getattr(self, f"block{i}")(low if i == 2 else x)
        x = self.relu(x)
        for i in (3, 4, 5):
            x = self.relu(getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(x)))
        return x, low


class _JfDeepLabXception(_JfDeepLab):
    """DeepLab(backbone='xception'): its ResNet model's ASPP and decoder on 2048 / 128 (low_level_inplanes) channels."""

    def __init__(self, output_stride, num_classes):
        nn.Module.__init__(self)
        self.backbone = _JfAlignedXception(output_stride)
        self._add_head(output_stride, num_classes, in_channels=2048, low_channels=128)

    def _features(self, images):
        return self.backbone(images)


def _relative_difference(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return ((ours - reference).abs().max() / reference.abs().max()).item()


def test_jfzhang95_xception_file_gives_its_logits_at_output_stride_16_and_8(tmp_path):
    torch.manual_seed(65)
    reference = randomise_batchnorm(_JfDeepLabXception(16, num_classes=3), 65).eval()
    state = reference.state_dict()
    assert "backbone.block2.rep.0.conv1.weight" in state and "backbone.block3.rep.1.conv1.weight" in state
    optimizer = torch.optim.SGD([{"params": reference.backbone.parameters()},
                                 {"params": [*reference.aspp.parameters(), *reference.decoder.parameters()]}], lr=0.007)  # fmt: skip
    path = tmp_path / "model_best.pth.tar"
    torch.save({"epoch": 50, "state_dict": state, "optimizer": optimizer.state_dict(), "best_pred": np.float64(0.79)},
               path)  # fmt: skip
    images = torch.randn(1, 3, 65, 81)
    for output_stride in (16, 8):
        if output_stride != 16:  # the same weights in jfzhang95's network built at this stride
            reference = _JfDeepLabXception(output_stride, num_classes=3).eval()
            reference.load_state_dict(state)
        model = atrous.from_pretrained(path, output_stride=output_stride)
        assert (model.spec.name, model.spec.backbone, model.spec.align_corners) == (
            "deeplabv3plus", "xception65_jfzhang95", True)  # fmt: skip
        assert model.backbone.channels == {"low": 128, "aux": 728, "out": 2048}
        with torch.no_grad():
            expected = reference(images)
            assert _relative_difference(model(images).logits, expected) < 1e-5, output_stride
    # Negative control: one BN inside a middle block's separable conv with its statistics permuted.
    key = "backbone.block12.rep.4.bn.running_var"
    broken = {"state_dict": dict(state, **{key: state[key].flip(0)})}
    with torch.no_grad():
        assert _relative_difference(atrous.from_pretrained(broken, output_stride=8)(images).logits, expected) > 1e-3


def test_xception65_jfzhang95_refuses_other_dilation_rules_and_older_layouts():
    with pytest.raises(ConfigError, match="xception65_jfzhang95 has jfzhang95's own dilation rule"):
        build_backbone("xception65_jfzhang95", output_stride=16, multi_grid=(1, 2, 4))
    with pytest.raises(ConfigError, match="xception65_jfzhang95 has jfzhang95's own dilation rule"):
        build_backbone("xception65_jfzhang95", output_stride=16, first_block_dilation="stage")
    # Before its commit b7cbf5a (2018-12-01) block2 began with a ReLU and the network computed differently.
    older = {"aspp.aspp1.atrous_conv.weight": torch.zeros(256, 2048, 1, 1),
             "decoder.last_conv.8.weight": torch.zeros(21, 256, 1, 1),
             "backbone.block2.rep.1.conv1.weight": torch.zeros(128, 1, 3, 3)}  # fmt: skip
    with pytest.raises(WeightsError, match="does not read yet"):
        atrous.from_pretrained(older)
