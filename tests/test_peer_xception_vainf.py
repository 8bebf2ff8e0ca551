"""VainF/DeepLabV3Plus-Pytorch's DeepLabV3 / V3+ files on its Xception backbone (``network/backbone/xception.py``,
``network/modeling.py`` ``_segm_xception``): ``from_pretrained`` builds ``xception_vainf`` and gives the logits of an
independent reference written here from VainF's code."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import randomise_batchnorm
from test_peer_files import _VainFPlusHead
from torch import nn
from torchvision.models import segmentation
from torchvision.models._utils import IntermediateLayerGetter

import atrous
from atrous.errors import ConfigError, DataError
from atrous.models import IMAGENET_RGB
from atrous.models.backbones import build_backbone

# Odd, unequal sides; large enough for VainF's OS8 Xception, whose exit flow shrinks the map by 12 pixels (to 2x4).
IMAGE_SIZE = (113, 129)


def _relative_difference(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return ((ours - reference).abs().max() / reference.abs().max()).item()


# ------------------------------------------------------------------------------- the reference, VainF's layout


class _SeparableConv2d(nn.Module):
    """pretrainedmodels' SeparableConv2d: ``conv1`` depthwise (given padding and dilation), ``pointwise`` 1x1."""

    def __init__(self, cin, cout, padding, dilation):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cin, 3, 1, padding, dilation, groups=cin, bias=False)
        self.pointwise = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x):
        return self.pointwise(self.conv1(x))


class _Block(nn.Module):
    """Its ``Block``: ``rep`` = [ReLU, SeparableConv2d(padding=dilation), BN] x reps (the first ReLU dropped when not
    start_with_relu), a MaxPool2d(3, stride, 1) appended when strided; ``skip``/``skipbn`` when the shape changes."""

    def __init__(self, cin, cout, reps, stride, dilation, start_with_relu, grow_first):
        super().__init__()
        rep = []
        for index in range(reps):
            if grow_first:
                a, b = (cin, cout) if index == 0 else (cout, cout)
            else:
                a, b = (cin, cin) if index < reps - 1 else (cin, cout)
            rep += [nn.ReLU(), _SeparableConv2d(a, b, dilation, dilation), nn.BatchNorm2d(b)]
        if not start_with_relu:
            rep = rep[1:]
        if stride != 1:
            rep.append(nn.MaxPool2d(3, stride, 1))
        self.rep = nn.Sequential(*rep)
        self.skip = nn.Conv2d(cin, cout, 1, stride=stride, bias=False) if cout != cin or stride != 1 else None
        if self.skip is not None:
            self.skipbn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return self.rep(x) + (x if self.skip is None else self.skipbn(self.skip(x)))


