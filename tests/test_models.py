"""Model contracts: shapes, strides, the DeepLab-v2 and V3/V3+ architecture facts, frozen BN, errors."""

import pytest
import torch
from torch import nn

import atrous
from atrous.models.backbones import BACKBONES, build_backbone
from atrous.models.heads import DeepLabV2Head, SeparableConvBNReLU

ALL_BACKBONES = atrous.list_backbones()


def test_registries_list_the_documented_names():
    assert atrous.list_models() == sorted(["deeplabv1_kazuto", "deeplabv2", "deeplabv3", "deeplabv3_google",
                                    "deeplabv3_google_slim", "deeplabv3_kazuto", "deeplabv3_mmseg", "deeplabv3plus",
                                    "deeplabv3plus_dpc_google", "deeplabv3plus_mmseg", "deeplabv3plus_mnv3_google",
                                    "deeplabv3plus_smp", "deeplabv3plus_vainf", "deeplabv3_transformers_256",
                                    "deeplabv3_transformers_512", "deeplabv3plus_keras_hub"])  # fmt: skip
    assert ALL_BACKBONES == sorted(
        ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnet101_caffe", "mobilenet_v3_large",
         "resnet18_v1c", "resnet34_v1c", "resnet50_v1c", "resnet101_v1c", "mobilenet_v2_vainf", "mobilenet_v2_jfzhang95",
         "xception65_jfzhang95", "drn_d_54", "hrnetv2_w32", "hrnetv2_w48", "xception_vainf", "xception41_google",
         "xception65_google", "xception71_google", "mobilenet_v2_google", "mobilenet_v2_dm05_google",
         "resnet50_beta_google", "resnet101_beta_google", "mobilenet_v3_large_seg_google",
         "mobilenet_v3_small_seg_google", "mobilenet_edgetpu_google", "mobilenet_edgetpu_dm075_google",
         "mobilevit_xxs_hf", "mobilevit_xs_hf", "mobilevit_s_hf", "mobilevitv2_050_hf", "mobilevitv2_100_hf",
         "mobilevitv2_150_hf", "resnet50_keras_hub", "resnet50_v2_keras_hub"]
    )  # fmt: skip


def _strides(backbone: str) -> list[int]:
    """The output strides a backbone is built at here: 8, 16 and 32 where dilation gives them, else its fixed one."""
    return [stride for stride in BACKBONES[backbone].output_strides if stride in (8, 16, 32)] or [
        BACKBONES[backbone].output_strides[0]
    ]


# The peers' own backbones, for their files: each tested against its peer's reference in tests/test_peer_*.py; here
# the contracts at their strides, under the V3+ head only (they are large: Xception-65 alone has 55M parameters).
PEER_BACKBONES = {"xception65_jfzhang95", "drn_d_54", "hrnetv2_w32", "hrnetv2_w48", "xception_vainf", "xception41_google",
                  "xception65_google", "xception71_google", "mobilenet_v2_google", "mobilenet_v2_dm05_google",
                  "resnet50_beta_google", "resnet101_beta_google", "mobilenet_v3_large_seg_google",
                  "mobilenet_v3_small_seg_google", "mobilenet_edgetpu_google", "mobilenet_edgetpu_dm075_google",
                  "mobilevit_xxs_hf", "mobilevit_xs_hf", "mobilevit_s_hf", "mobilevitv2_050_hf", "mobilevitv2_100_hf",
                  "mobilevitv2_150_hf", "resnet50_keras_hub", "resnet50_v2_keras_hub"}  # fmt: skip


# Wider copies of a network tested here at its smallest width (the zoo tests build each one).
WIDER_COPIES = {"mobilevit_xs_hf", "mobilevit_s_hf", "mobilevitv2_100_hf", "mobilevitv2_150_hf"}
TESTED_BACKBONES = [name for name in ALL_BACKBONES if name not in WIDER_COPIES]


