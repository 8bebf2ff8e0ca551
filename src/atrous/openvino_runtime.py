"""OpenVINO, Intel's CPU runtime, on atrous's ONNX export: the same graph ONNX Runtime runs (normalised float32 images
in, logits out, height and width dynamic), compiled by OpenVINO's CPU plugin at an explicit precision: ``f32`` (what
eager computes: OpenVINO's own default on a CPU with AMX is bf16, so it is never left to choose) or ``bf16``; or
quantised to int8 by NNCF (``quantize_openvino``) on calibration images of the model's data, its other layers at
either precision. Compiled blobs are kept in the atrous cache (OpenVINO's ``CACHE_DIR``), keyed by OpenVINO itself on
the graph, the precision and the CPU. OpenVINO (and NNCF for int8) are an optional extra (``openvino``)."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import torch

from .errors import ConfigError, MissingDependencyError
from .install import extra_command

log = logging.getLogger(__name__)

PRECISIONS = ("f32", "bf16")


def _openvino():
    try:
        import openvino
    except ImportError:
        raise MissingDependencyError(f"the openvino runtimes need OpenVINO: {extra_command('openvino', 'openvino')}") \
            from None  # fmt: skip
    return openvino


def supports_bf16() -> bool:
    """Whether OpenVINO's CPU plugin computes bf16 natively here (AVX512_BF16 or AMX); it emulates it otherwise."""
    return "BF16" in _openvino().Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def quantize_openvino(onnx_path: str | Path, out_path: str | Path, calibration: torch.Tensor) -> Path:
    """Write ``onnx_path``'s network quantised to int8 by NNCF (per-channel weights, activation ranges of
    ``calibration``: normalised images, one per calibration step) as OpenVINO IR at ``out_path`` (.xml, with its
    .bin beside), whole (``_save_whole``)."""
    openvino = _openvino()
    try:
        import nncf
    except ImportError:
        raise MissingDependencyError(f"the openvino_int8 runtime needs NNCF: {extra_command('openvino', 'nncf')}") \
            from None  # fmt: skip
    network = openvino.Core().read_model(str(onnx_path))
    samples = [calibration[i : i + 1].detach().cpu().float().numpy() for i in range(len(calibration))]
    # Concatenations stay in float: OpenVINO gives a Concat's inputs one shared int8 scale, and the ASPP branches and
    # the decoder's two inputs have ranges far apart (measured on a trained DeepLabV3+ ResNet-18: 91% of the pixels
    # as the f32 graph with them quantised, 99.5% without; ONNX Runtime's int8: 99.7%).
    quantized = nncf.quantize(network, nncf.Dataset(samples), subset_size=len(samples),
                              preset=nncf.QuantizationPreset.MIXED,
                              ignored_scope=nncf.IgnoredScope(types=["Concat"], validate=False))  # fmt: skip
    # save_model's default: float weights NNCF left unquantised are stored as fp16 (as before this helper was shared).
    return _save_whole(quantized, Path(out_path), compress_to_fp16=True)


def write_openvino(onnx_path: str | Path, path: str | Path, metadata: dict[str, str]) -> Path:
    """The ONNX file at ``onnx_path`` as OpenVINO IR at ``path`` (.xml; the .bin beside), f32 weights, carrying
    ``metadata`` in its ``rt_info`` under "atrous"; written whole (``_save_whole``)."""
    openvino = _openvino()
    network = openvino.convert_model(str(onnx_path))
    for key, value in metadata.items():
        network.set_rt_info(value, ["atrous", key])
    return _save_whole(network, Path(path), compress_to_fp16=False)


def _save_whole(network, path: Path, *, compress_to_fp16: bool) -> Path:
    """``openvino.save_model`` into a temporary folder beside ``path``, then both files moved, the .xml last: an .xml
    there is whole, and a failed save leaves what was there before."""
    with tempfile.TemporaryDirectory(prefix=".atrous-openvino-", dir=path.parent) as folder:
        written = Path(folder) / path.name
        _openvino().save_model(network, str(written), compress_to_fp16=compress_to_fp16)
        os.replace(written.with_suffix(".bin"), path.with_suffix(".bin"))
        os.replace(written, path)
    return path


def read_metadata(path: str | Path) -> dict[str, str]:
    """The ``export_metadata`` an OpenVINO IR written by ``write_openvino`` carries."""
    info = _openvino().Core().read_model(str(path)).get_rt_info()
    if "atrous" not in info:
        return {}
    entries = info["atrous"]  # a dict of OVAny (an OVAny holding one in some versions)
    entries = entries.astype(dict) if hasattr(entries, "astype") else entries
    return {key: value.astype(str) if hasattr(value, "astype") else str(value) for key, value in entries.items()}


def openvino_logits(onnx_path: str | Path, *, precision: str = "f32", cache_dir: str | Path | None = None):
    """An OpenVINO CPU compiled model of the ONNX file (or OpenVINO IR .xml) at ``onnx_path``, as images (N, 3, H, W) -> logits tensor, at
    ``precision`` ("f32" or "bf16"; bf16 refused on a CPU without native bf16), with ``torch.get_num_threads()``
    threads. ``cache_dir``: where OpenVINO keeps compiled blobs (none kept when None)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown OpenVINO precision {precision!r}; choose from {list(PRECISIONS)}")
    openvino = _openvino()
    core = openvino.Core()
    if precision == "bf16" and not supports_bf16():
        raise ConfigError("openvino_bf16: this CPU has no native bf16 (AVX512_BF16 or AMX), where OpenVINO would "
                          "emulate it slower than f32: use --runtime openvino")  # fmt: skip
    if cache_dir is not None:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        core.set_property({"CACHE_DIR": str(cache_dir)})
    config = {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": torch.get_num_threads(),
              "PERFORMANCE_HINT": "LATENCY"}  # fmt: skip
    compiled = core.compile_model(core.read_model(str(onnx_path)), "CPU", config)
    request = compiled.create_infer_request()
    output = compiled.output(0)
    dtype = torch.uint8 if compiled.input(0).get_element_type() == openvino.Type.u8 else torch.float32

    def logits(images: torch.Tensor) -> torch.Tensor:
        array = images.detach().cpu().to(dtype).contiguous().numpy()
        return torch.from_numpy(request.infer({0: array})[output].copy())

    return logits
