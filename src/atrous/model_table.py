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
from .models.spec import ModelSpec
from .progress import progress_bar
from .registry import BACKBONES, MODELS, list_backbones, list_models
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


def _count_or_reason(name: str, backbone: str, output_stride: int, size: int, num_classes: int) -> list[int] | str:
    try:
        params, flops = count_flops(size, name=name, backbone=backbone, output_stride=output_stride,
                                    num_classes=num_classes)  # fmt: skip
    except DataError as error:  # VainF's Xception needs at least 103 px at OS8: no row at smaller sizes
        return str(error)
    return [params, flops]


def model_rows(*, size: int = 513, num_classes: int = 21, cache_dir: str | Path | None = None) -> list[dict]:
    """One row per architecture x backbone x output stride (``_table_specs``): parameters, GMACs and GFLOPs.

    Counting all of them takes 112 s on 2 AMD EPYC cores (611 forwards through torch's meta kernels, which run in
    Python), so the counts are kept in the cache folder (``runtime.cache_directory``) under a fingerprint of the
    model code and torch's version: a second listing is instant, and a change to the models counts afresh."""
    folder = cache_directory(cache_dir) / "model_table"
    path = folder / f"{_code_fingerprint()}.json"
    try:
        counts = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):  # damaged or unreadable: count again
        counts = {}
    specs = _table_specs()
    missing = [spec for spec in specs if _key(*spec, size, num_classes) not in counts]
    for spec in progress_bar(missing, desc="counting parameters and FLOPs", unit="model", disable=not missing):
        counts[_key(*spec, size, num_classes)] = _count_or_reason(*spec, size, num_classes)
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