def _minimum_side(backbone: nn.Module) -> int:
    return backbone.minimum_input_size() if hasattr(backbone, "minimum_input_size") else 1


@pytest.mark.parametrize(("backbone", "output_stride"), [(b, s) for b in TESTED_BACKBONES for s in _strides(b)])
def test_backbone_reports_its_real_strides_and_channels(backbone, output_stride):
    body = build_backbone(backbone, output_stride=output_stride).eval()
    side = max(64, _minimum_side(body) // 32 * 32 + 32)
    with torch.no_grad():
        small, large = body(torch.randn(1, 3, side, side + 32)), body(torch.randn(1, 3, side + 64, side + 160))
    assert set(small) == {"low", "aux", "out"}
    for name in small:
        # Growing the input by (64, 128) grows a stride-s map by (64/s, 128/s), also with ceil-mode pooling.
        grown = (large[name].shape[2] - small[name].shape[2], large[name].shape[3] - small[name].shape[3])
        assert (64 // grown[0], 128 // grown[1]) == (body.strides[name], body.strides[name]), name
        assert small[name].shape[1] == body.channels[name], name
    assert body.strides["out"] == output_stride
    assert body.strides["low"] == 4


PAPER_HEADS = ["deeplabv2", "deeplabv3", "deeplabv3plus"]
# Every paper head on every backbone; the heads of other implementations' files on one backbone of each family.
MODEL_MATRIX = [
    (name, backbone, stride)
    for backbone in TESTED_BACKBONES
    for name in (["deeplabv3plus"] if backbone in PEER_BACKBONES else PAPER_HEADS)
    for stride in _strides(backbone)
] + [
    (name, backbone, stride)
    for name in sorted(set(atrous.list_models()) - set(PAPER_HEADS))
    for backbone in ("resnet18", "resnet50_v1c", "mobilenet_v3_large")
    for stride in (8, 16, 32)
]


@pytest.mark.parametrize(("name", "backbone", "output_stride"), MODEL_MATRIX)
def test_every_model_gives_full_resolution_logits_and_backpropagates(name, backbone, output_stride):
    model = atrous.build_model(name, backbone=backbone, num_classes=3, output_stride=output_stride, aux=True)
    model.train()
    grow = _minimum_side(model.backbone) - 32  # VainF's Xception has unpadded convs: it needs larger images
    for height, width in [(33 + max(grow, 0), 47 + max(grow, 0)), (32 + max(grow, 0), 48 + max(grow, 0))]:
        images = torch.randn(2, 3, height, width, requires_grad=True)
        out = model(images)
        assert isinstance(out, atrous.SegmentationOutput)
        assert out.logits.shape == (2, 3, height, width)
        assert out.aux_logits.shape == (2, 3, height, width)
        (out.logits.mean() + out.aux_logits.mean()).backward()
        assert images.grad is not None and torch.isfinite(images.grad).all()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert all(p.grad is not None for p in trainable)


def test_513_input_and_same_return_type_in_eval():
    model = atrous.build_model("deeplabv3", backbone="mobilenet_v3_large", num_classes=21).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 513, 513))
    assert isinstance(out, atrous.SegmentationOutput)
    assert out.logits.shape == (1, 21, 513, 513)
    assert out.aux_logits is None


