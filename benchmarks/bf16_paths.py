"""bf16 paths on this CPU: atrous's atrous convolutions as matrix products against oneDNN's convolutions, for
inference (DeepLabV3-ResNet50 OS16, 513x513, batch 1, against the fp32 ONNX Runtime path) and for a training step
(train.amp=bf16 against fp32, 321x321, batch 2), each pair alternating in one process.

    python benchmarks/bf16_paths.py
    ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 python benchmarks/bf16_paths.py   # oneDNN without AMX: AMD Zen 4's ISA

atrous picks the matrix products only where the CPU has AMX (``atrous.cpu``); this script runs both either way.
"""

from __future__ import annotations

import copy
import os
from unittest import mock

import torch

from atrous import cpu
from atrous.bench.inference import benchmark_image
from atrous.bench.machine import this_machine
from atrous.bench.models import model_pair
from atrous.bench.timing import ab_medians
from atrous.bench.training import engine_stepper, random_batch
from atrous.models.normalization import IMAGENET_RGB
from atrous.runtime import prepare_inference

PATHS = {"matrix products": True, "oneDNN convolutions": False}


def _on_path(matmuls: bool, call):
    """``call`` with ``AtrousConv2d``'s bf16 path forced: matrix products or oneDNN's convolutions."""

    def run():
        with mock.patch.object(cpu, "fast_reduced_precision_matmuls", lambda dtype: matmuls):
            return call()

    return run


def main() -> None:
    print(f"{this_machine()}; ONEDNN_MAX_CPU_ISA={os.environ.get('ONEDNN_MAX_CPU_ISA', 'unset')}: AMX for oneDNN "
          f"{cpu.amx_bf16()}, native bf16 {cpu.native_bf16()}; atrous chooses "
          f"{'matrix products' if cpu.fast_reduced_precision_matmuls(torch.bfloat16) else 'oneDNN convolutions'}")
    images = IMAGENET_RGB(benchmark_image())
    _, model = model_pair(16, torch.cat([images, images.flip(-1)]))
    fp32 = prepare_inference(copy.deepcopy(model), "onnxruntime", device=torch.device("cpu"))
    bf16 = prepare_inference(copy.deepcopy(model), "bf16", device=torch.device("cpu"))
    candidates = {"fp32 onnxruntime": lambda: fp32(images)}
    candidates |= {f"bf16, {name}": _on_path(matmuls, lambda: bf16(images)) for name, matmuls in PATHS.items()}
    seconds = ab_medians(candidates, rounds=5)
    print("inference, DeepLabV3-R50 OS16, 513x513, batch 1:")
    for name, value in seconds.items():
        print(f"  {name}: {value:.3f} s ({seconds['fp32 onnxruntime'] / value:.2f}x fp32 onnxruntime)")

    crop_images, masks = random_batch(321)
    model = model.train().to(memory_format=torch.channels_last)
    steps = {"fp32": engine_stepper(copy.deepcopy(model), crop_images, masks)[0]}
    for name, matmuls in PATHS.items():
        steps[f"bf16, {name}"] = _on_path(matmuls, engine_stepper(copy.deepcopy(model), crop_images, masks, "bf16")[0])
    seconds = ab_medians(steps, rounds=3)
    print("training step, DeepLabV3-R50 OS16, 321x321, batch 2, SGD:")
    for name, value in seconds.items():
        print(f"  {name}: {value:.2f} s ({seconds['fp32'] / value:.2f}x fp32)")


if __name__ == "__main__":
    main()
