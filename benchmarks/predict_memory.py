"""Peak memory and time of ``atrous predict`` on one large photo: the automatic sliding windows (the default above
``WHOLE_IMAGE_MAX_PIXELS``) against whole-image inference, each in a fresh process (peak RSS is VmHWM).

    python benchmarks/predict_memory.py [--size 6000x4000] [--backbone resnet50]

The model is DeepLabV3 at OS16 with 21 classes and random weights: memory and time do not depend on the values.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

CHILD = """
import json, sys, time
import torch
import atrous
from atrous.bench.timing import peak_rss_mib
from atrous.data.labels import voc_palette
from atrous.predict import predict_files

image, out, backbone, whole = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "whole"
torch.manual_seed(0)
model = atrous.build_model("deeplabv3", backbone=backbone, num_classes=21, output_stride=16).eval()
before, started = peak_rss_mib(), time.perf_counter()
predict_files(model, [image], out, palette=voc_palette(), progress=False,
              **({"whole_image_max_pixels": 10**10} if whole else {}))
print(json.dumps({"before": before, "peak": peak_rss_mib(), "seconds": time.perf_counter() - started}))
"""


def measure(image: Path, out: Path, backbone: str, mode: str) -> dict:
    completed = subprocess.run([sys.executable, "-c", CHILD, str(image), str(out / mode), backbone, mode],
                               capture_output=True, text=True, check=False)  # fmt: skip
    if completed.returncode != 0:
        return {"error": completed.stderr.strip().splitlines()[-1]}
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="6000x4000", help="WIDTHxHEIGHT of the photo")
    parser.add_argument("--backbone", default="resnet50")
    args = parser.parse_args()
    width, height = (int(side) for side in args.size.split("x"))
    with tempfile.TemporaryDirectory() as folder:
        image = Path(folder) / "photo.jpg"
        rows, cols = np.mgrid[0:height, 0:width]
        pixels = np.stack([cols * 255 // width, rows * 255 // height, (cols // 500 + rows // 500) % 2 * 200], -1)
        Image.fromarray(pixels.astype(np.uint8)).save(image, quality=85)
        del rows, cols, pixels
        print(f"DeepLabV3 {args.backbone} OS16, one {width}x{height} photo, atrous predict")
        print("| inference | peak RSS over the model (MiB) | peak RSS (MiB) | seconds |\n|---|---|---|---|")
        for mode, label in (("windows", "sliding windows (default)"), ("whole", "whole image")):
            result = measure(image, Path(folder), args.backbone, mode)
            if "error" in result:
                print(f"| {label} | failed: {result['error']} | | |")
                continue
            print(f"| {label} | {result['peak'] - result['before']:.0f} | {result['peak']:.0f} | "
                  f"{result['seconds']:.1f} |")  # fmt: skip


if __name__ == "__main__":
    main()
