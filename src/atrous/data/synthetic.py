"""An embedded synthetic dataset written in the PASCAL VOC layout, so the real loader is exercised.

Each object class has its own shape *and* texture, drawn in random colours, so that colour alone says
nothing; objects span a 4x range of sizes and may overlap; the background is a coloured noise field with
distracting lines. As in VOC, a 1-pixel outline around each object is void (255).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..atomic import write_text_whole
from ..errors import MissingFileError
from ..progress import progress_bar
from .base import SegmentationDataset
from .io import save_mask
from .labels import IGNORE_INDEX, voc_palette
from .voc import find_voc_root, voc_dataset

SYNTHETIC_CLASSES = ("background", "disc", "square", "triangle", "star", "ring", "cross")
META_FILE = "atrous_synthetic.json"


@dataclass(frozen=True)
class SynthSpec:
    seed: int = 0
    train: int = 600
    val: int = 120
    size: int = 64
    min_object: float = 0.25  # object diameter as a fraction of the image side; max / min = 4
    max_object: float = 1.0
    max_objects: int = 3


def _shape_polygon(class_name: str, cx: float, cy: float, radius: float, angle: float) -> list[tuple[float, float]]:
    def star_points(count: int, inner: float) -> list[tuple[float, float]]:
        points = []
        for i in range(2 * count):
            r = radius if i % 2 == 0 else radius * inner
            a = angle + math.pi * i / count
            points.append((cx + r * math.cos(a), cy + r * math.sin(a)))
        return points

    if class_name == "square":
        return [(cx + radius * math.cos(angle + k * math.pi / 2), cy + radius * math.sin(angle + k * math.pi / 2)) for k in range(4)]
    if class_name == "triangle":
        return [(cx + radius * math.cos(angle + k * 2 * math.pi / 3), cy + radius * math.sin(angle + k * 2 * math.pi / 3)) for k in range(3)]
    if class_name == "star":
        return star_points(5, 0.45)
    if class_name == "cross":
        w = radius * 0.35
        arm = [(-w, -radius), (w, -radius), (w, -w), (radius, -w), (radius, w), (w, w), (w, radius), (-w, radius),
               (-w, w), (-radius, w), (-radius, -w), (-w, -w)]  # fmt: skip
        cos, sin = math.cos(angle), math.sin(angle)
        return [(cx + x * cos - y * sin, cy + x * sin + y * cos) for x, y in arm]
    raise ValueError(class_name)


def _shape_mask(class_name: str, size: int, cx: float, cy: float, radius: float, angle: float) -> np.ndarray:
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    if class_name == "disc":
        draw.ellipse(box, fill=1)
    elif class_name == "ring":
        draw.ellipse(box, fill=1)
        hole = radius * 0.5
        draw.ellipse((cx - hole, cy - hole, cx + hole, cy + hole), fill=0)
    else:
        draw.polygon(_shape_polygon(class_name, cx, cy, radius, angle), fill=1)
    return np.asarray(canvas, dtype=bool)


def _saturated(rng: np.random.Generator) -> np.ndarray:
    """A random saturated colour: random hue, one channel high, one low."""
    colour = rng.uniform(0, 255, 3)
    order = rng.permutation(3)
    colour[order[0]] = rng.uniform(200, 255)
    colour[order[1]] = rng.uniform(0, 60)
    return colour


def _texture(class_name: str, size: int, rng: np.random.Generator, angle: float, centre) -> np.ndarray:
    """(size, size, 3) float texture in two random colours; the pattern is the class's."""
    c1 = _saturated(rng)
    c2 = c1 * rng.uniform(0.1, 0.3)  # a dark shade of the same colour: the pattern shows as light/dark
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    u = x * math.cos(angle) + y * math.sin(angle)
    v = -x * math.sin(angle) + y * math.cos(angle)
    period = rng.uniform(3, 6)
    if class_name == "disc":  # concentric rings around the object's centre
        weight = (np.floor(np.hypot(x - centre[0], y - centre[1]) / period) % 2).astype(np.float32)
    elif class_name == "square":  # horizontal stripes (in the image frame: unlike a disc's rings, never curved)
        weight = (np.floor(y / period) % 2).astype(np.float32)
    elif class_name == "triangle":  # checkerboard aligned with the triangle
        weight = ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
    elif class_name == "star":  # polka dots
        spacing = period * 1.6
        du, dv = (u % spacing) - spacing / 2, (v % spacing) - spacing / 2
        weight = (np.hypot(du, dv) < spacing * 0.3).astype(np.float32)
    elif class_name == "ring":  # flat colour with fine grain
        weight = rng.uniform(0, 0.2, (size, size)).astype(np.float32)
    else:  # cross: salt-and-pepper speckle of the two colours
        weight = (rng.random((size, size)) < 0.5).astype(np.float32)
    return c1 * (1 - weight[..., None]) + c2 * weight[..., None]


