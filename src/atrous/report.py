"""The run report: one self-contained HTML page beside its images (relative links, no network)."""

from __future__ import annotations

import html
import math
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from .atomic import write_text_whole
from .data.io import save_image
from .inference import InferenceOptions
from .visualize import overlay

ASSETS = "report_assets"
# The longer side, in pixels, of a sample's panels as written: small images are enlarged by a whole factor (each
# pixel a sharp square, as the labels are), large ones reduced. The page shows them at this size, unscaled.
PANEL_SIDE = 192
PANEL_CAPTIONS = ("image", "ground truth", "prediction")
# What a report states about the evaluation, in this order, above its scores.
EVALUATED = {"weights": "weights", "inference": "mode", "runtime": "runtime"}

STYLE = (
    "body{font-family:system-ui,sans-serif;margin:2em;max-width:1280px;color:#222}"
    "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}"
    "td:first-child{text-align:left}"
    ".evaluated th{text-align:left;background:#f3f3f3}.evaluated td{text-align:left}"
    ".evaluated code{word-break:break-all}"
    "figure{display:inline-block;margin:.5em;vertical-align:top}figcaption{text-align:center;color:#444}"
    "img{max-width:100%;height:auto}"
    # Label images are class indices drawn as colours: enlarged, they keep sharp pixels. Plots are text and lines,
    # which nearest-neighbour scaling breaks, so they are scaled smoothly.
    "img.labels{image-rendering:pixelated}"
    ".samples{display:flex;flex-wrap:wrap;gap:1em}.samples>figure{margin:0;padding:.5em;border:1px solid #ddd;"
    "border-radius:4px}.samples>figure>figcaption{font-family:monospace;text-align:left;margin-bottom:.3em}"
    ".panels{display:flex;gap:8px;flex-wrap:wrap}.panels figure{margin:0}.panels figcaption{font-size:.85em}"
    "pre{background:#f6f6f6;padding:1em;overflow-x:auto}"
    ".legend{display:flex;flex-wrap:wrap;gap:.3em 1.2em}.legend span{white-space:nowrap}"
    ".swatch{display:inline-block;width:1em;height:1em;margin-right:.35em;border:1px solid #888;"
    "vertical-align:middle}"
)


def sample_panels(
    image: np.ndarray, truth: np.ndarray, prediction: np.ndarray, palette: np.ndarray
) -> list[np.ndarray]:
    """The image, the ground truth over it and the prediction over it (``overlay``), each (h, w, 3) uint8 with the
    longer side about ``PANEL_SIDE``: larger images reduced (the image averaged, labels by nearest, as masks always
    are), smaller ones enlarged by a whole factor after the overlay, so that its edges stay one source pixel wide."""
    height, width = image.shape[:2]
    if max(height, width) > PANEL_SIDE:
        scale = PANEL_SIDE / max(height, width)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BOX))
        truth, prediction = (_resize_labels(labels, size) for labels in (truth, prediction))
    factor = max(1, PANEL_SIDE // max(image.shape[:2]))
    panels = [image, overlay(image, truth, palette), overlay(image, prediction, palette)]
    return [panel.repeat(factor, axis=0).repeat(factor, axis=1) for panel in panels]


def _resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W) class indices at (width, height) ``size``, by nearest neighbour: never a value between two classes."""
    return np.asarray(Image.fromarray(np.asarray(labels, dtype=np.uint8)).resize(size, Image.Resampling.NEAREST))


def describe_inference(options: dict) -> str:
    """An ``InferenceOptions`` (as a dict) in words: scales and their fusion, flip, sliding window, CRF."""
    chosen = InferenceOptions(**options)
    scales = ", ".join(f"{scale:g}" for scale in chosen.scales)
    if chosen.fusion == "max":
        parts = [f"multi-scale inputs (MSC) at scales {scales}, logits max-fused"]
    elif tuple(chosen.scales) != (1.0,):
        parts = [f"test-time augmentation: scales {scales}" + (" + horizontal flip" if chosen.flip else "")
                 + ", probabilities averaged"]  # fmt: skip
    else:
        parts = ["one scale" + (" + horizontal flip, probabilities averaged" if chosen.flip else "")]
    if chosen.crop is None:
        parts.insert(0, "whole image")
    else:
        parts.insert(0, f"sliding window {chosen.crop} px, stride {chosen.window_stride} px")
    if chosen.crf:
        parts.append("DenseCRF")
    return "; ".join(parts)


def _evaluated(details: dict) -> str:
    """The weights, inference mode and runtime an evaluation used, as a small table (empty when none is known)."""
    rows = []
    for key, label in EVALUATED.items():
        if details.get(key) is None:
            continue
        value = details[key]
        text = describe_inference(value) if key == "inference" else str(value)
        cell = f"<code>{html.escape(text)}</code>" if key == "weights" else html.escape(text)
        rows.append(f"<tr><th>{label}</th><td>{cell}</td></tr>")
    return f"<table class=evaluated>{''.join(rows)}</table>" if rows else ""


def _figure(relative: str, caption: str, *, labels: bool = False) -> str:
    kind = " class=labels" if labels else ""
    return (f'<figure><img{kind} src="{html.escape(relative)}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")  # fmt: skip


def _sample(directory: Path, index: int, name: str, panels: list[np.ndarray]) -> str:
    """One sample: the image file's name over its three panels, side by side, apart and captioned."""
    files = [f"{ASSETS}/sample_{index:03d}.jpg", f"{ASSETS}/sample_{index:03d}_truth.png",
             f"{ASSETS}/sample_{index:03d}_prediction.png"]  # fmt: skip
    # The photo as JPEG at full colour resolution (its enlarged pixels stay squares); overlays as PNG, exact colours.
    save_image(directory / files[0], panels[0], quality=92, subsampling=0)
    for relative, panel in zip(files[1:], panels[1:]):
        save_image(directory / relative, panel)
    figures = "".join(_figure(relative, caption, labels=True) for relative, caption in zip(files, PANEL_CAPTIONS))
    return f"<figure><figcaption>{html.escape(name)}</figcaption><div class=panels>{figures}</div></figure>"


