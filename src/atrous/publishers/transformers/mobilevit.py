"""Apple's MobileViT and MobileViTV2 as transformers builds them for DeepLabV3 (``MobileViTForSemanticSegmentation``:
apple/deeplabv3-mobilevit-small, -x-small, -xx-small; ``MobileViTV2ForSemanticSegmentation``:
apple/mobilevitv2-1.0-voc-deeplabv3, -1.5-): timm's ``mobilevit_*`` / ``mobilevitv2_*`` networks, which hold the same
layers, with the two places where transformers computes otherwise made its way:

- at output stride 16 and 8 timm (as Apple's ml-cvnets) dilates each MobileViT block's local 3x3 conv; transformers
  does not, and its published weights and logits come from its code: the conv is set back to dilation 1;
- MobileViTV2's unfolding where a feature map's side is odd: transformers drops the last row or column (``F.unfold``)
  and its fold writes zeros there; timm resizes the block's input up (align_corners) and keeps the larger map.

Both blocks' forwards are written here in integer arithmetic on the input's size (timm's use ``math.ceil``): an ONNX
export computes the patch grid per input rather than freezing the example's.

The head reads layer 5's output (not the classification network's final 1x1 expansion). Keys: transformers' names ->
timm's (V1's separate query/key/value -> one ``qkv``: rows [q; k; v]) under ``backbone.net.``. Facts:
``transformers/models/mobilevit{,v2}/modeling_mobilevit{,v2}.py`` 5.x, compared layer by layer with timm 1.0."""

from __future__ import annotations

import re
import types
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ConfigError, DataError, WeightsError
from ...models.backbones.base import Backbone
from ...models.spec import ModelSpec
from ...weights.keys import classes

# atrous's backbone name -> (timm's network, transformers' config that builds the same one).
V1_NETWORKS = {"mobilevit_xxs_hf": "mobilevit_xxs", "mobilevit_xs_hf": "mobilevit_xs", "mobilevit_s_hf": "mobilevit_s"}
V2_NETWORKS = {f"mobilevitv2_{width}_hf": f"mobilevitv2_{width}" for width in ("050", "100", "150")}
# transformers' layer 5 width (neck_hidden_sizes[5]) of each MobileViT; MobileViTV2's is its width multiplier's.
_V1_BY_WIDTH = {80: "mobilevit_xxs_hf", 96: "mobilevit_xs_hf", 160: "mobilevit_s_hf"}
_V2_BY_WIDTH = {256: "mobilevitv2_050_hf", 512: "mobilevitv2_100_hf", 768: "mobilevitv2_150_hf"}


def _v1_block_forward(self, x: torch.Tensor) -> torch.Tensor:
    """timm's (and transformers') ``MobileViTLayer`` after its downsampling, in integer arithmetic on the input's size
    and with the resize to whole patches always made (the identity where the sides divide): an exported graph then
    computes both per input instead of freezing the example's (timm's ``math.ceil`` and ``if`` do)."""
    shortcut = x
    x = self.conv_1x1(self.conv_kxk(x))
    batch, channels, height, width = x.shape
    patch_h, patch_w = self.patch_size
    rows, cols = (height + patch_h - 1) // patch_h, (width + patch_w - 1) // patch_w
    x = F.interpolate(x, size=(rows * patch_h, cols * patch_w), mode="bilinear", align_corners=False)
    # [B, C, H, W] -> [B * P, N, C]: attention over the N patches, separately for each of the P pixels of a patch.
    x = x.reshape(batch * channels * rows, patch_h, cols, patch_w).transpose(1, 2)
    x = x.reshape(batch, channels, rows * cols, patch_h * patch_w).transpose(1, 3)
    x = self.norm(self.transformer(x.reshape(batch * patch_h * patch_w, rows * cols, channels)))
    x = x.reshape(batch, patch_h * patch_w, rows * cols, channels).transpose(1, 3)
    x = x.reshape(batch * channels * rows, cols, patch_h, patch_w).transpose(1, 2)
    x = x.reshape(batch, channels, rows * patch_h, cols * patch_w)
    x = self.conv_proj(F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False))
    return self.conv_fusion(torch.cat((shortcut, x), dim=1))


def _v2_block_forward(self, x: torch.Tensor) -> torch.Tensor:
    """transformers' ``MobileViTV2Layer`` after its downsampling: local convs, patches of the whole patch grid
    (an odd last row or column left out), linear attention, fold with zeros where it was left out, projection."""
    x = self.conv_1x1(self.conv_kxk(x))
    batch, channels, height, width = x.shape
    patch_h, patch_w = self.patch_size
    rows, cols = height // patch_h, width // patch_w
    patches = x[:, :, : rows * patch_h, : cols * patch_w].reshape(batch, channels, rows, patch_h, cols, patch_w)
    patches = patches.permute(0, 1, 3, 5, 2, 4).reshape(batch, channels, patch_h * patch_w, rows * cols)
    patches = self.norm(self.transformer(patches))
    folded = patches.reshape(batch, channels, patch_h, patch_w, rows, cols).permute(0, 1, 4, 2, 5, 3)
    folded = folded.reshape(batch, channels, rows * patch_h, cols * patch_w)
    return self.conv_proj(F.pad(folded, (0, width - cols * patch_w, 0, height - rows * patch_h)))


