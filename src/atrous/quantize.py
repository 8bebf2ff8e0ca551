"""int8 deployment: ONNX Runtime static quantisation of the exported graph.

QDQ format, int8 weights quantised per output channel, uint8 activations whose ranges are calibrated on images of
the model's own data (``calibration_photos``): ONNX Runtime then runs the convolutions with integer kernels (VNNI /
AMX int8 where the CPU has them). The quantised file is cached beside the fp32 export, keyed by the model and the
calibration images (``atrous.runtime.cached_int8_onnx``).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .data.io import read_image
from .errors import ConfigError, MissingDependencyError

# Images the activation ranges are measured on, and the side they are brought to (one batch shape). ONNX Runtime's
# min-max calibrator reduces every activation to its min and max inside the graph, so memory stays that of one
# forward pass.
CALIBRATION_IMAGES = 32
CALIBRATION_SIDE = 321


def calibration_photos(images: Sequence[np.ndarray], *, side: int = CALIBRATION_SIDE) -> torch.Tensor:
    """(N, 3, side, side) uint8 RGB: each (H, W, 3) uint8 RGB image resized (bilinear) so that its shorter side is
    ``side``, its centre cropped, and rounded back to 0..255: what a graph taking decoded images is calibrated on."""
    if not images:
        raise ConfigError("int8 calibration needs at least one image of the model's data")
    batch = []
    for image in images:
        tensor = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float()  # a copy: arrays may be read-only
        height, width = tensor.shape[-2:]
        scale = side / min(height, width)
        size = (max(side, round(height * scale)), max(side, round(width * scale)))
        tensor = F.interpolate(tensor, size=size, mode="bilinear", align_corners=False)
        top, left = (size[0] - side) // 2, (size[1] - side) // 2
        batch.append(tensor[..., top : top + side, left : left + side])
    return torch.cat(batch).round_().clamp_(0, 255).to(torch.uint8)


def calibration_batch(images: Sequence[np.ndarray], model, *, side: int = CALIBRATION_SIDE) -> torch.Tensor:
    """(N, 3, side, side) float32: ``calibration_photos`` normalised as ``model`` expects."""
    return model.normalization(calibration_photos(images, side=side))


def evenly_spaced(count: int, total: int) -> list[int]:
    """``count`` indices spread over ``range(total)`` (all of them when there are fewer)."""
    if total <= count:
        return list(range(total))
    return [round(i * (total - 1) / (count - 1)) if count > 1 else 0 for i in range(count)]


def calibration_images(dataset) -> list[np.ndarray]:
    """``CALIBRATION_IMAGES`` images of ``dataset``, evenly spread over it (all of a smaller one), as it returns them:
    (H, W, 3) uint8 RGB from an untransformed dataset. ``atrous eval`` and ``atrous export --int8`` give the training
    split of the model's data, whose activation ranges the quantised graph should keep."""
    return [dataset[index][0] for index in evenly_spaced(CALIBRATION_IMAGES, len(dataset))]


def calibration_files(paths: Sequence[str | Path]) -> list[np.ndarray]:
    """``CALIBRATION_IMAGES`` of the image files at ``paths``, evenly spread, read as (H, W, 3) uint8 RGB: the images
    a model is deployed on, where no dataset is at hand (``atrous predict --runtime int8``)."""
    return [read_image(paths[index]) for index in evenly_spaced(CALIBRATION_IMAGES, len(paths))]


def int8_agreement(
    int8: Callable[[torch.Tensor], object], fp32: Callable[[torch.Tensor], object], images: torch.Tensor, *,
    int8_images: torch.Tensor | None = None,
) -> float:  # fmt: skip
    """Fraction of the pixels of ``images`` (N, 3, H, W) given the same class (argmax of the logits) by ``int8`` as by
    ``fp32``: what quantisation changes in the predictions, where a logit difference would not say.

    ``int8`` and ``fp32`` map images to logits (N, C, H, W), as ``atrous.export.onnxruntime_logits`` does, or to an
    output that carries them (``.logits``), as ``atrous.runtime.prepare_inference``'s models do. ``fp32`` is given
    ``images``, ``int8`` ``int8_images`` when its graph takes them otherwise (uint8 photos where it normalises
    inside), else ``images``.
    """
    with torch.no_grad():
        expected = _logits(fp32(images)).argmax(1)
        predicted = _logits(int8(images if int8_images is None else int8_images)).argmax(1)
    if predicted.shape != expected.shape:
        raise ValueError(f"int8 and fp32 predictions differ in shape: {tuple(predicted.shape)} and "
                         f"{tuple(expected.shape)}")  # fmt: skip
    return (predicted == expected).double().mean().item()


def _logits(output) -> torch.Tensor:
    return getattr(output, "logits", output)


def quantize_onnx(fp32_path: str | Path, out_path: str | Path, calibration: torch.Tensor) -> Path:
    """Write ``fp32_path`` (an export taking normalised float32 ``images``) quantised to int8 at ``out_path``:
    QDQ, per-channel int8 weights, uint8 activations with min-max ranges over ``calibration`` (N, 3, H, W)."""
    try:
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as error:
        raise MissingDependencyError("int8 quantisation needs ONNX Runtime: pip install onnxruntime") from error

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.images = iter(calibration.split(1))

        def get_next(self):
            image = next(self.images, None)
            return None if image is None else {"images": image.contiguous().numpy()}

    out_path = Path(out_path)
    with tempfile.TemporaryDirectory(prefix="atrous-int8-") as folder:
        prepared = Path(folder) / "prepared.onnx"
        # Shape inference and graph optimisation first (BatchNorm folded into convs), as ONNX Runtime advises.
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=False)
        quantize_static(
            str(prepared), str(out_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            extra_options={"CalibTensorRangeSymmetric": False},
        )  # fmt: skip
    return out_path
