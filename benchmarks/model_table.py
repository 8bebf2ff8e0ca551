"""The README's model table: parameters, GFLOPs at 513x513, CPU latency measured here, published accuracy.

    python benchmarks/model_table.py [--repeats 3] > benchmarks/model_table.md
    python benchmarks/model_table.py --timm       # DeepLabV3+ OS16 on the timm families README lists

Latency: one 513x513 image, eval mode, fp32, all cores, median of ``repeats`` rounds after one warm-up, timed as
the bench times (``atrous.bench.timing.ab_medians``: a forward shorter than 0.25 s is averaged over calls in a row).
"""

from __future__ import annotations

import argparse

import torch

import atrous
from atrous.bench.machine import this_machine
from atrous.bench.timing import ab_medians
from atrous.model_table import count_flops
from atrous.models import PRESETS, TORCHVISION_DEEPLABV3, ModelSpec

# mIoU (%) of the weights a published source distributes for exactly this network (see shared references).
PUBLISHED = {
    "deeplabv3_resnet50": "66.4 (torchvision, COCO val / VOC labels)",
    "deeplabv3_resnet101": "67.4 (torchvision, COCO val / VOC labels)",
    "deeplabv3_mobilenet_v3_large": "60.3 (torchvision, COCO val / VOC labels)",
    "deeplabv2": "76.35 VOC12 val (DeepLab-v2 paper, MSC+COCO; 77.69 with CRF)",
}


def rows():
    """(label, spec, published mIoU): 21 classes, no aux head."""
    yield "deeplabv2", PRESETS["deeplabv2_resnet101_caffe"], PUBLISHED["deeplabv2"]
    for key, spec in TORCHVISION_DEEPLABV3.items():
        yield key, ModelSpec(**{**spec.to_dict(), "aux": False}), PUBLISHED[key]
    for name in ("deeplabv3", "deeplabv3plus"):
        for backbone in ("resnet18", "resnet50", "resnet101", "mobilenet_v3_large"):
            yield f"{name}", ModelSpec(name=name, backbone=backbone, output_stride=16, num_classes=21), ""


# timm families README's table lists: the DeepLabV3+ paper's aligned Xception-65, ResNet-D, ResNeSt, RegNet,
# EfficientNet, ConvNeXt, MobileNetV2/V4.
TIMM_FAMILIES = ("xception65.tf_in1k", "resnet50d", "resnest50d", "regnety_040", "efficientnet_b3", "convnext_tiny",
                 "mobilenetv2_100", "mobilenetv4_conv_medium")  # fmt: skip


def timm_rows():
    for name in TIMM_FAMILIES:
        yield "deeplabv3plus", ModelSpec(name="deeplabv3plus", backbone=f"timm:{name}", output_stride=16), ""


def latency_ms(spec: ModelSpec, repeats: int) -> float:
    model = atrous.build_model(spec).eval()
    images = torch.randn(1, 3, 513, 513)
    with torch.no_grad():
        return ab_medians({"model": lambda: model(images)}, rounds=repeats)["model"] * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timm", action="store_true", help="the timm backbones' rows instead")
    args = parser.parse_args()
    print("| model | backbone | OS | params (M) | GFLOPs @513 | CPU latency @513 (ms) | published mIoU |")
    print("|---|---|---|---|---|---|---|")
    for label, spec, published in timm_rows() if args.timm else rows():
        params, flops = count_flops(513, spec)
        model = atrous.build_model(spec)
        latency = latency_ms(spec, args.repeats)
        print(
            f"| {label} | {model.spec.backbone} | {model.output_stride} | {params / 1e6:.1f} | {flops / 1e9:.1f} | "
            f"{latency:.0f} | {published} |",
            flush=True,
        )
    print(f"\n{this_machine()}; {torch.get_num_threads()} threads, fp32, eval mode, batch 1; GFLOPs = 2 x "
          "multiply-accumulates.")


if __name__ == "__main__":
    main()
