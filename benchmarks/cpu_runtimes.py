"""Every CPU runtime side by side on one network: DeepLabV3-ResNet50 (random weights, BatchNorm calibrated on a
synthetic scene), 513x513, batch 1, torch's thread count everywhere, candidates alternating within each round,
medians of ``--rounds``. Speed only: a random network's logits are too close together for label agreement to mean
anything (the agreement of each reduced-precision path on a trained network is in tests/test_openvino.py,
tests/test_int8.py and tests/test_runtime.py).

    python benchmarks/cpu_runtimes.py [--output-stride 16] [--rounds 5]

The int8 paths calibrate on 8 crops of synthetic scenes (atrous's own default calibration set is 8 images too)."""

from __future__ import annotations

import argparse
import copy
import tempfile

import torch

from atrous import cpu
from atrous.bench.inference import benchmark_image
from atrous.bench.machine import this_machine
from atrous.bench.models import model_pair
from atrous.bench.timing import ab_medians
from atrous.models.normalization import IMAGENET_RGB
from atrous.runtime import prepare_inference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-stride", type=int, default=16, choices=[8, 16])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(f"{this_machine()}; native bf16 {cpu.native_bf16()}, AMX {cpu.amx_bf16()}, threads {torch.get_num_threads()}")
    images = IMAGENET_RGB(benchmark_image())
    torchvision_model, model = model_pair(args.output_stride, torch.cat([images, images.flip(-1)]))
    calibration = torch.cat([IMAGENET_RGB(benchmark_image(257 + 16 * i)[..., :257, :257]) for i in range(8)])
    runtimes = ["onnxruntime", "openvino", "bf16", "openvino_bf16", "int8", "openvino_int8"]
    with tempfile.TemporaryDirectory() as cache:
        prepared = {name: prepare_inference(copy.deepcopy(model), name, device=torch.device("cpu"), cache_dir=cache,
                                            calibration=calibration) for name in runtimes}  # fmt: skip
        candidates = {"torchvision eager fp32": lambda: torchvision_model(images)}
        candidates |= {name: (lambda run=run: run(images)) for name, run in prepared.items()}
        seconds = ab_medians(candidates, rounds=args.rounds)
    base = seconds["torchvision eager fp32"]
    print(f"\nDeepLabV3-R50 OS{args.output_stride}, 513x513, batch 1, medians of {args.rounds} alternating rounds:")
    print("| path | s | vs torchvision |")
    print("|---|---|---|")
    for name, value in seconds.items():
        print(f"| {name} | {value:.3f} | {base / value:.2f}x |")


if __name__ == "__main__":
    main()