class _Xception(nn.Module):
    """VainF's ``Xception(replace_stride_with_dilation=...)``: children in forward order, ``bn4`` and the classifier
    after ``conv4`` (its IntermediateLayerGetter stops at conv4, so they drop out). A replaced stride multiplies the
    running dilation, which that block and all after take; conv3/conv4 get padding 1 and the final dilation."""

    def __init__(self, replace_stride_with_dilation):
        super().__init__()
        self.dilation = 1
        self.conv1, self.bn1, self.relu1 = nn.Conv2d(3, 32, 3, 2, 0, bias=False), nn.BatchNorm2d(32), nn.ReLU()
        self.conv2, self.bn2, self.relu2 = nn.Conv2d(32, 64, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU()
        flags = replace_stride_with_dilation
        plan = [(64, 128, 2, 2, False, True, flags[0]), (128, 256, 2, 2, True, True, flags[1]),
                (256, 728, 2, 2, True, True, flags[2])] + [(728, 728, 3, 1, True, True, flags[2])] * 8 + [
                (728, 1024, 2, 2, True, False, flags[3])]  # fmt: skip
        for index, (cin, cout, reps, stride, start_with_relu, grow_first, dilate) in enumerate(plan, start=1):
            if dilate:
                self.dilation, stride = self.dilation * stride, 1
            setattr(self, f"block{index}", _Block(cin, cout, reps, stride, self.dilation, start_with_relu, grow_first))
        self.conv3 = _SeparableConv2d(1024, 1536, 1, self.dilation)
        self.bn3, self.relu3 = nn.BatchNorm2d(1536), nn.ReLU()
        self.conv4, self.bn4 = _SeparableConv2d(1536, 2048, 1, self.dilation), nn.BatchNorm2d(2048)
        self.last_linear = nn.Linear(2048, 1000)


class _Head(nn.Module):
    """``DeepLabHead(2048, ...)``: torchvision's head one level deeper (``classifier.classifier.N``)."""

    def __init__(self, num_classes, rates):
        super().__init__()
        self.classifier = segmentation.deeplabv3.DeepLabHead(2048, num_classes, rates)

    def forward(self, features):
        return self.classifier(features["out"])


class _Separable(nn.Module):
    """``AtrousSeparableConvolution``: body.0 depthwise, body.1 pointwise (``--separable_conv``, head only)."""

    def __init__(self, conv):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(conv.in_channels, conv.in_channels, 3, padding=conv.padding, dilation=conv.dilation,
                      groups=conv.in_channels, bias=False),
            nn.Conv2d(conv.in_channels, conv.out_channels, 1, bias=False),
        )  # fmt: skip

    def forward(self, x):
        return self.body(x)


def _separable(module):
    for name, child in module.named_children():
        if isinstance(child, nn.Conv2d) and child.kernel_size[0] > 1:
            setattr(module, name, _Separable(child))
        else:
            _separable(child)


class _VainFXceptionDeepLab(nn.Module):
    """``deeplabv3plus_xception`` / ``deeplabv3_xception`` (``_segm_xception``): [F, F, T, T] and rates (12, 24, 36) at
    OS8, [F, F, F, T] and (6, 12, 18) at OS16; out = conv4, low_level = block1 (128 ch); logits resized to the input
    (``align_corners=False``)."""

    def __init__(self, plus, output_stride, num_classes=21, separable=False):
        super().__init__()
        flags, rates = ([False, False, True, True], [12, 24, 36]) if output_stride == 8 else \
            ([False, False, False, True], [6, 12, 18])  # fmt: skip
        layers = {"conv4": "out", "block1": "low_level"} if plus else {"conv4": "out"}
        self.backbone = IntermediateLayerGetter(_Xception(flags), return_layers=layers)
        self.classifier = (_VainFPlusHead(num_classes, rates, low_channels=128) if plus
                           else _Head(num_classes, rates))  # fmt: skip
        if separable:
            _separable(self.classifier)

    def forward(self, images):
        logits = self.classifier(self.backbone(images))
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)


def _save_as_main_py(model, path):
    """VainF's ``save_ckpt``: model_state, SGD (backbone 0.1x lr) and PolyLR-like scheduler states, numpy best_score."""
    optimizer = torch.optim.SGD([{"params": model.backbone.parameters(), "lr": 0.001},
                                 {"params": model.classifier.parameters(), "lr": 0.01}], lr=0.01, momentum=0.9)  # fmt: skip
    scheduler = torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=30000, power=0.9)
    torch.save({"cur_itrs": 30000, "model_state": model.state_dict(), "optimizer_state": optimizer.state_dict(),
                "scheduler_state": scheduler.state_dict(), "best_score": np.float64(0.78)}, path)  # fmt: skip


