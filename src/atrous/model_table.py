"""Model size and cost: parameters and FLOPs counted on the meta device (no memory, no compute)."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
import torchvision
from torch.utils.flop_counter import FlopCounterMode

from .atomic import write_text_whole
from .build import build_model
from .errors import DataError
from .models.layers import adopt_dilated_convs
from .models.spec import ModelSpec
from .progress import progress_bar
from .registry import BACKBONES, MODELS, build_backbone, build_network, list_backbones, list_models, make_spec
from .runtime import cache_directory

log = logging.getLogger(__name__)


def count_flops(size: int, spec: ModelSpec | None = None, /, **fields) -> tuple[int, int]:
    """(parameters, FLOPs) of ``build_model(spec, **fields)`` on one (1, 3, size, size) image, in eval mode.

    FLOPs = 2 x multiply-accumulates (torchvision's and mmseg's tables quote multiply-accumulates as "FLOPs").
    """
    with torch.device("meta"):
        model = build_model(spec, **fields).eval()
        images = torch.empty(1, 3, size, size)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(images)
    return sum(p.numel() for p in model.parameters()), counter.get_total_flops()


def _table_specs() -> list[tuple[str, str, int]]:
    """(architecture, backbone, output stride) of every row: the architecture's default stride, and 8 for V3/V3+;
    those the backbone supports."""
    specs = []
    for name in list_models():
        default_stride = MODELS[name].output_stride
        for backbone in list_backbones():
            strides = BACKBONES[backbone].output_strides  # HRNet has neither: its own 4; DRN-D-54 8 only
            wanted = sorted({default_stride, 8}.intersection(strides)) or strides[:1]
            specs += [(name, backbone, stride) for stride in wanted]
    return specs


def _code_fingerprint() -> str:
    """What the counts depend on: torch's and torchvision's versions and atrous's model code (the core's and the
    publishers')."""
    digest = hashlib.sha256(f"{torch.__version__} {torchvision.__version__}".encode())
    package = Path(__file__).parent
    for path in sorted([*(package / "models").rglob("*.py"), *(package / "publishers").rglob("*.py")]):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


class _Bodies:
    """Each backbone of the table built and run once per output stride: its parameters, FLOPs and features (on the
    meta device) serve every head counted on it (the backbone is most of a count's time)."""

    def __init__(self, size: int):
        self.size = size
        self.built: dict[tuple[str, int], tuple] = {}

    def get(self, backbone: str, output_stride: int) -> tuple:
        """(backbone module, its parameters, its FLOPs, its features), or a DataError for the size."""
        key = (backbone, output_stride)
        if key not in self.built:
            self.built.clear()  # one backbone at a time: the counts run backbone by backbone
            with torch.device("meta"):
                body = build_backbone(backbone, output_stride=output_stride).eval()
                adopt_dilated_convs(body)  # as build_network does: its dilated convs skip dead taps
                images = torch.empty(1, 3, self.size, self.size)
            counter = FlopCounterMode(display=False)
            with counter, torch.no_grad():
                features = body(images)
            self.built[key] = (body, sum(p.numel() for p in body.parameters()), counter.get_total_flops(), features)
        return self.built[key]


def _count_or_reason(name: str, backbone: str, output_stride: int, size: int, num_classes: int,
                     bodies: _Bodies | None = None) -> list[int] | str:  # fmt: skip
    """[parameters, FLOPs] of the model on one size x size image (as ``count_flops``: the backbone's once per
    ``bodies``, plus the head's on its features), or why it has no row."""
    bodies = bodies or _Bodies(size)
    try:
        body, body_params, body_flops, features = bodies.get(backbone, output_stride)
    except DataError as error:  # VainF's Xception needs at least 103 px at OS8: no row at smaller sizes
        return str(error)
    with torch.device("meta"):
        spec = make_spec(name=name, backbone=backbone, output_stride=output_stride, num_classes=num_classes)
        model = build_network(spec, body=body).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.head(features)
    head_params = sum(p.numel() for p in model.parameters()) - body_params
    return [body_params + head_params, body_flops + counter.get_total_flops()]


def model_rows(*, size: int = 513, num_classes: int = 21, cache_dir: str | Path | None = None) -> list[dict]:
    """One row per architecture x backbone x output stride (``_table_specs``): parameters, GMACs and GFLOPs.

    Counting all of them takes 36 s on 2 AMD EPYC cores (976 rows; torch's meta kernels run in Python, so each
    backbone runs once for all its heads: 178 s whole model by whole model), so the counts are kept in the cache folder (``runtime.cache_directory``) under a fingerprint of the
    model code and torch's version: a second listing is instant, and a change to the models counts afresh."""
    folder = cache_directory(cache_dir) / "model_table"
    path = folder / f"{_code_fingerprint()}.json"
    try:
        counts = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):  # damaged or unreadable: count again
        counts = {}
    specs = _table_specs()
    missing = [spec for spec in specs if _key(*spec, size, num_classes) not in counts]
    bodies = _Bodies(size)
    for spec in progress_bar(sorted(missing, key=lambda spec: spec[1:]), desc="counting parameters and FLOPs",
                             unit="model", disable=not missing):  # fmt: skip
        counts[_key(*spec, size, num_classes)] = _count_or_reason(*spec, size, num_classes, bodies)
    if missing:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            for older in folder.glob("*.json"):  # tables of model code since changed
                if older != path:
                    older.unlink(missing_ok=True)
            write_text_whole(path, json.dumps(counts))
        except OSError as error:  # a read-only cache costs the next listing its count, nothing else
            log.info("model table not cached in %s: %s", folder, error)
    rows = []
    for name, backbone, stride in specs:
        count = counts[_key(name, backbone, stride, size, num_classes)]
        if isinstance(count, str):
            log.warning("%s / %s at OS%d left out: %s", name, backbone, stride, count)
            continue
        params, flops = count
        rows.append({"model": name, "backbone": backbone, "output_stride": stride, "params_m": params / 1e6,
                     "gmacs": flops / 2e9, "gflops": flops / 1e9})  # fmt: skip
    return rows


def _key(name: str, backbone: str, output_stride: int, size: int, num_classes: int) -> str:
    return f"{name} {backbone} OS{output_stride} {size}px {num_classes} classes"