class TransformersMobileViT(Backbone):
    """``net``: timm's network at ``output_stride`` as transformers computes it. Features: "low" layer 2 (stride 4),
    "aux" layer 4, "out" layer 5 (what transformers' DeepLabV3 head reads)."""

    def __init__(self, timm_name: str, *, output_stride: int, multi_grid: Sequence[int] | None = None,
                 first_block: str = "previous"):  # fmt: skip
        super().__init__()
        if multi_grid is not None or first_block != "previous":
            raise ConfigError(f"{timm_name} has no multi_grid and dilates as transformers does only")
        import timm

        self.net = timm.create_model(timm_name, pretrained=False, output_stride=output_stride, num_classes=0)
        self.net.final_conv = nn.Identity()  # the classifier's 1x1 expansion: not in the segmentation network
        for stage in self.net.stages:
            for block in stage:
                if hasattr(block, "conv_kxk"):
                    conv = block.conv_kxk.conv
                    conv.dilation, conv.padding = (1, 1), ((conv.kernel_size[0] - 1) // 2,) * 2
                    forward = _v2_block_forward if timm_name.startswith("mobilevitv2") else _v1_block_forward
                    block.forward = types.MethodType(forward, block)
        widths = [stage[-1].conv_proj.out_channels if hasattr(stage[-1], "conv_proj") else _width(stage[-1])
                  for stage in self.net.stages]  # fmt: skip
        strides = [2, 4, 8, min(16, output_stride), output_stride]
        self.channels = {"low": widths[1], "aux": widths[3], "out": widths[4]}
        self.strides = {"low": strides[1], "aux": strides[3], "out": strides[4]}
        self.output_stride = output_stride
        self.unfolds_whole_patches = timm_name.startswith("mobilevitv2")

    def minimum_input_size(self) -> int:
        """The smallest image side (pixels) this network gives a feature map for: MobileViTV2's last map needs a whole
        2x2 patch (transformers' own fails below it too); MobileViT resizes a smaller map up to one."""
        return self.output_stride + 1 if self.unfolds_whole_patches else 1

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        height, width = images.shape[-2:]
        if min(int(height), int(width)) < self.minimum_input_size():
            raise DataError(f"MobileViTV2 at output stride {self.output_stride} needs images of at least "
                            f"{self.minimum_input_size()}x{self.minimum_input_size()} pixels (its last feature map "
                            f"must hold one 2x2 patch), got {height}x{width}")  # fmt: skip
        x = self.net.stem(images)
        features = {}
        for index, stage in enumerate(self.net.stages):
            x = self._stage(stage, x)
            if index == 1:
                features["low"] = x
            if index == 3:
                features["aux"] = x
        features["out"] = x
        return features


def _width(block: nn.Module) -> int:
    return [module for module in block.modules() if isinstance(module, nn.Conv2d)][-1].out_channels


# ------------------------------------------------------------------------------------------------- the files

_INVERTED_RESIDUAL = {"expand_1x1": "conv1_1x1", "conv_3x3": "conv2_kxk", "reduce_1x1": "conv3_1x1"}
_HEAD = [
    (r"^segmentation_head\.aspp\.convs\.0\.", "head.aspp.branch1x1."),
    (r"^segmentation_head\.aspp\.convs\.([123])\.", lambda m: f"head.aspp.atrous_branches.{int(m[1]) - 1}."),
    (r"^segmentation_head\.aspp\.convs\.4\.conv_1x1\.", "head.aspp.pooling."),
    (r"^segmentation_head\.aspp\.project\.", "head.aspp.project."),
]


def _timm_key(key: str) -> str:
    """A transformers backbone key (its model prefix removed) -> timm's."""
    key = key.replace(".convolution.", ".conv.").replace(".normalization.", ".bn.")
    key = re.sub(r"^conv_stem\.", "stem.", key)
    key = re.sub(r"^encoder\.layer\.([01])\.layer\.(\d+)\.", r"stages.\1.\2.", key)
    key = re.sub(r"^encoder\.layer\.([234])\.downsampling_layer\.", r"stages.\1.0.", key)
    key = re.sub(r"^encoder\.layer\.([234])\.", r"stages.\1.1.", key)
    for theirs, ours in _INVERTED_RESIDUAL.items():
        key = re.sub(rf"^(stages\.\d+\.\d+\.){theirs}\.", rf"\g<1>{ours}.", key)
    key = key.replace(".conv_1x1.conv.weight", ".conv_1x1.weight")  # a plain conv in timm
    key = key.replace(".conv_projection.", ".conv_proj.").replace(".fusion.", ".conv_fusion.")
    key = re.sub(r"\.1\.layernorm\.", ".1.norm.", key)
    key = re.sub(r"\.transformer\.layer\.(\d+)\.", r".transformer.\1.", key)
    key = key.replace(".layernorm_before.", ".norm1.").replace(".layernorm_after.", ".norm2.")
    key = key.replace(".attention.output.dense.", ".attn.proj.")  # V1
    key = key.replace(".intermediate.dense.", ".mlp.fc1.").replace(".output.dense.", ".mlp.fc2.")
    key = key.replace(".attention.qkv_proj.conv.", ".attn.qkv_proj.").replace(".attention.out_proj.conv.", ".attn.out_proj.")
    return key.replace(".ffn.conv1.conv.", ".mlp.fc1.").replace(".ffn.conv2.conv.", ".mlp.fc2.")  # V2


class _Layout:
    """One model type's file: its key prefix, the backbones by layer 5's width, its head's width."""

    def __init__(self, model_type: str, prefix: str, by_width: dict[int, str], layer5: str):
        self.model_type, self.prefix, self.by_width, self.layer5 = model_type, prefix, by_width, layer5

    def recognise(self, state: Mapping) -> bool:
        return f"{self.prefix}conv_stem.convolution.weight" in state

    def describe(self, state, config: Mapping, source: str) -> tuple[ModelSpec, list[tuple[str, str]]]:
        classifier = "segmentation_head.classifier.convolution.bias"
        if classifier not in state:
            raise WeightsError(f"{source}: transformers' {self.model_type} without a segmentation head (an ImageNet "
                               "classifier): not a segmentation model")  # fmt: skip
        width = state[self.layer5].shape[0]
        if width not in self.by_width:
            raise WeightsError(f"{source}: a transformers {self.model_type} whose layer 5 has {width} channels: atrous "
                               f"builds {sorted(self.by_width.values())} (layer 5 of {sorted(self.by_width)})")  # fmt: skip
        rates = tuple(config.get("atrous_rates", (6, 12, 18)))
        if len(rates) != 3 or any(f"segmentation_head.aspp.convs.{i}.convolution.weight" not in state for i in (1, 2, 3)):
            raise WeightsError(f"{source}: a transformers {self.model_type} head with atrous_rates {list(rates)}: atrous "
                               "reads the three-rate ASPP of Apple's DeepLabV3 models")  # fmt: skip
        aspp = state["segmentation_head.aspp.project.convolution.weight"].shape[0]
        assumed = []
        if "output_stride" in config:
            output_stride = config["output_stride"]
        else:
            output_stride = 16
            why = "output stride 16, Apple's DeepLabV3 models' (a state dict without its config.json does not say)"
            assumed.append(("output_stride", why))
        return ModelSpec(name=f"deeplabv3_transformers_{aspp}", backbone=self.by_width[width], atrous_rates=rates,
                         output_stride=output_stride, num_classes=classes(state, classifier)), assumed  # fmt: skip

    def set_aside(self, state):
        return dict(state), []

    def translate(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        translated, qkv = {}, {}
        for key, value in state.items():
            if key.startswith(self.prefix):
                inner = key[len(self.prefix) :]
                attention = re.match(r"(.*)\.attention\.attention\.(query|key|value)\.(weight|bias)$", inner)
                if attention:  # V1: one fused projection in timm
                    qkv.setdefault((attention[1], attention[3]), {})[attention[2]] = value
                    continue
                translated[f"backbone.net.{_timm_key(inner)}"] = value
                continue
            for pattern, replacement in _HEAD:
                renamed, count = re.subn(pattern, replacement, key)
                if count:
                    key = renamed.replace(".convolution.", ".conv.").replace(".normalization.", ".bn.")
                    break
            translated[key.replace("segmentation_head.classifier.convolution.", "head.classifier.")] = value
        for (layer, kind), parts in qkv.items():
            if set(parts) != {"query", "key", "value"}:
                raise WeightsError(f"a transformers MobileViT attention layer {layer} without all of query, key and "
                                   f"value ({sorted(parts)})")  # fmt: skip
            fused = torch.cat([parts["query"], parts["key"], parts["value"]], dim=0)
            translated[f"backbone.net.{_timm_key(layer + '.x')[: -len('.x')]}.attn.qkv.{kind}"] = fused
        return translated


V1 = _Layout("mobilevit", "mobilevit.", _V1_BY_WIDTH, "mobilevit.encoder.layer.4.fusion.normalization.weight")
V2 = _Layout("mobilevitv2", "mobilevitv2.", _V2_BY_WIDTH,
             "mobilevitv2.encoder.layer.4.conv_projection.normalization.weight")  # fmt: skip