def _background(size: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth, muted colour field with noise and a few thin lines: scene-like clutter, never an object's texture."""
    coarse = rng.uniform(0, 255, (4, 4, 3)).astype(np.uint8)
    field = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC), dtype=np.float32)
    gray = field.mean(axis=2, keepdims=True)
    field = gray + 0.35 * (field - gray)  # muted: objects are drawn in saturated colours
    field += rng.normal(0, 6, (size, size, 3))
    canvas = Image.fromarray(np.clip(field, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for _ in range(rng.integers(1, 4)):
        points = [tuple(rng.uniform(0, size, 2)) for _ in range(2)]
        draw.line(points, fill=tuple(int(c) for c in rng.integers(60, 196, 3)), width=1)
    return np.asarray(canvas, dtype=np.float32)


def render_sample(spec: SynthSpec, index: int) -> tuple[np.ndarray, np.ndarray]:
    """The image (size, size, 3) uint8 and mask (size, size) uint8 of sample ``index``; deterministic."""
    rng = np.random.default_rng([spec.seed, index])
    size = spec.size
    image = _background(size, rng)
    label = np.zeros((size, size), dtype=np.uint8)
    outline = np.zeros((size, size), dtype=bool)
    for _ in range(rng.integers(1, spec.max_objects + 1)):
        class_index = int(rng.integers(1, len(SYNTHETIC_CLASSES)))
        name = SYNTHETIC_CLASSES[class_index]
        radius = rng.uniform(spec.min_object, spec.max_object) * size / 2
        cx, cy = rng.uniform(0, size, 2)
        angle = rng.uniform(0, 2 * math.pi)
        shape = _shape_mask(name, size, cx, cy, radius, angle)
        if not shape.any():
            continue
        image[shape] = _texture(name, size, rng, angle, (cx, cy))[shape]
        label[shape] = class_index
        outline[shape] = False
        edge = np.asarray(Image.fromarray(shape.astype(np.uint8) * 255).filter(ImageFilter.FIND_EDGES)) > 0
        outline |= edge
    label[outline] = IGNORE_INDEX
    return np.clip(image, 0, 255).astype(np.uint8), label


def write_synthetic(out: str | Path, spec: SynthSpec = SynthSpec(), *, progress: bool = True) -> Path:
    """Write the dataset as ``out/VOCdevkit/VOC2012/...``; returns that VOC root. Reuses an identical one."""
    voc_root = Path(out) / "VOCdevkit" / "VOC2012"
    meta_path = voc_root / META_FILE
    meta = {"classes": list(SYNTHETIC_CLASSES), **asdict(spec)}
    if meta_path.is_file() and json.loads(meta_path.read_text()) == meta:
        return voc_root
    split_dir = voc_root / "ImageSets" / "Segmentation"
    for directory in (voc_root / "JPEGImages", voc_root / "SegmentationClass", split_dir):
        directory.mkdir(parents=True, exist_ok=True)
    palette = voc_palette()
    ids = {"train": [f"synth_{i:05d}" for i in range(spec.train)]}
    ids["val"] = [f"synth_{i:05d}" for i in range(spec.train, spec.train + spec.val)]
    all_ids = ids["train"] + ids["val"]
    for index, sample_id in enumerate(progress_bar(all_ids, desc="synthetic data", disable=not progress, unit="img")):
        image, mask = render_sample(spec, index)
        Image.fromarray(image).save(voc_root / "JPEGImages" / f"{sample_id}.jpg", quality=92)
        save_mask(voc_root / "SegmentationClass" / f"{sample_id}.png", mask, palette)
    for split, names in [("train", ids["train"]), ("val", ids["val"]), ("trainval", all_ids)]:
        (split_dir / f"{split}.txt").write_text("\n".join(names) + "\n")
    write_text_whole(meta_path, json.dumps(meta, indent=2))  # written last: its presence means the set is complete
    return voc_root


def synthetic_dataset(root: str | Path, split: str, **options) -> SegmentationDataset:
    """The set ``write_synthetic`` wrote under ``root`` (VOC layout, ``SYNTHETIC_CLASSES``)."""
    try:
        find_voc_root(root)
    except MissingFileError:  # the VOC message would send the user after VOC's archives
        raise MissingFileError(
            f"no synthetic dataset under {root}: write it with `atrous data synth --out {root}`, or run `atrous demo`, "
            "which writes it to data/synthetic"
        ) from None
    return voc_dataset(root, split, class_names=SYNTHETIC_CLASSES, name="synthetic", **options)