def test_deeplabv2_caffe_resnet_matches_the_port():
    model = atrous.build_model("deeplabv2", num_classes=21)
    body = model.backbone
    assert model.spec.backbone == "resnet101_caffe" and body.output_stride == 8
    assert [len(layer) for layer in (body.layer1, body.layer2, body.layer3, body.layer4)] == [3, 4, 23, 3]
    assert body.maxpool.ceil_mode and body.maxpool.kernel_size == 3 and body.maxpool.stride == 2
    assert body.conv1.kernel_size == (7, 7) and body.conv1.stride == (2, 2) and body.conv1.bias is None
    # Caffe style: the stride is on the first 1x1 conv; the 3x3 has stride 1 and padding = dilation.
    first = body.layer2[0]
    assert first.conv1.stride == (2, 2) and first.conv2.stride == (1, 1)
    for layer, dilation in [(body.layer3, 2), (body.layer4, 4)]:
        for block in layer:
            assert block.conv2.dilation == (dilation, dilation) and block.conv2.padding == (dilation, dilation)
            assert block.conv1.stride == (1, 1)
    for layer in (body.layer1, body.layer2, body.layer3, body.layer4):
        assert layer[0].downsample is not None
    # DeepLab-v2 maps a 321x321 crop to a 41x41 score map, 513 to 65 (ceil-mode pooling).
    with torch.no_grad():
        assert body.eval()(torch.randn(1, 3, 321, 321))["out"].shape[-2:] == (41, 41)
        assert body(torch.randn(1, 3, 513, 513))["out"].shape[-2:] == (65, 65)


def test_deeplabv2_head_sums_all_four_branches():
    head = DeepLabV2Head(channels={"out": 8}, num_classes=5)
    assert [conv.dilation[0] for conv in head.classifiers] == [6, 12, 18, 24]
    assert [conv.padding[0] for conv in head.classifiers] == [6, 12, 18, 24]
    assert all(conv.bias is not None for conv in head.classifiers)
    features = torch.randn(2, 8, 30, 30)
    expected = sum(conv(features) for conv in head.classifiers)
    torch.testing.assert_close(head({"out": features}), expected)
    # Removing any one branch changes the output: none is dropped.
    for index in range(4):
        partial = sum(conv(features) for i, conv in enumerate(head.classifiers) if i != index)
        assert not torch.allclose(head({"out": features}), partial)


def test_deeplabv2_head_init_is_normal_0_001():
    model = atrous.build_model("deeplabv2", num_classes=21)
    weights = torch.cat([conv.weight.flatten() for conv in model.head.classifiers])
    assert abs(weights.mean().item()) < 1e-3
    assert weights.std().item() == pytest.approx(0.01, rel=0.05)


def test_deeplabv2_frozen_bn_statistics_and_affine():
    model = atrous.build_model("deeplabv2", backbone="resnet18", num_classes=4)
    model.train()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(not bn.training for bn in bns)
    assert all(not p.requires_grad for bn in bns for p in bn.parameters())
    before = [bn.running_mean.clone() for bn in bns]
    model(torch.randn(1, 3, 40, 40)).logits.sum().backward()  # batch size 1 works
    assert all(torch.equal(b, bn.running_mean) for b, bn in zip(before, bns))


def test_frozen_bn_affine_only_keeps_statistics_updating():
    model = atrous.build_model("deeplabv2", backbone="resnet18", num_classes=4, frozen_bn="affine").train()
    bn = model.backbone.bn1
    before = bn.running_mean.clone()
    model(torch.randn(2, 3, 40, 40))
    assert bn.training and not bn.weight.requires_grad
    assert not torch.equal(before, bn.running_mean)


def test_optim_parameters_give_1x_backbone_and_10x_head_for_deeplabv2():
    model = atrous.build_model("deeplabv2", backbone="resnet18", num_classes=4, aux=True)
    backbone_group, head_group = model.optim_parameters(2.5e-4)
    assert backbone_group["lr"] == 2.5e-4 and head_group["lr"] == pytest.approx(2.5e-3)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    grouped = [id(p) for p in backbone_group["params"] + head_group["params"]]
    assert sorted(grouped) == sorted(trainable) and len(set(grouped)) == len(grouped)
    head_ids = {id(p) for p in model.head.parameters()} | {id(p) for p in model.aux_head.parameters()}
    assert {id(p) for p in head_group["params"]} == head_ids
    v3 = atrous.build_model("deeplabv3", backbone="resnet18", num_classes=4)
    assert v3.optim_parameters(0.01)[1]["lr"] == 0.01


