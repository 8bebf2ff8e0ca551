"""The README's main job in its 1-minute form: artefacts exist and the report links only to existing files."""

import json
import re
from pathlib import Path

import pytest

from atrous.checkpoint import load_checkpoint
from atrous.cli import main


def test_demo_fast_end_to_end(tmp_path, capsys):
    assert main(["demo", "--fast", "--out", str(tmp_path / "runs"), "--data", str(tmp_path / "data")]) == 0
    printed = capsys.readouterr().out
    assert "validation mIoU" in printed and "report:" in printed
    assert "--fast is a smoke test of the pipeline (60 iterations): its model is barely trained" in printed
    run = tmp_path / "runs" / "demo-fast"
    state = load_checkpoint(run / "checkpoints" / "best.pt")
    assert state["spec"]["name"] == "deeplabv3plus"
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert 0.0 <= metrics["mIoU"] <= 1.0 and len(metrics["per_class_iou"]) == 7
    assert len(list((run / "predictions").glob("*_overlay.png"))) == 24
    report = (run / "report.html").read_text()
    links = re.findall(r'(?:src|href)="([^"]+)"', report)
    assert len(links) >= 3 + 8  # three figures and eight prediction strips
    for link in links:
        assert not link.startswith(("http:", "https:", "//")), link  # self-contained: no network
        assert (run / link).is_file(), link
    assert "Resolved configuration" in report and "mIoU" in report
    # Re-running reuses the generated data instead of writing it again.
    marker = next((tmp_path / "data" / "fast").rglob("atrous_synthetic.json"))
    stamp = marker.stat().st_mtime_ns
    from atrous.data import write_synthetic
    from atrous.demo import demo_spec

    write_synthetic(marker.parent.parent.parent, demo_spec(fast=True), progress=False)
    assert marker.stat().st_mtime_ns == stamp
    assert Path(run / "eval" / "report.html").is_file() and (run / "curves.png").is_file()

    # Running the demo again continues its own run: the finished training is kept (not retrained, not replaced) and
    # evaluated again to the same score.
    best = run / "checkpoints" / "best.pt"
    kept = (best.stat().st_ino, best.stat().st_mtime_ns)
    rows = (run / "metrics.jsonl").read_text()
    assert main(["demo", "--fast", "--out", str(tmp_path / "runs"), "--data", str(tmp_path / "data")]) == 0
    assert (best.stat().st_ino, best.stat().st_mtime_ns) == kept
    assert (run / "metrics.jsonl").read_text() == rows
    assert json.loads((run / "eval" / "metrics.json").read_text())["mIoU"] == metrics["mIoU"]

    # A run of another recipe in the demo's folder (an earlier version's demo: batch 8) is neither continued under
    # this recipe nor replaced: a clear refusal, and every file stays as it was.
    saved = run / "config.yaml"
    saved.write_text(saved.read_text().replace("batch_size: 16", "batch_size: 8", 1))
    before = {path: path.read_bytes() for path in run.rglob("*") if path.is_file()}
    capsys.readouterr()
    assert main(["demo", "--fast", "--out", str(tmp_path / "runs"), "--data", str(tmp_path / "data")]) == 2
    error = capsys.readouterr().err
    assert f"{run} holds a demo run of another recipe (data.batch_size: 8 there, 16 in this recipe)" in error
    assert f"Move or delete {run}" in error and "--out" in error
    assert {path: path.read_bytes() for path in run.rglob("*") if path.is_file()} == before


def test_the_synthetic_recipe_is_the_demo_configuration(tmp_path):
    from atrous.config import config_to_dict, load_config
    from atrous.demo import demo_config

    recipe = config_to_dict(load_config(Path(__file__).resolve().parents[1] / "configs" / "deeplabv3plus_r18-os16_synthetic_64x64_700.yaml"))
    demo = config_to_dict(demo_config(data_root=Path("data/synthetic"), out_dir=Path("runs"), fast=False))
    for section in ("model", "optim", "train", "data"):  # data.root too: `atrous eval --config <recipe>` finds it
        assert recipe[section] == demo[section], section


def test_a_missing_synthetic_dataset_says_how_to_write_it(tmp_path):
    from atrous.data import build_dataset
    from atrous.errors import MissingFileError

    with pytest.raises(MissingFileError, match=rf"no synthetic dataset under {tmp_path}: write it with `atrous data "
                                               rf"synth --out {tmp_path}`, or run `atrous demo`"):  # fmt: skip
        build_dataset("synthetic", tmp_path, "val")
