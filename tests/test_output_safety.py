"""Never lose a user's work: no output replaces an input, the weights or another output; an unwritable folder is
found before the work; a huge image costs memory in proportion to its pixels; the ONNX cache stays bounded and
survives a corrupted entry and a folder it cannot write."""

import errno
import json
import logging
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import randomise_batchnorm
from data_fixtures import make_voc, write_jpeg, write_png
from PIL import Image

import atrous
import atrous.predict
from atrous.data import build_dataset
from atrous.data.io import read_image
from atrous.data.labels import voc_palette
from atrous.errors import ConfigError
from atrous.evaluation import run_evaluation
from atrous.export import export_model
from atrous.inference import InferenceOptions, model_input, predict, slide_labels, slide_logits
from atrous.predict import AUTO_CROP, expand_inputs, image_size, output_names, predict_files
from atrous.runtime import cached_onnx, prepare_inference

MIB = 2**20


@pytest.fixture(scope="module")
def model():
    """The cheapest DeepLab to run (V2's per-rate classifiers on MobileNetV3, output stride 32), with calibrated
    random BN so that its label maps vary from pixel to pixel."""
    torch.manual_seed(0)
    built = atrous.build_model("deeplabv2", backbone="mobilenet_v3_large", num_classes=21, output_stride=32)
    return randomise_batchnorm(built).eval()


class _Counting:
    """``model`` that records the shape of every batch it is called on."""

    def __init__(self, model):
        self.model, self.batches = model, []
        self.normalization, self.num_classes = model.normalization, model.num_classes

    def __call__(self, images):
        self.batches.append(tuple(images.shape))
        return self.model(images)


def _predict(model, paths, out, **options):
    return predict_files(model, paths, out, palette=voc_palette(), progress=False, **options)


def _files(folder):
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


# ------------------------------------------------------------------------------------------ predict: overwriting


def test_predict_into_the_input_folder_refuses_before_writing_anything(model, tmp_path):
    photos = tmp_path / "photos"
    write_png(photos / "gray.png", np.arange(24 * 32, dtype=np.uint8).reshape(24, 32))
    write_jpeg(photos / "street.jpg", 24, 32)
    before = _files(photos)
    with pytest.raises(ConfigError, match=r"refusing to write .*gray\.png: it is the input image .*gray\.png; "
                                          r"choose another --out folder"):  # fmt: skip
        _predict(model, expand_inputs([str(photos)]), photos)
    assert _files(photos) == before  # gray.png intact, and no street.png written before the refusal


def test_predict_never_writes_through_a_link_to_a_protected_file(model, tmp_path):
    weights = tmp_path / "model.pt"
    weights.write_bytes(b"the only copy of three days of training")
    write_jpeg(tmp_path / "in" / "cat.jpg", 24, 32)
    out = tmp_path / "out"
    out.mkdir()
    (out / "cat.png").symlink_to(weights)  # another spelling of the weights: compared by identity, not by name
    with pytest.raises(ConfigError, match=r"out/cat\.png: it is the weights file .*model\.pt"):
        _predict(model, [tmp_path / "in" / "cat.jpg"], out, protected={weights: "the weights file"})
    assert weights.read_bytes() == b"the only copy of three days of training"


# ------------------------------------------------------------------------------------------ predict: output names


def test_output_names_are_distinct_and_stay_short(tmp_path):
    names = output_names([tmp_path / p for p in (
        "d/rgba.jpg", "d/rgba.png", "d/rgba.jpg.png", "a/b/x.png", "c/b/x.png", "d/b_x.png", "e/Cat.png",
        "f/cat.jpg", "x.png", "b/x.png", "photos/rotated.jpg",
    )])  # fmt: skip
    by_input = {path.relative_to(tmp_path).as_posix(): name for path, name in names.items()}
    assert by_input == {
        "d/rgba.jpg": "rgba.jpg", "d/rgba.png": "rgba.png",  # one folder, one stem: the extension is kept
        "d/rgba.jpg.png": "rgba.jpg.png",  # its stem is another input's file name
        "a/b/x.png": "a/b/x", "c/b/x.png": "c/b/x", "b/x.png": "b/x", "x.png": "x",  # as many folders as needed
        "d/b_x.png": "b_x",  # the old parent-prefix scheme gave a/b/x.png this name as well
        "e/Cat.png": "e/Cat", "f/cat.jpg": "f/cat",  # one file on a case-insensitive disk
        "photos/rotated.jpg": "rotated",
    }  # fmt: skip
    assert len({name.casefold() for name in names.values()}) == len(names)


