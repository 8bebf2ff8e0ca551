"""Export to ONNX or TorchScript with dynamic height/width, and the parity check against eager PyTorch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .models.segmenter import Segmenter

PARITY_SIZES = ((513, 513), (321, 479), (257, 385))  # one odd pair, as the check promises


class LogitsOnly(torch.nn.Module):
    """The exported graph: normalised images (N, 3, H, W) -> logits (N, C, H, W)."""

    def __init__(self, model: Segmenter):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images).logits


def export_model(model: Segmenter, path: str | Path, *, format: str, example_size: int = 129) -> Path:
    """Write ``model`` (in eval mode) as ONNX (opset 17) or TorchScript; batch, height and width stay dynamic."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = LogitsOnly(model).eval()
    example = torch.randn(1, 3, example_size, example_size)
    if format == "onnx":
        dynamic = {0: "batch", 2: "height", 3: "width"}
        torch.onnx.export(
            wrapper, (example,), str(path), input_names=["images"], output_names=["logits"],
            dynamic_axes={"images": dynamic, "logits": dynamic}, opset_version=17, dynamo=False,
        )  # fmt: skip
    elif format == "torchscript":
        with torch.no_grad():
            torch.jit.trace(wrapper, example, check_trace=False).save(str(path))
    else:
        raise ValueError(f"unknown export format {format!r}; choose from ['onnx', 'torchscript']")
    return path


def onnxruntime_logits(path: str | Path):
    """An ONNX Runtime CPU session on an exported file, as images (N, 3, H, W) float32 -> logits tensor."""
    try:
        import onnxruntime
    except ImportError as error:
        raise ImportError("running an exported model needs ONNX Runtime: pip install onnxruntime") from error
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def logits(images: torch.Tensor) -> torch.Tensor:
        array = images.detach().cpu().float().contiguous().numpy()
        return torch.from_numpy(session.run(None, {"images": array})[0])

    return logits


def parity(model: Segmenter, path: str | Path, *, format: str, sizes=PARITY_SIZES) -> list[tuple[tuple[int, int], float]]:
    """Max |exported - eager| logits difference on random images of each size (ONNX through ONNX Runtime)."""
    wrapper = LogitsOnly(model).eval()
    run = onnxruntime_logits(path) if format == "onnx" else torch.jit.load(str(path))
    results = []
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for size in sizes:
            images = torch.randn(1, 3, *size, generator=generator)
            difference = (run(images) - wrapper(images)).abs().max().item()
            results.append((tuple(size), float(np.float32(difference))))
    return results
