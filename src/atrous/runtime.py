"""Inference runtimes: the same model run eagerly, in channels_last, compiled, through ONNX Runtime, in bfloat16 or
float16 (a GPU's half precision), quantised to int8 through ONNX Runtime, or through OpenVINO in f32 or bf16.

``prepare_inference(model, runtime)`` returns an ``InferenceModel``: called like a ``Segmenter`` on normalised
images (N, 3, H, W) float32, it returns ``SegmentationOutput`` with float32 logits, so every inference mode
(whole image, sliding window, multi-scale + flip, CRF) runs on any runtime unchanged.

Measured on the development CPU (``atrous bench``, BENCHMARKS.md): ONNX Runtime and inductor with frozen weights
are the fastest fp32 paths, and ONNX Runtime keeps that speed at every image size from one export, where a
compiled graph recompiles for new sizes. ``auto`` therefore picks ONNX Runtime on the CPU and eager elsewhere.
On a GPU the eager, channels_last and half-precision runtimes replay CUDA graphs (``atrous.cuda_graphs``).
The exported file is cached (keyed by architecture, weights and library versions), so its cost is paid once; the
cache keeps the ``ONNX_CACHE_ENTRIES`` most recently used exports, replaces an entry ONNX Runtime cannot load, and
a cache folder that cannot be written costs an export per run, never the run (``cached_onnxruntime_logits``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from . import cpu, openvino_runtime, quantize
from .atomic import written_whole
from .cuda_graphs import CudaGraphed
from .errors import AtrousError, ConfigError
from .export import ExportedGraph, export_model, onnxruntime_logits
from .models.segmenter import SegmentationOutput, Segmenter
from .openvino_runtime import openvino_logits
from .version import __version__

log = logging.getLogger(__name__)

RUNTIMES = ("eager", "channels_last", "compile", "onnxruntime", "bf16", "fp16", "int8", "openvino", "openvino_bf16",
            "openvino_int8")  # fmt: skip
# ONNX Runtime's CPU provider and OpenVINO's CPU plugin: on a GPU machine too, device auto means the CPU.
CPU_RUNTIMES = ("onnxruntime", "int8", "openvino", "openvino_bf16", "openvino_int8")
OPENVINO_PRECISIONS = {"openvino": "f32", "openvino_bf16": "bf16"}
CALIBRATED_RUNTIMES = ("int8", "openvino_int8")  # quantised on calibration images of the model's data
FLOAT_RUNTIME_OF = {"int8": "onnxruntime", "openvino_int8": "openvino"}  # the fp32 graph each int8 one comes from
HALF_PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16}
# Exports kept in the cache, the most recently used (a ResNet-101 DeepLab's is about 64 MB: about 0.5 GB in all);
# the environment variable overrides it.
ONNX_CACHE_ENTRIES = 8
ONNX_CACHE_ENTRIES_VARIABLE = "ATROUS_ONNX_CACHE_ENTRIES"
# An unfinished export older than this belongs to a process that was killed: no export takes a day.
STALE_PARTIAL_SECONDS = 24 * 3600


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
    model: Segmenter, runtime: str = "auto", *, device: torch.device | None = None, cache_dir: str | Path | None = None,
    calibration: torch.Tensor | None = None,
) -> InferenceModel:  # fmt: skip
    """Put ``model`` (moved to ``device``, eval mode) behind ``runtime``: one of ``RUNTIMES`` or ``auto``.

    ``model`` itself is moved to ``device`` (and to channels_last for the runtimes that use it); its weights stay
    float32. ``onnxruntime`` and ``int8`` run on the CPU only; ``cache_dir`` (default ``$ATROUS_CACHE`` or
    ``~/.cache/atrous``) keeps their exported graphs. ``int8`` needs ``calibration``: normalised images of the model's
    own data (``atrous.quantize.calibration_batch``), whose activation ranges the quantised graph keeps.
    """
    device = device or next(model.parameters()).device
    runtime = default_runtime(device) if runtime == "auto" else runtime
    if runtime not in RUNTIMES:
        raise ConfigError(f"unknown runtime {runtime!r}; choose from {['auto', *RUNTIMES]}")
    if runtime in CPU_RUNTIMES and device.type != "cpu":  # refused before the model is moved
        raise ConfigError(f"the {runtime} runtime runs on the CPU (ONNX Runtime or OpenVINO); got device {device}")
    model = model.to(device).eval()
    if runtime == "eager":
        return InferenceModel(model, runtime, _on_device(lambda images: _no_grad(model)(images).logits, device))
    if runtime == "onnxruntime":
        return InferenceModel(model, runtime, cached_onnxruntime_logits(model, cache_dir))
    if runtime in OPENVINO_PRECISIONS:  # the cached ONNX export, compiled by OpenVINO (its blobs cached beside)
        folder = cache_directory(cache_dir) / "openvino"
        return InferenceModel(model, runtime, openvino_logits(cached_onnx(model, cache_dir), cache_dir=folder,
                                                              precision=OPENVINO_PRECISIONS[runtime]))  # fmt: skip
    if runtime in CALIBRATED_RUNTIMES and calibration is None:
        raise ConfigError(f"the {runtime} runtime needs calibration images of the model's data (atrous eval and predict "
                          "take them from the dataset or the inputs)")  # fmt: skip
    if runtime == "int8":
        return InferenceModel(model, runtime, onnxruntime_logits(cached_int8_onnx(model, calibration, cache_dir)))
    if runtime == "openvino_int8":  # NNCF's int8 of the cached export; the layers it leaves in float at f32
        folder = cache_directory(cache_dir) / "openvino"
        network = cached_openvino_int8(model, calibration, cache_dir)
        return InferenceModel(model, runtime, openvino_logits(network, cache_dir=folder))
    model = model.to(memory_format=torch.channels_last)
    if runtime == "channels_last":

        def logits(images):
            return _no_grad(model)(_channels_last(images)).logits

        return InferenceModel(model, runtime, _on_device(logits, device))
    if runtime in HALF_PRECISIONS:
        dtype = HALF_PRECISIONS[runtime]
        cpu.warn_if_slow_on_this_cpu(device, dtype, f"the {runtime} runtime", log)
        half = copy.deepcopy(model).to(dtype)  # the caller's model stays float32

        def half_logits(images):
            return _no_grad(half)(_channels_last(images).to(dtype)).logits

        return InferenceModel(half, runtime, _on_device(half_logits, device))
    # Freezing folds BatchNorm into the convolutions and pre-packs weights for oneDNN: it needs no_grad.
    compiled = torch.compile(ExportedGraph(model, normalized_input=True).eval(), options={"freezing": True})
    return InferenceModel(model, runtime, lambda images: _no_grad(compiled)(_channels_last(images)))


def _on_device(logits: Callable[[torch.Tensor], torch.Tensor], device: torch.device):
    """``logits`` as it runs best on ``device``: replayed as CUDA graphs on a GPU (the host's kernel launches, not
    the GPU, bound a DeepLab forward there), called as it is on the CPU."""
    if device.type != "cuda":
        return logits
    return CudaGraphed(logits)


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
    """Path of ``model`` exported to ONNX, exporting (atomically) only when this exact model has no file yet.

    Least recently used entries go: every use sets the file's access time (its modification time stays the time
    of the export), and each new export deletes the entries beyond the ``ONNX_CACHE_ENTRIES`` (or
    ``$ATROUS_ONNX_CACHE_ENTRIES``) most recently used, and unfinished exports of killed processes. A cache folder
    that cannot be written raises ``OSError`` (``cached_onnxruntime_logits`` then exports to a temporary folder).
    """
    model = _exportable(model)
    folder = cache_directory(cache_dir) / "onnx"
    path = folder / f"{model_fingerprint(model)}.onnx"
    if path.is_file():
        _mark_used(path)
        return path
    keep = _cache_entries()  # a bad setting fails before the export, not after
    folder.mkdir(parents=True, exist_ok=True)
    export_model(model, path, format="onnx", normalized_input=True)  # written beside, then renamed: never half an entry
    _evict(folder, keep=keep, current=path)
    return path


def cached_int8_onnx(model: Segmenter, calibration: torch.Tensor, cache_dir: str | Path | None = None) -> Path:
    """Path of ``model`` quantised to int8 (``atrous.quantize.quantize_onnx``) with activation ranges from
    ``calibration``, cached beside the fp32 export under the model's and the calibration images' fingerprints."""
    fp32 = cached_onnx(model, cache_dir)
    digest = _calibration_digest(calibration)
    path = fp32.with_name(f"{fp32.stem}-int8-{digest}.onnx")
    if path.is_file():
        _mark_used(path)
        return path
    with written_whole(path, suffix=".partial") as partial:  # a killed quantisation leaves a .partial the cache deletes
        quantize.quantize_onnx(fp32, partial, calibration)  # looked up per call: tests replace it
    log.info("quantised %s to int8 (%d calibration images): %s", fp32, len(calibration), path)  # the final name
    _evict(path.parent, keep=_cache_entries(), current=path)
    return path


def cached_openvino_int8(model: Segmenter, calibration: torch.Tensor, cache_dir: str | Path | None = None) -> Path:
    """Path of ``model``'s OpenVINO IR quantised to int8 by NNCF on ``calibration`` (``.xml``; its ``.bin`` beside),
    cached beside the fp32 export under the model's and the calibration images' fingerprints; an entry is whole when
    its ``.xml`` exists (``quantize_openvino`` moves it in last)."""
    fp32 = cached_onnx(model, cache_dir)
    digest = _calibration_digest(calibration)
    path = fp32.with_name(f"{fp32.stem}-openvino-int8-{digest}.xml")
    if path.is_file():
        _mark_used(path)
        return path
    openvino_runtime.quantize_openvino(fp32, path, calibration)  # written whole: the .xml last
    log.info("quantised %s to int8 with NNCF (%d calibration images): %s", fp32, len(calibration), path)
    return path


def _calibration_digest(calibration: torch.Tensor) -> str:
    """What names a quantised cache entry besides the model: the calibration images' bytes."""
    return hashlib.sha256(calibration.detach().cpu().float().contiguous().numpy().tobytes()).hexdigest()[:12]


