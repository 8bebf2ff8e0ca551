"""HRNetV2 (W32, W48) as VainF/DeepLabV3Plus-Pytorch builds it for its DeepLabV3/V3+ models (``_segm_hrnet``).

HRNet keeps a stride-4 branch from the stem to the end and adds a branch at half the resolution (twice the channels)
in each transition; its stage modules exchange information between the branches after every four basic blocks.
The features the heads read are both at stride 4, so there is no output-stride option: the stride is 4.

State-dict keys are VainF's (those of the official HRNet too, but for ``transition2``/``transition3``, which VainF
writes as one conv + BN + ReLU rather than the official list with empty entries): its segmentation files load without
renaming, and its ImageNet backbone file has the same keys beside its classifier's (``bn_classifier``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from ...errors import ConfigError
from ...models.backbones.base import Backbone

# Basic blocks per branch in each stage module, and modules per stage (stage2, stage3, stage4): HRNetV2's.
BLOCKS_PER_BRANCH = 4
MODULES_PER_STAGE = (1, 4, 3)
WIDTHS = (32, 48)


def _conv_bn(in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1, relu: bool) -> nn.Sequential:
    layers = [nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False),
              nn.BatchNorm2d(out_channels)]  # fmt: skip
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if relu else nn.Sequential(*layers)


class HRModule(nn.Module):
    """One exchange unit: ``branches`` parallel branches (branch b: width * 2**b channels at stride 4 * 2**b), four
    basic blocks each, then every output branch i receives the sum over input branches j of
    - j == i: the branch itself;
    - j > i (coarser): 1x1 conv + BN to i's channels, nearest-neighbour upsampled to i's size;
    - j < i (finer): i - j 3x3 stride-2 convs + BN (ReLU after all but the last; the last changes the channels),
    and a ReLU after the sum. ``fuse_layers[i][j]`` holds the path from j to i (VainF's StageModule).

    VainF upsamples by the scale factor 2**(j - i), which needs a stride-4 map whose sides divide by 8 (input sides
    divisible by 32); upsampling to the finer branch's size is the same there and also defined for other sizes.
    """

    def __init__(self, *, branches: int, width: int) -> None:
        super().__init__()
        channels = [width * 2**b for b in range(branches)]
        self.branches = nn.ModuleList(
            nn.Sequential(*(BasicBlock(c, c) for _ in range(BLOCKS_PER_BRANCH))) for c in channels
        )
        self.fuse_layers = nn.ModuleList(
            nn.ModuleList(self._fuse(channels, source, target) for source in range(branches))
            for target in range(branches)
        )
        self.relu = nn.ReLU(inplace=True)

    @staticmethod
    def _fuse(channels: Sequence[int], source: int, target: int) -> nn.Module:
        if source == target:
            return nn.Identity()
        if source > target:  # the upsampling happens in forward, to the target branch's size
            return _conv_bn(channels[source], channels[target], 1, relu=False)
        steps = [
            _conv_bn(channels[source], channels[source], 3, stride=2, relu=True) for _ in range(target - source - 1)
        ]
        return nn.Sequential(*steps, _conv_bn(channels[source], channels[target], 3, stride=2, relu=False))

    def forward(self, x: list[torch.Tensor]) -> list[torch.Tensor]:
        """x: one (N, width * 2**b, H/2**b, W/2**b) map per branch b (H, W at stride 4) -> the same shapes."""
        x = [branch(features) for branch, features in zip(self.branches, x)]
        fused = []
        for target, paths in enumerate(self.fuse_layers):
            total = None
            for source, path in enumerate(paths):  # summed in source order, as VainF does
                contribution = path(x[source])
                if source > target:
                    contribution = F.interpolate(contribution, size=x[target].shape[-2:], mode="nearest")
                total = contribution if total is None else total + contribution
            fused.append(self.relu(total))
        return fused


class HRNetV2Backbone(Backbone):
    """HRNetV2-W``width`` without its classification layers, as VainF's DeepLab models run it.

    - stem: conv1 (3x3, stride 2, 64) -> bn1 -> conv2 (3x3, stride 2, 64) -> bn2 -> ReLU. VainF's
      ``IntermediateLayerGetter`` calls the network's children in registration order and ``relu`` is registered
      once, after bn2: its segmentation models have NO ReLU between bn1 and conv2 (its classification HRNet does).
    - layer1: four bottlenecks (64 -> 256 channels, stride 4): the "low" feature (VainF's ``low_level``).
    - transition1 (256 -> width at stride 4, 2 * width at stride 8), stage2 (1 module, 2 branches), transition2 (a new
      branch from the coarsest: 4 * width at stride 16), stage3 (4 modules, 3 branches), transition3 (8 * width at
      stride 32), stage4 (3 modules, 4 branches).
    - "out" (VainF's ``out``): the four branches, the coarser three bilinearly upsampled (``align_corners=False``) to
      the stride-4 one, concatenated: 15 * width channels at stride 4 (480 for W32, 720 for W48).
    "aux" is the same concatenated map (VainF trains no aux head; HRNet has no other whole-image feature).
    """

    def __init__(self, *, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.conv2 = nn.Conv2d(64, 64, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        downsample = nn.Sequential(nn.Conv2d(64, 256, 1, bias=False), nn.BatchNorm2d(256))
        self.layer1 = nn.Sequential(Bottleneck(64, 64, downsample=downsample), *(Bottleneck(256, 64) for _ in range(3)))
        # VainF nests the stride-8 branch one Sequential deeper (the official HRNet's key layout).
        self.transition1 = nn.ModuleList([_conv_bn(256, width, 3, relu=True),
                                          nn.Sequential(_conv_bn(256, 2 * width, 3, stride=2, relu=True))])  # fmt: skip
        self.stage2, self.stage3, self.stage4 = (
            nn.Sequential(*(HRModule(branches=branches, width=width) for _ in range(modules)))
            for branches, modules in zip((2, 3, 4), MODULES_PER_STAGE)
        )
        self.transition2 = _conv_bn(2 * width, 4 * width, 3, stride=2, relu=True)
        self.transition3 = _conv_bn(4 * width, 8 * width, 3, stride=2, relu=True)
        self.width = width
        self.channels = {"low": 256, "aux": 15 * width, "out": 15 * width}
        self.strides = {"low": 4, "aux": 4, "out": 4}
        self.output_stride = 4

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """images: (N, 3, H, W) float32, normalised -> {"low", "aux", "out"} feature maps, all at stride 4."""
        x = self.relu(self.bn2(self.conv2(self.bn1(self.conv1(images)))))
        low = self._stage(self.layer1, x)
        branches = self._stage(self.stage2, [transition(low) for transition in self.transition1])
        branches = self._stage(self.stage3, [*branches, self.transition2(branches[-1])])
        branches = self._stage(self.stage4, [*branches, self.transition3(branches[-1])])
        size = branches[0].shape[-2:]
        upsampled = [F.interpolate(b, size=size, mode="bilinear", align_corners=False) for b in branches[1:]]
        out = torch.cat([branches[0], *upsampled], dim=1)
        return {"low": low, "aux": out, "out": out}


def hrnetv2(
    width: int, *, output_stride: int, multi_grid: Sequence[int] | None = None, first_block: str | None = None
) -> HRNetV2Backbone:
    """HRNetV2-W``width`` (32 or 48). ``output_stride`` must be 4: HRNet's features stay at stride 4, and there is
    no stride to trade for dilation (so no multi_grid or first-block dilation rule either)."""
    name = f"hrnetv2_w{width}"
    if width not in WIDTHS:
        raise ConfigError(f"HRNetV2 width {width} is not one atrous builds; choose from {list(WIDTHS)}")
    if output_stride != 4:
        raise ConfigError(f"{name} keeps its features at stride 4: output_stride must be 4, got {output_stride}")
    if multi_grid is not None or first_block is not None:
        raise ConfigError(f"{name} has no dilated stage: multi_grid and first_block_dilation do not apply to it")
    return HRNetV2Backbone(width=width)
