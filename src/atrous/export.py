"""Export to ONNX or TorchScript with dynamic batch, height and width, and the parity check against eager PyTorch.

An exported graph takes what a deployment has: RGB images with values 0..255, (N, 3, H, W) uint8, and applies the
model's own normalisation inside (ImageNet mean/std, or DeepLab-v2's Caffe BGR mean), so no deployment has to
re-implement it. ``normalized_input=True`` exports the bare network on normalised float32 images instead (the
graphs atrous's own ONNX Runtime path runs).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from .errors import ConfigError, MissingDependencyError
from .models.segmenter import Segmenter
from .paths import refuse_overwrite

PARITY_SIZES = ((513, 513), (321, 479), (257, 385))  # one odd pair, as the check promises
FORMATS = ("onnx", "torchscript")


class ExportedGraph(torch.nn.Module):
    """What an export holds: images (N, 3, H, W) -> logits (N, num_classes, H, W) float32.

    normalized_input=False: uint8 RGB 0..255 in, normalised here as ``model.normalization`` says.
    normalized_input=True: float32 images already normalised.
    """

    def __init__(self, model: Segmenter, *, normalized_input: bool = False):
        super().__init__()
        self.model = model
        self.normalized_input = normalized_input
        norm = model.normalization
        self.flip_channels = norm.channel_order == "BGR"
        self.register_buffer("scale", torch.tensor(norm.scale).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", torch.tensor(norm.shift).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if not self.normalized_input:
            images = images.float()
            if self.flip_channels:
                images = images.flip(1)
            images = images * self.scale + self.shift
        return self.model(images).logits


def example_images(size: tuple[int, int], *, normalized_input: bool, generator: torch.Generator) -> torch.Tensor:
    """A random (1, 3, H, W) batch of what the graph takes: uint8 0..255, or normalised float32."""
    if normalized_input:
        return torch.randn(1, 3, *size, generator=generator)
    return torch.randint(0, 256, (1, 3, *size), generator=generator, dtype=torch.uint8)


def export_model(
    model: Segmenter,
    path: str | Path,
    *,
    format: str,
    normalized_input: bool = False,
    example_size: int = 129,
    protected: Mapping[str | Path, str] | None = None,
) -> Path:
    """Write ``model`` (in eval mode) as ONNX (opset 17) or TorchScript; batch, height and width stay dynamic.

    protected: files ``path`` must not be (path -> what it is, e.g. ``{"model.pt": "the weights file"}``):
    ``ConfigError`` before any work if it is one of them. The file appears whole or not at all (written beside
    ``path`` and renamed), so a failed export never leaves a broken file where a good one was.
    """
    if format not in FORMATS:
        raise ConfigError(f"unknown export format {format!r}; choose from {list(FORMATS)}")
    path = Path(path)
    refuse_overwrite([path], protected or {}, hint="choose another --out")
    path.parent.mkdir(parents=True, exist_ok=True)
    graph = ExportedGraph(model, normalized_input=normalized_input).eval()
    example = example_images((example_size, example_size), normalized_input=normalized_input,
                             generator=torch.Generator().manual_seed(0))  # fmt: skip
    # Named rather than mkstemp'd: the export is created with the user's usual permissions, not mkstemp's 0600.
    temporary = str(path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.partial")
    try:
        if format == "onnx":
            dynamic = {0: "batch", 2: "height", 3: "width"}
            torch.onnx.export(
                graph, (example,), temporary, input_names=["images"], output_names=["logits"],
                dynamic_axes={"images": dynamic, "logits": dynamic}, opset_version=17, dynamo=False,
            )  # fmt: skip
        else:
            with torch.no_grad():
                torch.jit.trace(graph, example, check_trace=False).save(temporary)
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)
    return path


def onnxruntime_logits(path: str | Path):
    """An ONNX Runtime CPU session on an exported file, as images (N, 3, H, W) -> logits tensor. The images are
    given to the graph in the dtype it declares (uint8 or float32)."""
    try:
        import onnxruntime
    except ImportError as error:
        raise MissingDependencyError("running an exported model needs ONNX Runtime: pip install onnxruntime") from error
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    dtype = torch.uint8 if session.get_inputs()[0].type == "tensor(uint8)" else torch.float32

    def logits(images: torch.Tensor) -> torch.Tensor:
        array = images.detach().cpu().to(dtype).contiguous().numpy()
        return torch.from_numpy(session.run(None, {"images": array})[0])

    return logits


# Relative to the largest logit (at least 1): runtimes sum in other orders, and the error grows with depth (measured:
# 1.9e-4 on a random-weight DeepLab-v2 ResNet-101, whose Caffe input is not divided by a std). A wrong export (say
# the normalisation) misses by O(1).
PARITY_TOLERANCE = 1e-3


def parity(
    model: Segmenter, path: str | Path, *, format: str, normalized_input: bool = False, sizes=PARITY_SIZES
) -> list[tuple[tuple[int, int], float, float]]:
    """(size, max |exported - eager| logits difference, max |eager logit|) on random images of each size (ONNX
    through ONNX Runtime). Parity holds when every difference is within ``PARITY_TOLERANCE`` x max(1, the logit)."""
    graph = ExportedGraph(model, normalized_input=normalized_input).eval()
    run = onnxruntime_logits(path) if format == "onnx" else torch.jit.load(str(path))
    results = []
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for size in sizes:
            images = example_images(size, normalized_input=normalized_input, generator=generator)
            eager = graph(images)
            difference = (run(images) - eager).abs().max().item()
            results.append((tuple(size), float(np.float32(difference)), eager.abs().max().item()))
    return results