def test_deeplabv2_also_runs_on_a_torchvision_resnet():
    model = atrous.build_model("deeplabv2", backbone="resnet101", num_classes=4).eval()
    assert model.normalization.name == "imagenet_rgb"
    assert model(torch.randn(1, 3, 41, 41)).logits.shape == (1, 4, 41, 41)


def test_aspp_rates_follow_output_stride_and_can_be_overridden():
    def rates(model):
        return [branch.conv.dilation[0] for branch in model.head.aspp.atrous_branches]

    assert rates(atrous.build_model("deeplabv3", backbone="resnet18", num_classes=2)) == [6, 12, 18]
    assert rates(atrous.build_model("deeplabv3", backbone="resnet18", num_classes=2, output_stride=8)) == [12, 24, 36]
    custom = atrous.build_model("deeplabv3plus", backbone="resnet18", num_classes=2, atrous_rates=(3, 5))
    assert rates(custom) == [3, 5]
    aspp = custom.head.aspp
    assert aspp.project.conv.in_channels == 256 * 4  # 1x1 + two atrous + pooling
    assert aspp.dropout.p == 0.1


def test_aspp_layout_is_the_papers():
    model = atrous.build_model("deeplabv3", backbone="resnet50", num_classes=21, aux=True)
    aspp = model.head.aspp
    assert aspp.branch1x1.conv.kernel_size == (1, 1) and aspp.branch1x1.conv.out_channels == 256
    assert all(b.conv.kernel_size == (3, 3) and b.conv.out_channels == 256 for b in aspp.atrous_branches)
    assert aspp.pooling.conv.kernel_size == (1, 1)
    assert aspp.project.conv.in_channels == 1280 and aspp.dropout.p == 0.5
    assert model.head.conv.conv.kernel_size == (3, 3) and model.head.classifier.out_channels == 21
    assert model.aux_head.conv.conv.in_channels == 1024 and model.aux_head.conv.conv.out_channels == 256
    assert model.aux_head.dropout.p == 0.1


def test_multi_grid_multiplies_the_last_stage_dilations():
    model = atrous.build_model("deeplabv3", backbone="resnet50", num_classes=2, multi_grid=(1, 2, 4))
    assert [block.conv2.dilation[0] for block in model.backbone.layer4] == [2, 4, 8]
    model = atrous.build_model("deeplabv3", backbone="resnet50", num_classes=2, output_stride=8, multi_grid=(1, 2, 4))
    assert [block.conv2.dilation[0] for block in model.backbone.layer4] == [4, 8, 16]
    caffe = atrous.build_model("deeplabv2", num_classes=2, multi_grid=(1, 2, 4))
    assert [block.conv2.dilation[0] for block in caffe.backbone.layer4] == [4, 8, 16]
    assert [block.conv2.padding[0] for block in caffe.backbone.layer4] == [4, 8, 16]
    with pytest.raises(ValueError, match="one value per block"):
        atrous.build_model("deeplabv3", backbone="resnet50", num_classes=2, multi_grid=(1, 2))


def test_deeplabv3plus_decoder():
    model = atrous.build_model("deeplabv3plus", backbone="resnet50", num_classes=7)
    head = model.head
    assert head.low_project.conv.in_channels == 256 and head.low_project.conv.out_channels == 48
    assert head.fuse1.conv.in_channels == 304 and head.fuse1.conv.kernel_size == (3, 3)
    assert head.fuse2.conv.out_channels == 256 and head.classifier.out_channels == 7


def test_separable_option_uses_depthwise_and_pointwise_convs():
    model = atrous.build_model("deeplabv3plus", backbone="resnet18", num_classes=3, separable=True).eval()
    assert all(isinstance(b, SeparableConvBNReLU) for b in model.head.aspp.atrous_branches)
    assert isinstance(model.head.fuse1, SeparableConvBNReLU)
    depthwise = model.head.aspp.atrous_branches[0].depthwise.conv
    assert depthwise.groups == depthwise.in_channels and depthwise.dilation == (6, 6)
    assert model(torch.randn(1, 3, 37, 45)).logits.shape == (1, 3, 37, 45)