# ---------------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize(
    "plus, output_stride, separable", [(True, 16, False), (True, 8, True), (False, 16, False), (False, 8, False)]
)
def test_vainf_xception_files_give_vainfs_logits(plus, output_stride, separable, tmp_path):
    torch.manual_seed(output_stride + plus)
    calibration = torch.randn(2, 3, *IMAGE_SIZE)
    reference = _VainFXceptionDeepLab(plus, output_stride, separable=separable)
    reference = randomise_batchnorm(reference, output_stride, images=calibration).eval()
    assert not any(key.startswith("backbone.bn4.") for key in reference.state_dict())  # VainF's cut, as its files
    name = "deeplabv3plus" if plus else "deeplabv3"
    path = tmp_path / f"best_{name}_xception_voc_os{output_stride}.pth"
    _save_as_main_py(reference, path)

    model = atrous.from_pretrained(path)
    spec = model.spec
    expected_name = "deeplabv3plus_vainf" if plus else "deeplabv3"
    assert (spec.name, spec.backbone, spec.output_stride, spec.separable) == (expected_name, "xception_vainf",
                                                                             output_stride, separable)  # fmt: skip
    assert model.backbone.channels == {"low": 128, "aux": 728, "out": 2048}
    assert model.normalization == IMAGENET_RGB  # VainF's main.py normalises with ImageNet mean/std
    images = torch.randn(1, 3, *IMAGE_SIZE)
    with torch.no_grad():
        expected = reference(images)
        assert _relative_difference(model(images).logits, expected) < 1e-5
        # The negative control: one middle-flow BN's statistics permuted in the file, and the comparison fails.
        state = reference.state_dict()
        key = "backbone.block7.rep.5.running_mean"
        permuted = state[key][torch.randperm(state[key].numel(), generator=torch.Generator().manual_seed(0))]
        broken = atrous.from_pretrained({"model_state": dict(state, **{key: permuted})}, output_stride=output_stride)
        assert _relative_difference(broken(images).logits, expected) > 1e-3


def test_its_exit_flow_keeps_padding_one_when_dilated_so_the_map_shrinks():
    # The fact the reference above encodes and VainF's files need: conv3/conv4 dilated but padded by 1. Shapes only:
    # on the meta device.
    for output_stride, lost in [(16, 4), (8, 12), (32, 0)]:
        body = build_backbone("xception_vainf", output_stride=output_stride).eval().to("meta")
        features = body(torch.empty(1, 3, *IMAGE_SIZE, device="meta"))
        # block11's map, through block12 (pooled 3x3/2 with padding 1 only at OS32), then conv3 and conv4
        kept = [side if output_stride < 32 else (side + 1) // 2 for side in features["aux"].shape[-2:]]
        assert list(features["out"].shape[-2:]) == [side - lost for side in kept]
        assert body.strides == {"low": 4, "aux": min(output_stride, 16), "out": output_stride}


def test_too_small_images_and_options_it_lacks_get_clear_errors():
    body = build_backbone("xception_vainf", output_stride=8).eval().to("meta")
    minimum = body.minimum_input_size()
    assert body(torch.empty(1, 3, minimum, minimum, device="meta"))["out"].shape[-2:] == (1, 1)  # the smallest runs
    with pytest.raises(DataError, match=f"output stride 8 needs images of at least {minimum}x{minimum} pixels"):
        body(torch.empty(1, 3, minimum - 1, 2 * minimum, device="meta"))
    with pytest.raises(ConfigError, match="multi_grid"):
        atrous.build_model("deeplabv3", backbone="xception_vainf", multi_grid=(1, 2, 4))
    with pytest.raises(ConfigError, match="first_block_dilation 'stage'"):
        atrous.build_model("deeplabv3", backbone="xception_vainf", first_block_dilation="previous")


def test_undilated_output_stride_32_trains_with_an_aux_head():
    model = atrous.build_model("deeplabv3plus_vainf", backbone="xception_vainf", output_stride=32, aux=True,
                               num_classes=3).train()  # fmt: skip
    images = torch.randn(2, 3, 33, 47, requires_grad=True)
    out = model(images)
    assert out.logits.shape == out.aux_logits.shape == (2, 3, 33, 47)
    (out.logits.mean() + out.aux_logits.mean()).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