def test_predict_writes_one_output_per_input(model, tmp_path):
    inputs = ["d/rgba.jpg", "d/rgba.png", "a/b/x.png", "c/b/x.png", "d/b_x.png"]
    for index, name in enumerate(inputs):  # a height per input: each output shows whose it is
        if name.endswith(".png"):
            write_png(tmp_path / "in" / name, np.full((20 + index, 30, 3), 40 * index, np.uint8))
        else:
            write_jpeg(tmp_path / "in" / name, 20 + index, 30, seed=index)
    out = tmp_path / "out"
    written = _predict(model, expand_inputs([str(tmp_path / "in")]), out)
    assert len(set(written)) == len(inputs)
    heights = sorted(Image.open(path).size[1] for path in written)
    assert heights == [20 + index for index in range(len(inputs))]
    assert len(list(out.rglob("*_overlay.png"))) == len(inputs)
    # The Python API takes the paths as strings too, to the same outputs.
    again = _predict(model, [str(path) for path in expand_inputs([str(tmp_path / "in")])], tmp_path / "again")
    assert sorted(path.relative_to(tmp_path / "again") for path in again) == sorted(
        path.relative_to(out) for path in written
    )


# ------------------------------------------------------------------------------------------ predict: memory


def test_images_are_decoded_one_batch_at_a_time_grouped_by_their_headers(model, tmp_path, monkeypatch):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 30 x 50, shown rotated: 50 x 30
    rotated = tmp_path / "in" / "rotated.jpg"
    rotated.parent.mkdir()
    Image.fromarray(np.zeros((30, 50, 3), np.uint8)).save(rotated, exif=exif.tobytes())
    assert image_size(rotated) == read_image(rotated).shape[:2] == (50, 30)
    for index in range(3):
        write_jpeg(tmp_path / "in" / f"wide{index}.jpg", 30, 50, index)
        write_jpeg(tmp_path / "in" / f"tall{index}.jpg", 50, 30, index)
    events = []
    monkeypatch.setattr(atrous.predict, "read_image", lambda path: events.append(+1) or read_image(path))
    monkeypatch.setattr(atrous.predict, "_save_overlay", lambda *args: events.append(-1))
    counting = _Counting(model)
    _predict(counting, expand_inputs([str(tmp_path / "in")]), tmp_path / "out", batch_size=2)
    assert max(np.cumsum(events)) <= 2  # decoded and not yet written: one batch at most
    assert sorted(shape[0] for shape in counting.batches) == [1, 2, 2, 2]  # 3 wide; rotated.jpg with the 3 tall


def test_images_above_the_pixel_budget_are_predicted_in_windows(model, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(atrous.predict, "AUTO_CROP", 32)
    monkeypatch.setattr(atrous.predict, "AUTO_STRIDE", 20)
    write_jpeg(tmp_path / "big.jpg", 70, 90)
    write_jpeg(tmp_path / "small.jpg", 40, 50)
    with caplog.at_level(logging.INFO, logger="atrous"):
        _predict(
            model, [tmp_path / "big.jpg", tmp_path / "small.jpg"], tmp_path / "out", whole_image_max_pixels=60 * 60
        )
    assert "big.jpg: 90x70 is over 3600 pixels: sliding-window inference (32x32 windows every 20 px)" in caplog.text
    assert "small.jpg" not in caplog.text
    for name, options in (("big", InferenceOptions(crop=32, stride=20)), ("small", InferenceOptions())):
        image = read_image(tmp_path / f"{name}.jpg")
        expected = predict(model, model_input([image], model, torch.device("cpu")), options)[0].numpy()
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / f"{name}.png")), expected)


@pytest.mark.parametrize(("crop", "stride", "window_batch"),
                         [(32, 20, 3), (32, 32, 1), (40, 13, None), (96, 40, 3), (20, 7, 2), (70, 50, None)])