def cached_onnxruntime_logits(model: Segmenter, cache_dir: str | Path | None = None):
    """An ONNX Runtime session on ``model``'s cached export (``cached_onnx``), as images -> logits tensor.

    No cache problem stops the run: an entry ONNX Runtime cannot load (a truncated or corrupted file) is deleted
    and exported again, once, with a warning; a cache folder that cannot be written (read-only, not ours, full) gets
    a warning, and the model is exported to a temporary folder that is deleted once the session holds the graph —
    the export is then paid on every run, and ONNX Runtime stays the runtime (its logits match eager's; a silent
    switch to eager would change the speed the user chose).
    """
    try:
        path = cached_onnx(model, cache_dir)
        try:
            return onnxruntime_logits(path)
        except Exception as error:  # ONNX Runtime's load errors (InvalidProtobuf, Fail, ...) share no narrower base
            if isinstance(error, AtrousError):  # onnxruntime missing: the install hint, not a re-export
                raise
            log.warning("%s: the cached ONNX export cannot be loaded (%s); exporting it again", path, error)
            path.unlink(missing_ok=True)
            return onnxruntime_logits(cached_onnx(model, cache_dir))
    except OSError as error:
        log.warning("the ONNX cache %s cannot be written (%s): exporting to a temporary folder for this run only; "
                    "set ATROUS_CACHE to a writable folder to export once", cache_directory(cache_dir) / "onnx",
                    error.strerror or error)  # fmt: skip
    return _temporary_onnxruntime_logits(model)


