"""Sliding-window inference at Cityscapes scale: time and peak memory of ``slide_labels`` (the image's logits never
held; one window a call and four) against one window at a time with the whole image's logits held, as
mmsegmentation's ``slide_inference`` does; on 1024x2048 (Cityscapes) and 2048x4096 images, with mmsegmentation's
Cityscapes windows (769 crop, stride 513).

    python -m atrous.bench.slide '{"function": "labels", "window_batch": 1, "height": 1024, "width": 2048}'
    (one child run: prints its peak memory)
"""

from __future__ import annotations

import json
import sys

import torch

from ..build import build_model
from ..inference import slide_labels, slide_logits, slide_windows
from ..runtime import prepare_inference
from .timing import ab_medians, peak_rss_mib, run_child

CROP, STRIDE, CLASSES = 769, 513, 19
SIZES = ((1024, 2048), (2048, 4096))
WINDOW_BATCH = 4  # the default on a GPU (atrous.inference.WINDOW_BATCH)
# name -> (function, window batch): what each scheme runs.
SCHEMES = {
    f"atrous slide_labels, {WINDOW_BATCH} windows a call (GPU default)": ("labels", WINDOW_BATCH),
    "atrous slide_labels, 1 window a call (CPU default)": ("labels", 1),
    "1 window a call, whole image's logits held (mmsegmentation)": ("logits", 1),
}
MODEL = "DeepLabV3+-ResNet18 OS16"


def _model():
    """The network behind ``auto`` (ONNX Runtime on the CPU), random weights (time and memory do not depend on them)."""
    torch.manual_seed(0)
    model = build_model("deeplabv3plus", backbone="resnet18", num_classes=CLASSES, pretrained_backbone=None)
    return prepare_inference(model.eval(), "auto", device=torch.device("cpu"))


def _run(model, images: torch.Tensor, function: str, window_batch: int) -> torch.Tensor:
    if function == "labels":
        return slide_labels(model, images, crop=CROP, stride=STRIDE, window_batch=window_batch)
    return slide_logits(model, images, crop=CROP, stride=STRIDE, window_batch=window_batch).argmax(1)


def _keeping(outputs: dict, name: str, model, images, function: str, window_batch: int):
    """A call of one scheme that leaves its labels in ``outputs[name]``."""

    def call():
        outputs[name] = _run(model, images, function, window_batch)

    return call


def _image(height: int, width: int) -> torch.Tensor:
    return torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(0))


def compare_sliding_window(*, rounds: int = 1) -> list[dict]:
    """Per image size and scheme: windows, median seconds (schemes alternating), seconds per window, whether its
    labels equal the first scheme's, and the peak RSS a fresh process reaches running it once."""
    model = _model()
    _run(model, _image(CROP, CROP + 3 * STRIDE), "labels", WINDOW_BATCH)  # session start, first calls at both batches
    _run(model, _image(CROP, CROP), "labels", 1)
    rows = []
    for height, width in SIZES:
        images = _image(height, width)
        labels: dict[str, torch.Tensor] = {}  # each scheme's last labels, kept by the timed calls
        seconds = ab_medians({name: _keeping(labels, name, model, images, *scheme) for name, scheme in SCHEMES.items()},
                             rounds=rounds, warmup=0)  # fmt: skip
        first = labels[next(iter(SCHEMES))]
        windows = len(slide_windows(height, width, crop=CROP, stride=STRIDE))
        for name, (function, window_batch) in SCHEMES.items():
            memory = run_child("atrous.bench.slide", {"function": function, "window_batch": window_batch,
                                                      "height": height, "width": width})  # fmt: skip
            rows.append({
                "size": f"{height}x{width}", "scheme": name, "windows": windows, "seconds": seconds[name],
                "seconds_per_window": seconds[name] / windows, "same_labels": bool(torch.equal(labels[name], first)),
                "peak_mib": memory["peak_mib"], "before_mib": memory["before_mib"],
            })  # fmt: skip
    return rows


def _child(task: dict) -> dict:
    model = _model()
    images = _image(task["height"], task["width"])
    _run(model, _image(CROP, CROP), "labels", 1)  # the session's own start-up peak, before the measure (a scheme's
    # larger window batch counts as its own memory)
    before = peak_rss_mib()
    _run(model, images, task["function"], task["window_batch"])
    return {"peak_mib": peak_rss_mib(), "before_mib": before}


if __name__ == "__main__":
    print(json.dumps(_child(json.loads(sys.argv[1]))))