def test_slide_labels_are_exactly_the_argmax_of_the_averaged_logits(model, crop, stride, window_batch):
    """Full strides, overlaps of most of a window, a last row flush with the border, a crop taller than the image."""
    images = torch.randn(2, 3, 70, 90)
    labels = slide_labels(model, images, crop=crop, stride=stride, window_batch=window_batch)
    expected = slide_logits(model, images, crop=crop, stride=stride, window_batch=window_batch).argmax(1)
    assert torch.equal(labels, expected)
    with pytest.raises(ConfigError, match="stride 33 is larger than crop 32: the pixels between windows"):
        slide_labels(model, images, crop=32, stride=33)
    for wrong in (0, -1):
        with pytest.raises(ConfigError, match=f"window_batch must be >= 1 .windows per model call., got {wrong}"):
            slide_labels(model, images, crop=32, stride=20, window_batch=wrong)


def test_windows_are_batched_on_a_gpu_and_not_on_the_cpu(model, monkeypatch):
    """On the CPU batching windows gains no time and costs memory (atrous bench --only slide): one per call."""
    from atrous.inference import default_window_batch

    assert default_window_batch(torch.device("cpu")) == 1 and default_window_batch(torch.device("cuda")) == 4
    calls = []
    monkeypatch.setattr(model, "forward", lambda x, forward=model.forward: calls.append(len(x)) or forward(x))
    slide_labels(model, torch.randn(1, 3, 40, 60), crop=32, stride=20)
    assert calls == [1] * 6  # 2 rows x 3 columns of windows


_PEAK_CHILD = """
import json, logging, sys
from pathlib import Path
import torch
import atrous
from atrous.bench.timing import peak_rss_mib
from atrous.data.labels import voc_palette
from atrous.predict import predict_files

image, out, classes = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
messages = []
handler = logging.Handler()
handler.emit = lambda record: messages.append(record.getMessage())
logging.getLogger("atrous").addHandler(handler)
logging.getLogger("atrous").setLevel(logging.INFO)
torch.manual_seed(0)
model = atrous.build_model("deeplabv2", backbone="mobilenet_v3_large", num_classes=classes, output_stride=32).eval()
before = peak_rss_mib()
predict_files(model, [image], out, palette=voc_palette(), progress=False)
print(json.dumps({"before": before, "peak": peak_rss_mib(), "messages": messages}))
"""