def _temporary_onnxruntime_logits(model: Segmenter):
    with tempfile.TemporaryDirectory(prefix="atrous-onnx-") as folder:
        path = export_model(_exportable(model), Path(folder) / "model.onnx", format="onnx", normalized_input=True)
        return onnxruntime_logits(path)  # the session has read the graph: the file may go


def _exportable(model: Segmenter) -> Segmenter:
    return model.cpu().float().to(memory_format=torch.contiguous_format)


def _cache_entries() -> int:
    text = os.environ.get(ONNX_CACHE_ENTRIES_VARIABLE, str(ONNX_CACHE_ENTRIES))
    try:
        entries = int(text)
    except ValueError:
        entries = 0
    if entries < 1:
        raise ConfigError(f"${ONNX_CACHE_ENTRIES_VARIABLE} must be a whole number >= 1 (exports kept), got {text!r}")
    return entries


def _mark_used(path: Path) -> None:
    """Set the access time, which ``_evict`` orders by; the modification time keeps saying when it was exported."""
    try:
        os.utime(path, ns=(time.time_ns(), path.stat().st_mtime_ns))
    except OSError:  # a shared cache of someone else's files: using them is fine, only their order goes stale
        pass


def _evict(folder: Path, *, keep: int, current: Path) -> None:
    """Delete all but the ``keep`` most recently used exports (never ``current``) and stale unfinished exports."""
    entries = sorted((path for path in folder.glob("*.onnx") if path != current), key=lambda p: _times(p)[0])
    now = time.time()
    stale = [path for path in folder.glob("*.partial") if now - _times(path)[1] > STALE_PARTIAL_SECONDS]
    for path in entries[: max(len(entries) - (keep - 1), 0)] + stale:
        try:
            path.unlink(missing_ok=True)
        except OSError:  # another user's file in a shared cache: not ours to delete
            continue
        log.debug("deleted %s from the ONNX cache", path)


def _times(path: Path) -> tuple[float, float]:
    """(last use, last modification); an entry another process deleted meanwhile counts as never used."""
    try:
        status = path.stat()
    except FileNotFoundError:
        return 0.0, 0.0
    return status.st_atime, status.st_mtime
