"""Export to ONNX or TorchScript with dynamic batch, height and width, and the parity check against eager PyTorch.

An exported graph takes what a deployment has: RGB images with values 0..255, (N, 3, H, W) uint8, and applies the
model's own normalisation inside (ImageNet mean/std, or DeepLab-v2's Caffe BGR mean), so no deployment has to
re-implement it. ``normalized_input=True`` exports the bare network on normalised float32 images instead (the
graphs atrous's own ONNX Runtime path runs).

The file says what it takes and gives (``export_metadata``): ONNX ``metadata_props`` and axes named batch, height,
width and classes; a TorchScript file's extra file ``metadata.json``. A deployment that guesses the preprocessing
wrong gets plausible, wrong labels, so nothing about it is left to guess.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from .atomic import remove_dead_temporaries, written_whole
from .errors import ConfigError, MissingDependencyError
from .models.normalization import InputNormalization
from .models.segmenter import Segmenter
from .openvino_runtime import openvino_logits, read_metadata, write_openvino
from .paths import refuse_overwrite
from .version import __version__

PARITY_SIZES = ((513, 513), (321, 479), (257, 385))  # one odd pair, as the check promises
FORMATS = ("onnx", "torchscript", "openvino")  # openvino: IR, a .xml beside its .bin
# The names of the graph's axes, as ONNX shapes and ONNX Runtime show them.
INPUT_AXES = {0: "batch", 2: "height", 3: "width"}  # axis 1: the 3 colour channels
OUTPUT_AXES = {0: "batch", 1: "classes", 2: "height", 3: "width"}
TORCHSCRIPT_METADATA = "metadata.json"  # the extra file of a TorchScript export that holds its metadata


class UInt8Normalization(torch.nn.Module):
    """uint8 RGB images (N, 3, H, W), 0..255 -> float32 normalised as ``normalization`` says (channel order
    included): the front of every export that takes images as decoded."""

    def __init__(self, normalization: InputNormalization):
        super().__init__()
        self.flip_channels = normalization.channel_order == "BGR"
        self.register_buffer("scale", torch.tensor(normalization.scale).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", torch.tensor(normalization.shift).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        images = images.float()
        if self.flip_channels:
            images = images.flip(1)
        return images * self.scale + self.shift


class ExportedGraph(torch.nn.Module):
    """What an export holds: images (N, 3, H, W) -> logits (N, num_classes, H, W) float32.

    normalized_input=False: uint8 RGB 0..255 in, normalised here as ``model.normalization`` says.
    normalized_input=True: float32 images already normalised.
    """

    def __init__(self, model: Segmenter, *, normalized_input: bool = False):
        super().__init__()
        self.model = model
        self.normalize = None if normalized_input else UInt8Normalization(model.normalization)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.normalize is not None:
            images = self.normalize(images)
        return self.model(images).logits


def export_metadata(model: Segmenter, *, normalized_input: bool = False) -> dict[str, str]:
    """What a deployment needs to feed the exported graph and read its output, as strings (JSON where structured):
    input (what the graph takes, in words), input_dtype, input_layout, normalization (name, mean, std, channel_order,
    the units of mean and std, and who applies it), output, num_classes, class_names and palette (JSON; null when the
    weights file named none), model_spec (JSON; null for a hand-composed model) and atrous_version."""

    norm = model.normalization
    applied = "by the caller, before the graph" if normalized_input else "inside the graph"
    if normalized_input:
        takes = (f"images (batch, 3, height, width) float32, normalised: (x - mean) / std per channel, x the image's "
                 f"0..255 values in {norm.channel_order} order")  # fmt: skip
    else:
        takes = f"images (batch, 3, height, width) uint8, RGB 0..255 as decoded; the graph normalises them ({norm.name})"
    normalization = {"name": norm.name, "mean": [round(v, 6) for v in norm.mean], "std": [round(v, 6) for v in norm.std],
                     "channel_order": norm.channel_order, "units": "0..255", "applied": applied}  # fmt: skip
    palette = model.palette[: model.num_classes].tolist() if model.palette is not None else None
    return {
        "input": takes,
        "input_dtype": "float32" if normalized_input else "uint8",
        "input_layout": f"NCHW, {norm.channel_order if normalized_input else 'RGB'}",
        "normalization": json.dumps(normalization),
        "output": "logits (batch, classes, height, width) float32, pre-softmax, at the input's height and width; the "
        "label of a pixel is the argmax over classes",
        "num_classes": str(model.num_classes),
        "class_names": json.dumps(model.class_names),
        "palette": json.dumps(palette),
        "model_spec": json.dumps(model.spec.to_dict() if model.spec is not None else None),
        "atrous_version": __version__,
    }


def exported_metadata(path: str | Path) -> dict[str, str]:
    """The ``export_metadata`` an ONNX, TorchScript or OpenVINO IR file written by ``export_model`` holds."""
    if Path(path).suffix == ".xml":  # OpenVINO IR: the model's rt_info, under "atrous"
        return read_metadata(path)
    if zipfile.is_zipfile(path):  # TorchScript: a zip archive
        extra_files = {TORCHSCRIPT_METADATA: ""}
        torch.jit.load(str(path), map_location="cpu", _extra_files=extra_files)
        return json.loads(extra_files[TORCHSCRIPT_METADATA] or "{}")
    import onnx

    return {prop.key: prop.value for prop in onnx.load(str(path)).metadata_props}


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
    """Write ``model`` (in eval mode) as ONNX (opset 17), TorchScript or OpenVINO IR (``path`` a .xml; its weights in
    the .bin beside; converted from the ONNX export, f32 weights); batch, height and width stay dynamic. The file
    carries ``export_metadata`` (ONNX: ``metadata_props``; TorchScript: the extra file ``metadata.json``; OpenVINO:
    the model's ``rt_info`` under "atrous").

    protected: files ``path`` must not be (path -> what it is, e.g. ``{"model.pt": "the weights file"}``):
    ``ConfigError`` before any work if it is one of them. The file appears whole or not at all (written beside
    ``path`` and renamed), so a failed export never leaves a broken file where a good one was; what an export killed
    before left beside ``path`` (its hidden ``.partial``) is deleted first.
    """
    if format not in FORMATS:
        raise ConfigError(f"unknown export format {format!r}; choose from {list(FORMATS)}")
    path = Path(path)
    if format == "openvino":
        if path.suffix != ".xml":
            raise ConfigError(f"{path}: an OpenVINO export is a .xml file (its weights go in the .bin beside it)")
        refuse_overwrite([path, path.with_suffix(".bin")], protected or {}, hint="choose another --out")
        with tempfile.TemporaryDirectory(prefix="atrous-openvino-") as folder:
            onnx_path = export_model(model, Path(folder) / "model.onnx", format="onnx", normalized_input=normalized_input,
                                     example_size=example_size)  # fmt: skip
            return write_openvino(onnx_path, path, export_metadata(model, normalized_input=normalized_input))
    refuse_overwrite([path], protected or {}, hint="choose another --out")
    path.parent.mkdir(parents=True, exist_ok=True)
    graph = ExportedGraph(model, normalized_input=normalized_input).eval()
    example = example_images((example_size, example_size), normalized_input=normalized_input,
                             generator=torch.Generator().manual_seed(0))  # fmt: skip
    metadata = export_metadata(model, normalized_input=normalized_input)
    remove_dead_temporaries(path.parent, name=path.name)  # what an export killed before left there (tens of MB)
    with written_whole(path, suffix=".partial") as partial:
        temporary = str(partial)
        if format == "onnx":
            # The class axis is named too: the exporter would call it after the op that makes it (Resizelogits_dim_1).
            torch.onnx.export(
                graph, (example,), temporary, input_names=["images"], output_names=["logits"],
                dynamic_axes={"images": INPUT_AXES, "logits": OUTPUT_AXES}, opset_version=17, dynamo=False,
            )  # fmt: skip
            _set_onnx_metadata(temporary, metadata)
        else:
            with torch.no_grad():
                traced = torch.jit.trace(graph, example, check_trace=False)
            traced.save(temporary, _extra_files={TORCHSCRIPT_METADATA: json.dumps(metadata, indent=1)})
    return path


def _set_onnx_metadata(path: str, metadata: Mapping[str, str]) -> None:
    import onnx

    graph = onnx.load(path)
    onnx.helper.set_model_props(graph, dict(metadata))
    onnx.save(graph, path)


def with_uint8_input(network_path: str | Path, model: Segmenter, out_path: str | Path) -> Path:
    """Write the ONNX graph at ``network_path`` (one on normalised float32 ``images``, such as the int8 quantisation
    of a ``normalized_input`` export) with ``model``'s normalisation in front, at ``out_path``: the file then takes
    uint8 RGB images as ``export_model``'s default does, and its metadata says so. The network's nodes are not
    touched, so it gives the same logits as the network on ``model.normalization(images)``."""
    import onnx
    import onnx.compose

    network = onnx.load(str(network_path))
    opset = next(entry.version for entry in network.opset_import if entry.domain in ("", "ai.onnx"))
    with tempfile.TemporaryDirectory(prefix="atrous-normalize-") as folder:
        front_path = Path(folder) / "normalize.onnx"
        torch.onnx.export(
            UInt8Normalization(model.normalization).eval(), (torch.zeros(1, 3, 8, 8, dtype=torch.uint8),),
            str(front_path), input_names=["images"], output_names=["normalized"],
            dynamic_axes={"images": INPUT_AXES, "normalized": INPUT_AXES}, opset_version=opset, dynamo=False,
        )  # fmt: skip
        front = onnx.load(str(front_path))
    front.ir_version = network.ir_version  # merge_models asks for one IR version; the front's few ops have it
    merged = onnx.compose.merge_models(front, network, io_map=[("normalized", "images")])
    onnx.helper.set_model_props(merged, export_metadata(model, normalized_input=False))
    onnx.save(merged, str(out_path))
    return Path(out_path)


def write_int8_onnx(network_path: str | Path, model: Segmenter, out_path: str | Path, *,
                    normalized_input: bool = False) -> Path:  # fmt: skip
    """Write the int8 graph at ``network_path`` (``atrous.runtime.cached_int8_onnx``: the quantised network on
    normalised float32 images) as a file to deploy at ``out_path``: behind ``model``'s normalisation, taking uint8 RGB
    images as ``export_model``'s default does (``with_uint8_input``), or the network alone with
    ``normalized_input``. The file appears whole or not at all."""
    out_path = Path(out_path)
    remove_dead_temporaries(out_path.parent, name=out_path.name)
    with written_whole(out_path, suffix=".partial") as partial:  # never half a file where the user asked for one
        if normalized_input:
            shutil.copyfile(network_path, partial)
        else:
            with_uint8_input(network_path, model, partial)
    return out_path


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
    if format == "openvino":
        run = openvino_logits(path)
    else:
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
