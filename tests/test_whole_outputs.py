"""Outputs of predict, eval and export: one writer per folder (a second is refused naming the first), every file
whole or absent (a kill between or inside writes leaves no truncated file under a final name, and the next run
deletes what the killed one left), overlays whose colours are the legend's."""

from __future__ import annotations

import colorsys
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch
from data_fixtures import write_jpeg

import atrous
from atrous.checkpoint import model_checkpoint
from atrous.cli import main
from atrous.config import Config, save_config
from atrous.data import SYNTHETIC_CLASSES, SynthSpec, write_synthetic
from atrous.data.io import read_image
from atrous.data.labels import full_palette, voc_palette
from atrous.export import export_model
from atrous.folder_lock import LOCK_FILE, output_folder
from atrous.visualize import OVERLAY_ALPHA, overlay, region_edges

FORK = multiprocessing.get_context("fork")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An atrous checkpoint of the cheapest DeepLab (random weights), six photos to predict, and the config of a
    synthetic dataset to evaluate it on."""
    root = tmp_path_factory.mktemp("whole")
    torch.manual_seed(0)
    classes = len(SYNTHETIC_CLASSES)
    model = atrous.build_model("deeplabv2", backbone="mobilenet_v3_large", num_classes=classes, output_stride=32)
    torch.save(model_checkpoint(model.eval()), root / "model.pt")
    for index in range(6):
        write_jpeg(root / "photos" / f"photo_{index}.jpg", 40, 56, seed=index)
    write_synthetic(root / "data", SynthSpec(seed=3, train=2, val=3, size=40), progress=False)
    config = Config()
    config.model = atrous.ModelSpec(name="deeplabv2", backbone="mobilenet_v3_large", num_classes=classes)
    config.data.dataset, config.data.root = "synthetic", str(root / "data")
    save_config(config, root / "config.yaml")
    return root / "model.pt", root / "photos"


def _whole_png(path) -> bool:
    """Whether ``path`` is a complete PNG: it ends with its IEND chunk, CRC and all (a truncated one does not)."""
    data = path.read_bytes()
    iend = b"IEND" + zlib.crc32(b"IEND").to_bytes(4, "big")
    return data.startswith(b"\x89PNG\r\n\x1a\n") and data.endswith(iend)


def _temporaries(folder):
    return [path for path in folder.rglob(".*") if path.name != LOCK_FILE]


def _hold(folder, purpose, ready, release):
    with output_folder(folder, purpose):
        ready.set()
        release.wait(60)


@pytest.mark.parametrize("command", ["predict", "eval"])
def test_a_second_writer_into_an_output_folder_is_refused_naming_the_first(checkpoint, tmp_path, capsys, command):
    weights, photos = checkpoint
    out = tmp_path / "out"
    ready, release = FORK.Event(), FORK.Event()
    holder = FORK.Process(target=_hold, args=(out, "prediction", ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        if command == "predict":
            code = main(["predict", "--weights", str(weights), str(photos), "--out", str(out), "--runtime", "eager"])
        else:
            config = weights.parent / "config.yaml"
            code = main(["eval", "--config", str(config), "--weights", str(weights), "--out", str(out), "--runtime",
                         "eager"])  # fmt: skip
        error = capsys.readouterr().err.strip()
    finally:
        release.set()
        holder.join(60)
    assert code == 2
    assert error.startswith(f"atrous {command}: error: {out} is in use by another prediction (pid {holder.pid} on ")
    assert error.endswith("wait for it to end or stop it, or choose another --out folder") and "\n" not in error
    assert sorted(path.name for path in out.iterdir()) == [LOCK_FILE]  # nothing of the refused run was written


def test_two_predictions_in_turn_into_one_folder_both_run(checkpoint, tmp_path):
    """The lock is the kernel's: it goes with its process, so the next run into the folder is not refused."""
    weights, photos = checkpoint
    out = tmp_path / "out"
    for _ in range(2):
        assert main(["predict", "--weights", str(weights), str(photos), "--out", str(out), "--runtime", "eager"]) == 0
    assert len(list(out.glob("*_overlay.png"))) == 6


# Run in a fresh interpreter, not a fork: a fork of a process whose OpenMP threads have run a model can hang.
_INTERRUPTED_PREDICT = """
import os, signal, sys
from PIL import Image
from atrous.cli import main
original, calls, how = Image.Image.save, [], int(sys.argv[1])
def save(image, target, *args, **kwargs):
    calls.append(target)
    original(image, target, *args, **kwargs)
    if len(calls) == int(sys.argv[2]):
        with open(target, "r+b") as written:
            written.truncate(os.path.getsize(target) // 2)  # the signal comes with half the bytes out
        os.kill(os.getpid(), how)
Image.Image.save = save
sys.exit(main(sys.argv[3:]))
"""


