"""Compare atrous with Google's own TensorFlow DeepLab forward (issue 30's acceptance): for each folder that
tools/google_deeplab_reference.py wrote (a TensorFlow checkpoint with random weights and randomised BatchNorm, and
the logits Google's research/deeplab computed from it), load the checkpoint with ``atrous.from_pretrained``, run the
same images and report the largest difference relative to the largest logit, and whether the argmax agrees. A
negative control permutes one BatchNorm's statistics and must miss.

Runs in the project's environment (no TensorFlow):
    python tools/compare_google_deeplab.py /work/refs/out/*
Each folder's name says its settings; the reference script's --variant, --output-stride, --size and --crop made it.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import torch

import atrous

# Reference variant -> what atrous cannot read from a checkpoint (the rest it reads from the keys and shapes).
OVERRIDES = {"resnet_v1_101_beta": {"multi_grid": (1, 2, 4)}}
NO_RATES = ("mobilenet_v2", "mobilenet_v2_dm05", "mobilenet_v2_decoder", "xception_71_dpc", "mobilenet_v3_large_seg",
            "mobilenet_v3_small_seg", "mobilenet_edgetpu", "mobilenet_edgetpu_slim")
TOLERANCE = 1e-4  # of the largest logit


def atrous_logits(model, images: np.ndarray) -> np.ndarray:
    """NHWC uint8-range images -> NHWC logits at the image's size (Google's layout)."""
    batch = torch.from_numpy(images).permute(0, 3, 1, 2)
    with torch.no_grad():
        return model(model.normalization(batch)).logits.permute(0, 2, 3, 1).numpy()


def compare(folder: Path, *, variant: str, pad_to: tuple[int, int] | None) -> tuple[float, bool, float]:
    """(largest difference / largest logit, argmax identical, the negative control's relative difference)."""
    reference = np.load(folder / "reference.npz")
    images, expected = reference["images"], reference["upsampled"]
    fields = {"output_stride": int(reference["output_stride"]), "pad_to": pad_to, **OVERRIDES.get(variant, {})}
    if variant not in NO_RATES:
        fields["atrous_rates"] = tuple(rate * 16 // fields["output_stride"] for rate in (6, 12, 18))
    model = atrous.from_pretrained(str(folder / "model.ckpt.index"), **fields)
    ours = atrous_logits(model, images)
    scale = np.abs(expected).max()
    difference = float(np.abs(ours - expected).max() / scale)
    same_argmax = bool((ours.argmax(-1) == expected.argmax(-1)).all())
    # Negative control: one BatchNorm's running statistics in another channel order must show.
    # The backbone's last: early ones can vanish in saturated ReLU6s.
    norm = [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)][-1]
    with torch.no_grad():
        order = torch.randperm(norm.running_mean.numel(), generator=torch.Generator().manual_seed(0))
        norm.running_mean.copy_(norm.running_mean[order])
        norm.running_var.copy_(norm.running_var[order])
    control = float(np.abs(atrous_logits(model, images) - expected).max() / scale)
    return difference, same_argmax, control


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("folders", type=Path, nargs="+")
    parser.add_argument("--variant", help="the reference's --variant (default: the folder name's first part)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the assumptions a bare checkpoint makes are the point here
    failed = False
    print("| Google variant | image | Google crop | atrous pad_to | OS | max abs diff / max logit | argmax identical | "
          "permuted BN (control) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for folder in args.folders:
        variant = args.variant or folder.name.split("__")[0]
        reference = np.load(folder / "reference.npz")
        size = tuple(reference["images"].shape[1:3])
        crop = tuple(int(v) for v in reference["crop"])
        # Google's crop as atrous's pad_to; where Google's crop is the image, also a pad_to smaller than the image
        # (Google's graph cannot take an image larger than its crop: atrous makes the image its own crop there).
        for pad_to in [crop] if crop != size else [None, (size[0] - 16, size[1] - 32)]:
            difference, same, control = compare(folder, variant=variant, pad_to=pad_to)
            ok = difference <= TOLERANCE and same and control > TOLERANCE
            failed |= not ok
            shown = "none" if pad_to is None else "x".join(map(str, pad_to))
            print(f"| {variant} | {size[0]}x{size[1]} | {crop[0]}x{crop[1]} | {shown} | {int(reference['output_stride'])} | "
                  f"{difference:.2e} | {'yes' if same else 'NO'} | {control:.2e}{'' if ok else '  FAIL'} |")  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
