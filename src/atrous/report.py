"""The run report: one self-contained HTML page beside its images (relative links, no network)."""

from __future__ import annotations

import html
import math
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from .visualize import overlay

ASSETS = "report_assets"


def sample_strip(image: np.ndarray, truth: np.ndarray, prediction: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """image | ground truth overlay | prediction overlay, side by side, (H, 3W, 3) uint8."""
    return np.concatenate([image, overlay(image, truth, palette), overlay(image, prediction, palette)], axis=1)


def _figure(relative: str, caption: str) -> str:
    return f'<figure><img src="{html.escape(relative)}" alt="{html.escape(caption)}"><figcaption>{html.escape(caption)}</figcaption></figure>'


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
        f'<span class=swatch style="background:rgb({r},{g},{b})"></span>{html.escape(name)}'
        for name, (r, g, b) in zip(class_names, palette[: len(class_names)].tolist())
    )
    return f"<p class=legend>{items}</p>"


def write_report(
    directory: str | Path,
    *,
    title: str,
    class_names: list[str],
    palette: np.ndarray,
    config: dict | None = None,
    scores: dict | None = None,
    figures: dict[str, Path] | None = None,
    samples: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]] | None = None,
) -> Path:
    """Write ``directory/report.html``. ``figures``: caption -> PNG path (inside ``directory``);
    ``samples``: (name, image, ground truth, prediction) rendered to ``report_assets/``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    parts = [f"<h1>{html.escape(title)}</h1>"]
    if scores is not None:
        parts += ["<h2>Validation</h2>", _scores_table(scores, class_names)]
    if figures:
        parts.append("<h2>Figures</h2><div class=figures>")
        for caption, path in figures.items():
            parts.append(_figure(Path(path).resolve().relative_to(directory.resolve()).as_posix(), caption))
        parts.append("</div>")
    if samples:
        (directory / ASSETS).mkdir(exist_ok=True)
        parts += ["<h2>Predictions</h2><p>image · ground truth · prediction</p>", _legend(class_names, palette)]
        parts.append("<div class=samples>")
        for index, (name, image, truth, prediction) in enumerate(samples):
            relative = f"{ASSETS}/sample_{index:03d}.jpg"
            Image.fromarray(sample_strip(image, truth, prediction, palette)).save(directory / relative, quality=90)
            parts.append(_figure(relative, name))
        parts.append("</div>")
    if config is not None:
        parts += ["<h2>Resolved configuration</h2>", f"<pre>{html.escape(yaml.safe_dump(config, sort_keys=False))}</pre>"]
    style = (
        "body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}"
        "td:first-child{text-align:left}figure{display:inline-block;margin:.5em}"
        "img{max-width:100%;image-rendering:pixelated}.samples img{height:160px}"
        "pre{background:#f6f6f6;padding:1em}.swatch{display:inline-block;width:1em;height:1em;margin:0 .3em 0 1em;"
        "border:1px solid #888;vertical-align:middle}"
    )
    page = (
        f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>{''.join(parts)}</body></html>"
    )
    path = directory / "report.html"
    path.write_text(page)
    return path