def _scores_table(scores: dict, class_names: list[str]) -> str:
    def cell(value: float) -> str:
        return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"

    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{cell(scores['per_class_iou'][i])}</td>"
        f"<td>{cell(scores['per_class_accuracy'][i])}</td><td>{cell(scores['per_class_dice'][i])}</td></tr>"
        for i, name in enumerate(class_names)
    )
    summary = " · ".join(
        f"<b>{key}</b> {cell(scores[key])}"
        for key in ("mIoU", "pixel_accuracy", "mean_class_accuracy", "fwIoU", "mean_dice")
    )
    return (
        f"<p class=summary>{summary}</p><table><tr><th>class</th><th>IoU</th><th>accuracy</th><th>Dice</th></tr>"
        f"{rows}</table>"
    )


def _legend(class_names: list[str], palette: np.ndarray) -> str:
    items = "".join(
        f'<span><span class=swatch style="background:rgb({r},{g},{b})"></span>{html.escape(name)}</span>'
        for name, (r, g, b) in zip(class_names, palette[: len(class_names)].tolist())
    )
    return f"<p class=legend>{items}</p>"


def write_report(
    directory: str | Path,
    *,
    title: str,
    class_names: list[str],
    palette: np.ndarray,
    evaluated: dict | None = None,
    config: dict | None = None,
    scores: dict | None = None,
    figures: dict[str, Path] | None = None,
    samples: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]] | None = None,
) -> Path:
    """Write ``directory/report.html``. ``evaluated``: ``weights`` (path), ``inference`` (``InferenceOptions`` as a
    dict) and ``runtime``, each optional, stated under the title; ``config``: shown whole at the end; ``figures``:
    caption -> PNG path (inside ``directory``); ``samples``: (name, image, ground truth, prediction) rendered to
    ``report_assets/``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    parts = [f"<h1>{html.escape(title)}</h1>", _evaluated(evaluated or {})]
    if scores is not None:
        parts += ["<h2>Validation</h2>", _scores_table(scores, class_names)]
    if figures:
        parts.append("<h2>Figures</h2><div class=figures>")
        for caption, path in figures.items():
            parts.append(_figure(Path(path).resolve().relative_to(directory.resolve()).as_posix(), caption))
        parts.append("</div>")
    if samples:
        (directory / ASSETS).mkdir(exist_ok=True)
        parts += ["<h2>Predictions</h2>", _legend(class_names, palette), "<div class=samples>"]
        for index, (name, image, truth, prediction) in enumerate(samples):
            parts.append(_sample(directory, index, name, sample_panels(image, truth, prediction, palette)))
        parts.append("</div>")
    if config is not None:
        dumped = yaml.safe_dump(config, sort_keys=False)
        parts += ["<h2>Resolved configuration</h2>", f"<pre>{html.escape(dumped)}</pre>"]
    page = (
        f"<!doctype html><html><head><meta charset=utf-8><meta name=viewport content='width=device-width'>"
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>{''.join(parts)}</body></html>"
    )
    return write_text_whole(directory / "report.html", page)
