"""Inference runtimes: the same model run eagerly, in channels_last, compiled, through ONNX Runtime, or in bfloat16.

``prepare_inference(model, runtime)`` returns an ``InferenceModel``: called like a ``Segmenter`` on normalised
images (N, 3, H, W) float32, it returns ``SegmentationOutput`` with float32 logits, so every inference mode
(whole image, sliding window, multi-scale + flip, CRF) runs on any runtime unchanged.

Measured on the development CPU (``atrous bench``, BENCHMARKS.md): ONNX Runtime and inductor with frozen weights
are the fastest fp32 paths, and ONNX Runtime keeps that speed at every image size from one export, where a
compiled graph recompiles for new sizes. ``auto`` therefore picks ONNX Runtime on the CPU and eager elsewhere.
The exported file is cached (keyed by architecture, weights and library versions), so its cost is paid once.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from .errors import ConfigError
from .models.segmenter import SegmentationOutput, Segmenter

RUNTIMES = ("eager", "channels_last", "compile", "onnxruntime", "bf16")


class InferenceModel:
    """A ``Segmenter`` prepared for inference by one runtime; logits only (no aux head), float32."""

    def __init__(self, model: Segmenter, runtime: str, logits: Callable[[torch.Tensor], torch.Tensor]):
        self.model = model
        self.runtime = runtime
        self.num_classes = model.num_classes
        self.normalization = model.normalization
        self.class_names, self.palette = model.class_names, model.palette
        self._logits = logits
        # The head's logits before upsampling (max fusion over scales needs them): the eager runtime only.
        self.head_logits = _no_grad(model.head_logits) if runtime == "eager" else None

    def __call__(self, images: torch.Tensor) -> SegmentationOutput:
        """images: (N, 3, H, W) float32, normalised -> logits (N, num_classes, H, W) float32."""
        return SegmentationOutput(self._logits(images).float(), None)

    def __repr__(self) -> str:
        return f"InferenceModel(runtime={self.runtime!r}, model={type(self.model).__name__})"


def default_runtime(device: torch.device) -> str:
    return "onnxruntime" if device.type == "cpu" else "eager"


def prepare_inference(
    model: Segmenter, runtime: str = "auto", *, device: torch.device | None = None, cache_dir: str | Path | None = None
) -> InferenceModel:
    """Put ``model`` (moved to ``device``, eval mode) behind ``runtime``: one of ``RUNTIMES`` or ``auto``.

    ``model`` itself is moved to ``device`` (and to channels_last for the runtimes that use it); its weights stay
    float32. ``onnxruntime`` runs on the CPU only; ``cache_dir`` (default ``$ATROUS_CACHE`` or ``~/.cache/atrous``)
    keeps its exported graphs.
    """
    device = device or next(model.parameters()).device
    runtime = default_runtime(device) if runtime == "auto" else runtime
    if runtime not in RUNTIMES:
        raise ConfigError(f"unknown runtime {runtime!r}; choose from {['auto', *RUNTIMES]}")
    model = model.to(device).eval()
    if runtime == "eager":
        return InferenceModel(model, runtime, lambda images: _no_grad(model)(images).logits)
    if runtime == "onnxruntime":
        if device.type != "cpu":
            raise ConfigError(f"the onnxruntime runtime runs on the CPU; got device {device}")
        from .export import onnxruntime_logits

        return InferenceModel(model, runtime, onnxruntime_logits(cached_onnx(model, cache_dir)))
    model = model.to(memory_format=torch.channels_last)
    if runtime == "channels_last":
        return InferenceModel(model, runtime, lambda images: _no_grad(model)(_channels_last(images)).logits)
    if runtime == "bf16":
        model = copy.deepcopy(model).to(torch.bfloat16)  # the caller's model stays float32
        return InferenceModel(
            model, runtime, lambda images: _no_grad(model)(_channels_last(images).to(torch.bfloat16)).logits
        )
    from .export import ExportedGraph

    # Freezing folds BatchNorm into the convolutions and pre-packs weights for oneDNN: it needs no_grad.
    compiled = torch.compile(ExportedGraph(model, normalized_input=True).eval(), options={"freezing": True})
    return InferenceModel(model, runtime, lambda images: _no_grad(compiled)(_channels_last(images)))


def _no_grad(function):
    def run(images):
        with torch.no_grad():
            return function(images)

    return run


def _channels_last(images: torch.Tensor) -> torch.Tensor:
    return images.contiguous(memory_format=torch.channels_last)


# ------------------------------------------------------------------------------------------- ONNX Runtime


def cache_directory(cache_dir: str | Path | None = None) -> Path:
    return Path(cache_dir or os.environ.get("ATROUS_CACHE") or Path.home() / ".cache" / "atrous")


def model_fingerprint(model: Segmenter) -> str:
    """sha256 over architecture, every tensor in the state dict and the versions that shape an export."""
    import onnxruntime

    from . import __version__

    digest = hashlib.sha256()
    spec = model.spec.to_dict() if model.spec is not None else repr(model)  # a hand-composed Segmenter: its modules
    header = {"spec": spec, "graph": "normalized_input", "atrous": __version__, "torch": torch.__version__, "ort": onnxruntime.__version__}
    digest.update(json.dumps(header, sort_keys=True, default=str).encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:24]


def cached_onnx(model: Segmenter, cache_dir: str | Path | None = None) -> Path:
    """Path of ``model`` exported to ONNX, exporting (atomically) only when this exact model has no file yet."""
    from .export import export_model

    model = model.cpu().float().to(memory_format=torch.contiguous_format)
    path = cache_directory(cache_dir) / "onnx" / f"{model_fingerprint(model)}.onnx"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".onnx.partial")
        os.close(handle)
        try:
            export_model(model, temporary, format="onnx", normalized_input=True)
            os.replace(temporary, path)  # a concurrent or killed export never leaves a half-written cache entry
        finally:
            Path(temporary).unlink(missing_ok=True)
    return path