def test_a_6000x4000_photo_costs_memory_in_proportion_to_its_pixels(tmp_path):
    """Peak RSS of ``predict_files`` on one 24-megapixel image, in a fresh process (``peak_rss_mib``: VmHWM, which
    a child does not inherit from pytest). Bound: 16 bytes a pixel (the decoded image 3, its tensor 3, the uint8
    labels 1, and the transients of decoding and of blending the overlay), the sliding-window accumulator (two
    bands of 513 rows of float32 logits) and 512 MiB for the network on one window batch and the allocator's slack.
    Measured: about 630 MiB over the baseline, against a 950 MiB bound; whole-image inference, as before, took
    4000 MiB with this model (and 7.6 GB with a ResNet-18 DeepLabV3)."""
    height, width, classes = 4000, 6000, 3
    rows, cols = np.mgrid[0:height, 0:width]
    tiles = np.stack([cols * 255 // width, rows * 255 // height, (cols // 500 + rows // 500) % 2 * 200], axis=-1)
    Image.fromarray(tiles.astype(np.uint8)).save(tmp_path / "huge.jpg", quality=85)
    del rows, cols, tiles
    completed = subprocess.run(
        [sys.executable, "-c", _PEAK_CHILD, str(tmp_path / "huge.jpg"), str(tmp_path / "out"), str(classes)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert any("sliding-window inference" in message for message in result["messages"])
    assert Image.open(tmp_path / "out" / "huge.png").size == (width, height)
    accumulator = 2 * classes * AUTO_CROP * width * 4
    bound_mib = (16 * height * width + accumulator) / MIB + 512
    assert result["peak"] - result["before"] < bound_mib, result


# ------------------------------------------------------------------------------------------ evaluation


@pytest.fixture
def voc_val(tmp_path):
    make_voc(tmp_path / "voc")
    return build_dataset("voc", tmp_path / "voc", "val")


def test_an_unwritable_eval_folder_fails_before_any_image_is_evaluated(model, voc_val, tmp_path):
    (tmp_path / "taken").write_text("a file where the folder should go")  # stops root as well as anyone
    counting = _Counting(model)
    with pytest.raises(ConfigError, match=r"cannot write the evaluation output folder .*taken/eval: Not a directory"):
        run_evaluation(counting, voc_val, out_dir=tmp_path / "taken" / "eval", device=torch.device("cpu"),
                       progress=False)  # fmt: skip
    assert counting.batches == []


def test_eval_scores_reach_the_caller_before_the_files_and_survive_a_full_disk(model, voc_val, tmp_path, monkeypatch):
    out = tmp_path / "eval"
    delivered = []

    def full_disk(directory, **details):
        raise OSError(errno.ENOSPC, "No space left on device", str(directory / "report.html"))

    monkeypatch.setattr(atrous.evaluation, "write_run_report", full_disk)
    with pytest.raises(ConfigError, match=r"evaluation finished \(mIoU 0\.\d{4}\) but writing its results failed: "
                                          r".*report\.html: No space left on device"):  # fmt: skip
        run_evaluation(model, voc_val, out_dir=out, device=torch.device("cpu"), progress=False,
                       on_scores=lambda result: delivered.append((result.scores, (out / "metrics.json").exists())))  # fmt: skip
    ((scores, metrics_existed),) = delivered
    assert not metrics_existed  # printed before any file was written
    assert json.loads((out / "metrics.json").read_text())["mIoU"] == pytest.approx(scores["mIoU"], nan_ok=True)


# ------------------------------------------------------------------------------------------ export


def test_export_refuses_to_overwrite_the_weights_however_spelled(model, tmp_path):
    weights = tmp_path / "model.pt"
    weights.write_bytes(b"weights")
    (tmp_path / "sub").mkdir()
    for spelling in (weights, tmp_path / "sub" / ".." / "model.pt"):
        with pytest.raises(
            ConfigError, match=r"refusing to write .*model\.pt: it is the weights file .*; choose another --out"
        ):
            export_model(model, spelling, format="torchscript", protected={weights: "the weights file"})
    assert weights.read_bytes() == b"weights"


def test_a_failed_export_leaves_the_previous_file_whole(model, tmp_path, monkeypatch):
    out = tmp_path / "model.torchscript.pt"
    out.write_bytes(b"yesterday's good export")

    def broken_trace(*args, **kwargs):
        raise RuntimeError("tracing failed")

    monkeypatch.setattr(torch.jit, "trace", broken_trace)
    with pytest.raises(RuntimeError, match="tracing failed"):
        export_model(model, out, format="torchscript")
    assert out.read_bytes() == b"yesterday's good export"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model.torchscript.pt"]  # no partial file left


# ------------------------------------------------------------------------------------------ ONNX cache


def _check_onnxruntime_logits(inference, model):
    images = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(inference(images).logits, model(images).logits, rtol=0, atol=1e-3)


def test_onnx_cache_keeps_the_most_recently_used_entries(model, tmp_path, monkeypatch):
    monkeypatch.setenv("ATROUS_ONNX_CACHE_ENTRIES", "2")
    folder = tmp_path / "onnx"
    folder.mkdir()
    now = time.time()
    for name, last_use in (("older.onnx", now - 200), ("recent.onnx", now - 100), (".x.onnx.1.partial", now - 2 * 86400),
                           (".y.onnx.2.partial", now)):  # fmt: skip
        (folder / name).write_bytes(b"entry")
        os.utime(folder / name, (last_use, last_use))
    path = cached_onnx(model, tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == sorted([path.name, "recent.onnx", ".y.onnx.2.partial"])
    os.utime(path, (now - 1000, now - 1000))
    assert cached_onnx(model, tmp_path) == path  # a hit: marked used, not exported again
    assert path.stat().st_atime >= now and path.stat().st_mtime == pytest.approx(now - 1000)


def test_a_corrupted_cache_entry_is_exported_again(model, tmp_path, caplog):
    path = cached_onnx(model, tmp_path)
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])  # what a full disk or a killed copy leaves
    with caplog.at_level(logging.WARNING, logger="atrous"):
        inference = prepare_inference(model, "onnxruntime", device=torch.device("cpu"), cache_dir=tmp_path)
    assert "the cached ONNX export cannot be loaded" in caplog.text and "exporting it again" in caplog.text
    assert path.stat().st_size == len(whole)
    _check_onnxruntime_logits(inference, model)


def test_a_cache_that_cannot_be_written_costs_an_export_not_the_run(model, tmp_path, caplog):
    blocked = tmp_path / "cache"
    blocked.write_text("a file where the cache folder should go")  # stops root as well as anyone
    with caplog.at_level(logging.WARNING, logger="atrous"):
        inference = prepare_inference(model, "onnxruntime", device=torch.device("cpu"), cache_dir=blocked)
    assert "cannot be written" in caplog.text and "temporary folder for this run only" in caplog.text
    _check_onnxruntime_logits(inference, model)


def test_a_read_only_cache_is_read_and_never_written(model, tmp_path, caplog):
    cached_onnx(model, tmp_path)
    folder = tmp_path / "onnx"
    folder.chmod(0o555)
    try:
        try:
            (folder / "probe").touch()
        except PermissionError:
            pass
        else:
            (folder / "probe").unlink()
            pytest.skip("running as root: chmod does not stop writes (the test above covers the fallback)")
        with caplog.at_level(logging.WARNING, logger="atrous"):
            _check_onnxruntime_logits(prepare_inference(model, "onnxruntime", cache_dir=tmp_path), model)
            assert caplog.text == ""  # the entry it holds is used as it is
            other = randomise_batchnorm(atrous.build_model("deeplabv2", backbone="mobilenet_v3_large",
                                                           num_classes=21, output_stride=32), seed=1).eval()  # fmt: skip
            _check_onnxruntime_logits(prepare_inference(other, "onnxruntime", cache_dir=tmp_path), other)
        assert "cannot be written" in caplog.text
    finally:
        folder.chmod(0o755)


# ------------------------------------------------------------------------- predict: the careless user (issue 29)


def test_an_output_folder_among_the_input_folders_is_refused_before_any_work(model, tmp_path):
    """``--out`` equal to an input folder, inside one, or holding one: refused, nothing written anywhere."""
    from atrous.predict import refuse_output_among_inputs

    photos = tmp_path / "photos"
    write_jpeg(photos / "a.jpg", 24, 32)
    before = _files(tmp_path)
    for out, relation in ((photos, "is"), (photos / "predictions", "lies inside"), (tmp_path, "holds")):
        with pytest.raises(ConfigError, match=rf"--out {out} {relation} the input folder {photos}: .* outside it"):
            refuse_output_among_inputs([str(photos)], out)
    refuse_output_among_inputs([str(photos)], tmp_path / "elsewhere")  # a folder beside the inputs is fine
    refuse_output_among_inputs([str(photos / "a.jpg")], tmp_path)  # a file input: its own outputs are checked by name
    assert _files(tmp_path) == before


def test_the_command_line_refuses_out_inside_the_inputs_before_reading_the_model(tmp_path, capsys):
    from atrous.cli import main

    photos = tmp_path / "photos"
    write_jpeg(photos / "a.jpg", 24, 32)
    # The weights file does not exist: the refusal comes first, before the model is looked for.
    assert main(["predict", "--weights", str(tmp_path / "absent.pt"), str(photos), "--out", str(photos / "out")]) == 2
    assert "lies inside the input folder" in capsys.readouterr().err
    assert not (photos / "out").exists()


def test_unreadable_images_are_named_and_skipped_and_every_other_one_is_predicted(model, tmp_path, caplog):
    photos = tmp_path / "photos"
    for index in range(4):
        write_jpeg(photos / f"good_{index}.jpg", 24, 32, seed=index)
    truncated_jpeg = photos / "cut.jpg"
    truncated_jpeg.write_bytes(write_jpeg(photos / "whole.jpg", 24, 32).read_bytes()[:300])
    (photos / "whole.jpg").unlink()
    truncated_png = write_png(photos / "cut.png", np.zeros((24, 32), dtype=np.uint8))
    truncated_png.write_bytes(truncated_png.read_bytes()[:20])  # the header itself is cut
    out = tmp_path / "out"
    with caplog.at_level("WARNING", logger="atrous"), pytest.raises(atrous.predict.UnreadableImagesError) as failed:
        _predict(model, expand_inputs([str(photos)]), out, batch_size=2)
    error = failed.value
    assert str(error).startswith(f"4 of 6 images predicted and written to {out}; 2 could not be read: ")
    assert set(error.unreadable) == {truncated_jpeg, truncated_png} and len(error.written) == 4
    assert str(truncated_jpeg) in str(error) and str(truncated_png) in str(error)
    assert str(truncated_jpeg) in caplog.text and str(truncated_png) in caplog.text  # named as they happened
    labels = sorted(path.name for path in out.glob("*.png") if not path.stem.endswith("_overlay"))
    assert labels == [*(f"good_{i}.png" for i in range(4)), "legend.png"]
    for index in range(4):
        assert read_image(out / f"good_{index}_overlay.png").shape == (24, 32, 3)