def _predict_stopped_at(write: int, how: signal.Signals, weights, photos, out) -> subprocess.CompletedProcess:
    """``atrous predict`` sent ``how`` halfway through writing its ``write``-th file."""
    command = ["predict", "--weights", str(weights), str(photos), "--out", str(out), "--runtime", "eager"]
    return subprocess.run([sys.executable, "-c", _INTERRUPTED_PREDICT, str(int(how)), str(write), *command],
                          check=False, capture_output=True, text=True, timeout=300)  # fmt: skip


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_an_interrupted_prediction_leaves_only_whole_files_and_the_next_one_cleans_up(checkpoint, tmp_path, how):
    weights, photos = checkpoint
    out = tmp_path / "out"
    done = _predict_stopped_at(4, how, weights, photos, out)
    finals = sorted(path for path in out.rglob("*.png") if not path.name.startswith("."))
    assert len(finals) == 3, done.stderr  # legend, one label PNG, one overlay: written before the signal
    assert all(_whole_png(path) for path in finals)
    if how == signal.SIGKILL:  # nothing ran after the kill: the half-written file is under its temporary name
        assert done.returncode == -signal.SIGKILL
        assert len(_temporaries(out)) == 1 and not _whole_png(_temporaries(out)[0])
    else:  # SIGTERM ends the command as Ctrl-C does: its temporary deleted, exit 128 + 15, one line
        assert done.returncode == 143 and _temporaries(out) == []
        assert done.stderr.strip().splitlines()[-1] == (
            "atrous predict: terminated: every file written so far is whole (none is left half-written); run the "
            "command again to redo it"
        )
    assert main(["predict", "--weights", str(weights), str(photos), "--out", str(out), "--runtime", "eager"]) == 0
    assert _temporaries(out) == []
    outputs = sorted(out.glob("*.png"))
    assert len(outputs) == 13 and all(_whole_png(path) for path in outputs)


def test_an_export_deletes_what_a_killed_export_left_beside_its_file(tmp_path):
    model = atrous.build_model("deeplabv2", backbone="mobilenet_v3_large", num_classes=3, output_stride=32).eval()
    finished = FORK.Process(target=int)
    finished.start()
    finished.join()  # its pid names no live process now
    host = socket.gethostname().replace(".", "_")
    dead = tmp_path / f".model.onnx.0123abcd.{host}-{finished.pid}.partial"
    live = tmp_path / f".model.onnx.4567cdef.{host}-{os.getppid()}.partial"  # a live process: still writing
    other = tmp_path / f".other.onnx.89abcdef.{host}-{finished.pid}.partial"  # another file's: not this export's
    for path in (dead, live, other):
        path.write_bytes(b"half an export")
    export_model(model, tmp_path / "model.onnx", format="onnx", example_size=65)
    assert not dead.exists() and live.exists() and other.exists()
    assert (tmp_path / "model.onnx").stat().st_size > 1_000_000


# ------------------------------------------------------------------------------------------ overlays


def _hue(rgb) -> float:
    return colorsys.rgb_to_hsv(*(np.asarray(rgb, dtype=float) / 255))[0] * 360


def _hue_distance(a: float, b: float) -> float:
    return min(abs(a - b), 360 - abs(a - b))


def _legend_class(pixel, palette, classes) -> int:
    """The class whose legend colour a viewer reads in ``pixel``: the nearest hue among the classes shown."""
    return min(classes, key=lambda k: _hue_distance(_hue(pixel), _hue(palette[k])))


def test_overlay_pixels_read_as_their_class_in_the_legend_whatever_the_object_colour(checkpoint, tmp_path):
    """VOC's colours: an orange object labelled class 4 (navy) must read navy, not another class's colour, as a tint
    over the colour photo does; edge pixels are the legend's colour exactly, in the written file."""
    palette = full_palette(voc_palette())
    classes = [1, 2, 3, 4, 5, 6]  # red, green, olive, navy, purple, teal: distinct hues
    rng = np.random.default_rng(0)
    height, width = 60, 90
    labels = np.zeros((height, width), dtype=np.uint8)
    image = np.empty((height, width, 3), dtype=np.uint8)
    for index, k in enumerate(classes):
        columns = slice(index * 15, (index + 1) * 15)
        labels[:, columns] = k
        image[:, columns] = rng.integers(60, 256, 3)  # each region one colour, unrelated to its class
    image[:, 45:60] = (255, 140, 0)  # orange over navy: the case
    shown = overlay(image, labels, palette)
    inside = ~region_edges(labels)
    for k in classes:
        pixel = shown[inside & (labels == k)][0]
        assert _legend_class(pixel, palette, classes) == k, (k, pixel)
    # the negative control: the same tint over the colour photo reads the orange region as another class (red)
    mixed = (image * (1 - OVERLAY_ALPHA) + palette[labels] * OVERLAY_ALPHA).round().astype(np.uint8)
    assert _legend_class(mixed[30, 52], palette, classes) != 4
    # the overlay as predict writes it: PNG, so the edge pixels are exactly the legend's colours
    atrous.predict._save_overlay(tmp_path / "overlay.png", image, labels, palette)
    written = read_image(tmp_path / "overlay.png")
    edges = region_edges(labels)
    np.testing.assert_array_equal(written[edges], palette[labels[edges]])
    np.testing.assert_array_equal(written, shown)