@pytest.mark.parametrize("name", ["deeplabv2", "deeplabv3", "deeplabv3plus"])
def test_channels_last_gives_the_same_output(name):
    model = atrous.build_model(name, backbone="resnet18", num_classes=5, aux=True).eval()
    images = torch.randn(2, 3, 65, 49)
    with torch.no_grad():
        reference = model(images)
        fast = model.to(memory_format=torch.channels_last)(images.to(memory_format=torch.channels_last))
    torch.testing.assert_close(fast.logits, reference.logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fast.aux_logits, reference.aux_logits, atol=1e-4, rtol=1e-4)


def test_batch_size_one_in_train_mode_fails_clearly_for_aspp():
    model = atrous.build_model("deeplabv3", backbone="resnet18", num_classes=3).train()
    with pytest.raises(ValueError, match="batch size 1 in train mode.*image-pooling"):
        model(torch.randn(1, 3, 40, 40))
    assert model(torch.randn(2, 3, 40, 40)).logits.shape == (2, 3, 40, 40)
    frozen = atrous.build_model("deeplabv3", backbone="resnet18", num_classes=3, frozen_bn="all").train()
    assert frozen(torch.randn(1, 3, 40, 40)).logits.shape == (1, 3, 40, 40)
    assert model.eval()(torch.randn(1, 3, 40, 40)).logits.shape == (1, 3, 40, 40)


def test_normalisation_matches_the_weights():
    assert atrous.build_model("deeplabv2", num_classes=2).normalization.name == "caffe_bgr"
    model = atrous.build_model("deeplabv3", backbone="resnet18", num_classes=2)
    assert model.normalization.name == "imagenet_rgb"
    pixel = torch.tensor([10.0, 20.0, 30.0]).view(3, 1, 1)  # R, G, B
    imagenet = model.normalization(pixel).flatten()
    expected = (torch.tensor([10, 20, 30]) / 255 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor(
        [0.229, 0.224, 0.225]
    )
    torch.testing.assert_close(imagenet, expected)
    caffe = atrous.build_model("deeplabv2", num_classes=2).normalization(pixel).flatten()
    torch.testing.assert_close(caffe, torch.tensor([30 - 104.00698793, 20 - 116.66876762, 10 - 122.67891434]))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name": "deeplabv4", "num_classes": 2}, r"unknown model 'deeplabv4'; choose from \['deeplabv1_kazuto', 'deeplabv2'"),
        ({"name": "deeplabv3", "backbone": "resnet5", "num_classes": 2}, r"unknown backbone 'resnet5'; choose from"),
        ({"name": "deeplabv3", "num_classes": 2, "output_stride": 4}, r"unsupported output_stride 4; choose from"),
        ({"name": "deeplabv3", "num_classes": 0}, r"num_classes must be an integer in \[1, 65535\], got 0"),
        ({"name": "deeplabv3", "num_classes": 2, "frozen_bn": "yes"}, r"unknown frozen_bn 'yes'"),
        ({"name": "deeplabv2", "num_classes": 2, "separable": True}, r"separable convs are not an option of deeplabv2's head"),
    ],
)
def test_build_errors_are_clear(kwargs, message):
    with pytest.raises(ValueError, match=message):
        atrous.build_model(**kwargs)


def test_spec_rebuilds_the_same_architecture():
    model = atrous.build_model("deeplabv3plus", backbone="resnet18", num_classes=4, output_stride=8, aux=True)
    rebuilt = atrous.build_model(atrous.ModelSpec.from_dict(model.spec.to_dict()))
    assert rebuilt.spec == model.spec
    rebuilt.load_state_dict(model.state_dict())
