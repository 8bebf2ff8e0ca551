"""Which GPU inference path is fastest, and does ``torch.backends.cudnn.benchmark`` pay? DeepLabV3-R101 OS16 at
513x513 in fp16 (the bench's GPU model), batch 1 and 8: torchvision converted by hand, atrous's fp16 runtime
without CUDA graphs, and with them (its default on a GPU); then the bench's training step (atrous against
torchvision) with cuDNN's autotuner off and on. Side by side in one process, medians of alternating rounds:

    python benchmarks/gpu_paths.py
"""

from __future__ import annotations

import torch

from atrous.bench.gpu import compare_training, model_pair_on, synchronized, torchvision_in_half
from atrous.bench.timing import ab_medians
from atrous.runtime import prepare_inference


def inference_paths(torchvision, graphed, device: torch.device, batch: int) -> dict[str, float]:
    """Milliseconds per forward of each path on one batch of random 513x513 images."""
    images = torch.randn(batch, 3, 513, 513, device=device)
    paths = {
        "torchvision fp16": lambda: torchvision(images),
        "atrous fp16, no CUDA graph": lambda: graphed._logits.forward(images).float(),
        "atrous fp16 (CUDA graphs)": lambda: graphed(images).logits,
    }
    seconds = ab_medians({name: synchronized(run, device) for name, run in paths.items()}, rounds=7, warmup=3)
    return {name: 1000 * value for name, value in seconds.items()}


def main() -> None:
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU")
    device = torch.device("cuda")
    print(f"GPU {torch.cuda.get_device_name()}, torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}")
    theirs, ours = model_pair_on(101, device)  # one set of weights, built once for both batch sizes
    torchvision, graphed = torchvision_in_half(theirs, torch.float16), prepare_inference(ours, "fp16", device=device)
    for batch in (1, 8):
        ms = inference_paths(torchvision, graphed, device, batch)
        print(f"fp16 inference, batch {batch}: " + ", ".join(f"{name} {value:.2f} ms" for name, value in ms.items()))
    for flag in (False, True):
        torch.backends.cudnn.benchmark = flag
        step = compare_training(device)
        print(f"training step, cudnn.benchmark={flag}: " + ", ".join(
            f"{name} {seconds * 1000:.1f} ms" for name, seconds in step["seconds"].items()))


if __name__ == "__main__":
    main()
