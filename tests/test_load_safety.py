"""Files that would make atrous answer silently wrong are refused with an error naming the file: a classifier for other
classes used as trained, weights that cannot be the model's values, pickled code, images whose data ends early, and
a DataLoader worker's error buried under its traceback."""

import binascii
import io
import os
import pickle
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

import atrous
import atrous.checkpoint
from atrous.checkpoint import model_checkpoint
from atrous.cli import main
from atrous.data.base import SegmentationDataset
from atrous.data.io import read_image, read_mask
from atrous.errors import DataError, WeightsError, user_message
from atrous.models import ModelSpec

SPEC = ModelSpec(name="deeplabv3", backbone="resnet18", num_classes=3)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(a 3-class model, its atrous checkpoint file)."""
    torch.manual_seed(0)
    model = atrous.build_model(SPEC).eval()
    model.set_labels(["sky", "road", "car"], None)
    path = tmp_path_factory.mktemp("trained") / "three_classes.pt"
    torch.save(model_checkpoint(model), path)
    return model, path


def _image(tmp_path):
    path = tmp_path / "image.png"
    Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(path)
    return path


# --------------------------------------------------------------------------- a classifier for other classes


@pytest.mark.parametrize("spec", ["deeplabv3", ["deeplabv3"], 3])
def test_a_checkpoint_whose_spec_is_not_a_mapping_says_so(trained, tmp_path, spec):
    contents = {**model_checkpoint(trained[0]), "spec": spec}
    torch.save(contents, tmp_path / "edited.pt")
    with pytest.raises(WeightsError, match=rf"edited.pt: its 'spec' is {type(spec).__name__} .*, not the mapping"):
        atrous.load_trained_model(tmp_path / "edited.pt")


def test_a_trained_model_asked_for_other_classes_is_refused(trained, tmp_path, capsys):
    _, path = trained
    with pytest.raises(WeightsError, match=rf"{path.name}'s classifier predicts 3 classes; 5 were asked "
                                           r"\(num_classes=5, --num-classes 5\): drop num_classes"):  # fmt: skip
        atrous.load_trained_model(path, overrides={"num_classes": 5})
    assert main(["predict", "--weights", str(path), str(_image(tmp_path)), "--num-classes", "5",
                 "--out", str(tmp_path / "out")]) == 2  # fmt: skip
    assert "predicts 3 classes; 5 were asked" in capsys.readouterr().err


def test_a_spec_with_other_classes_is_refused_too(trained):
    _, path = trained
    with pytest.raises(WeightsError, match=rf"{path.name}'s classifier predicts 3 classes but the model was built "
                                           r"for 5: build it with num_classes=3"):  # fmt: skip
        atrous.load_trained_model(path, spec=ModelSpec(name="deeplabv3", backbone="resnet18", num_classes=5))
    assert atrous.load_trained_model(path, overrides={"num_classes": 3}).num_classes == 3


def test_a_file_without_a_classifier_is_not_a_trained_model():
    import torchvision

    backbone_only = torchvision.models.resnet18(weights=None).state_dict()  # ImageNet layout: fills backbone.* only
    with pytest.raises(WeightsError, match="holds no classifier for the model's head"):
        atrous.from_pretrained(backbone_only, spec=SPEC)
    atrous.from_pretrained(backbone_only, spec=SPEC, new_classifier_ok=True)  # a start for fine-tuning


def test_a_zoo_model_asked_for_other_classes_is_refused_before_downloading(offline_hub):
    expected = "deeplabv3_resnet50_coco_voc's classifier predicts 21 classes; 5 were asked"
    with pytest.raises(WeightsError, match=expected):  # not the offline hub's "could not download"
        atrous.from_pretrained("deeplabv3_resnet50_coco_voc", num_classes=5)


def test_fine_tuning_still_starts_from_a_file_with_other_classes(trained):
    model, path = trained
    fine_tuned = atrous.build_model(SPEC, num_classes=5, weights=str(path))  # model.weights in a training config
    report = atrous.load_weights(atrous.build_model(SPEC, num_classes=5), path)
    started = atrous.from_pretrained(path, num_classes=5, new_classifier_ok=True)
    assert "head.classifier.weight" in report.skipped and report.ok
    for candidate in (fine_tuned, started):
        assert candidate.num_classes == 5
        for key, value in model.backbone.state_dict().items():
            torch.testing.assert_close(candidate.backbone.state_dict()[key], value, rtol=0, atol=0)
    assert started.class_names is None  # the file's names describe its own 3 classes


# ------------------------------------------------------------------------------ values that are not weights


KEY = "head.classifier.weight"  # (3, 256, 1, 1)


@pytest.mark.parametrize(
    ("spoil", "expected"),
    [
        (lambda t: t.long(), r"is int64 \(the model's is float32\)"),
        (lambda t: t > 0, r"is bool \(the model's is float32\)"),
        (lambda t: t.to(torch.complex64), r"is complex64 \(the model's is float32\)"),
        (lambda t: t.index_fill(0, torch.tensor([0, 2]), float("nan")), r"has 512 NaN/inf values of 768"),
        (lambda t: t.index_fill(0, torch.tensor([1]), float("inf")), r"has 256 NaN/inf values of 768"),
    ],
    ids=["int64", "bool", "complex", "nan", "inf"],
)
def test_tensors_that_cannot_be_weights_are_refused(trained, tmp_path, spoil, expected):
    model, _ = trained
    state = model.state_dict()
    state[KEY] = spoil(state[KEY])
    with pytest.raises(WeightsError, match=rf"<state dict>: 1 tensor cannot be the model's weights: {KEY} {expected}"):
        atrous.load_weights(atrous.build_model(SPEC), state)
    path = tmp_path / "spoiled.pt"
    spoiled = {**model_checkpoint(model), "model": state}
    del spoiled["checksum"]  # as if edited by hand (with it, the checksum refuses the file first)
    torch.save(spoiled, path)
    with pytest.raises(WeightsError, match=rf"spoiled.pt: 1 tensor cannot be the model's weights: {KEY} {expected}"):
        atrous.load_trained_model(path)


def test_a_nan_count_is_exact_and_several_tensors_are_named(trained):
    model, _ = trained
    state = model.state_dict()
    state["head.classifier.bias"] = torch.tensor([0.0, float("nan"), float("-inf")])
    state["backbone.conv1.weight"] = state["backbone.conv1.weight"].double().fill_(float("nan"))
    count = state["backbone.conv1.weight"].numel()
    with pytest.raises(WeightsError) as error:
        atrous.load_weights(atrous.build_model(SPEC), state)
    assert "2 tensors cannot be" in str(error.value)
    assert f"backbone.conv1.weight has {count} NaN/inf values of {count}" in str(error.value)
    assert "head.classifier.bias has 2 NaN/inf values of 3" in str(error.value)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_float_dtypes_are_cast_and_integer_buffers_stay_legitimate(trained, dtype):
    model, _ = trained
    state = {key: value.to(dtype) if value.is_floating_point() else value for key, value in model.state_dict().items()}
    assert state["backbone.bn1.num_batches_tracked"].dtype == torch.int64
    loaded = atrous.build_model(SPEC)
    assert atrous.load_weights(loaded, state).ok
    for key, value in loaded.state_dict().items():
        assert value.dtype == model.state_dict()[key].dtype
        torch.testing.assert_close(value, state[key].to(value.dtype), rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------ checksums


def test_an_atrous_file_changed_after_it_was_written_is_refused_by_eval_and_predict(trained, tmp_path, capsys):
    """One weight changed, the stored checksum kept (what a flipped byte on disk amounts to): never loaded."""
    model, _ = trained
    contents = model_checkpoint(model)
    contents["model"][KEY] = contents["model"][KEY].clone()
    contents["model"][KEY].view(-1)[7] += 1e-3
    torch.save(contents, tmp_path / "changed.pt")
    with pytest.raises(WeightsError, match="changed.pt: the weights do not match the checksum stored with them"):
        atrous.load_trained_model(tmp_path / "changed.pt")
    assert main(["predict", "--weights", str(tmp_path / "changed.pt"), str(_image(tmp_path)), "--out",
                 str(tmp_path / "out")]) == 2  # fmt: skip
    assert "do not match the checksum" in capsys.readouterr().err and not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------- pickled code


class _System:
    """Unpickled by a permissive loader, it runs a shell command that leaves a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Exec:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def _save_zip(obj, path):
    torch.save(obj, path)


def _save_legacy(obj, path):
    torch.save(obj, path, _use_new_zipfile_serialization=False)


def _save_pickle(obj, path):
    with open(path, "wb") as handle:
        pickle.dump(obj, handle)  # protocol 5: a stream torch's weights-only reader cannot even frame


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch's, reading the pickle.dump file
@pytest.mark.parametrize("save", [_save_zip, _save_legacy, _save_pickle], ids=["zip", "legacy", "pickle"])
@pytest.mark.parametrize("wrap", [lambda p: p, lambda p: {"model": p}], ids=["bare", "in_a_dict"])
def test_a_file_that_asks_to_run_a_command_is_refused_and_nothing_runs(tmp_path, save, wrap):
    marker = tmp_path / "payload_ran"
    path = tmp_path / "hostile.pth"
    save(wrap(_System(marker)), path)
    with pytest.raises(WeightsError) as error:
        atrous.load_trained_model(path)
    message = str(error.value)
    assert message.startswith(f"{path}: refused for safety: the file holds pickled code or objects")
    assert "asks to call posix.system" in message or "asks to call os.system" in message
    assert "weights_only" not in message and "\n" not in message
    assert not marker.exists()
    if save is _save_pickle:  # the control: a permissive loader does run it, so the assertions above could fail
        with open(path, "rb") as handle:
            pickle.load(handle)
        assert marker.exists()


def test_a_file_of_placeholders_only_names_what_it_asked_for(tmp_path, capsys):
    marker = tmp_path / "payload_ran"
    path = tmp_path / "hostile.pth"
    torch.save({"model": _Exec(marker)}, path)  # builtins.exec is read as an inert placeholder, never called
    with pytest.raises(WeightsError, match="holds no tensors at the top level; first keys: model; refused for "
                                           "safety: .* asks to call builtins.exec"):  # fmt: skip
        atrous.load_trained_model(path)
    assert main(["predict", "--weights", str(path), str(_image(tmp_path)), "--out", str(tmp_path / "out")]) == 2
    printed = capsys.readouterr().err
    assert "refused for safety" in printed and "weights_only" not in printed
    assert not marker.exists()


def test_a_damaged_file_is_called_damaged_not_hostile(tmp_path):
    path = tmp_path / "noise.pth"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())
    with pytest.raises(WeightsError, match=r"noise.pth: cannot read weights \(truncated or damaged file\?\)") as error:
        atrous.load_trained_model(path)
    assert "weights_only" not in str(error.value) and "refused" not in str(error.value)


# ------------------------------------------------------------------------------------ images that end early


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", binascii.crc32(kind + data))


def _png(rows: np.ndarray, *, height: int | None = None, colour: int = 0, palette: bool = False) -> bytes:
    """A PNG of the (H, W) or (H, W, C) uint8 ``rows`` (filter 0, one IDAT) whose header says ``height`` rows: a
    complete zlib stream that holds fewer rows than the header promises when ``height`` is larger."""
    height = height or rows.shape[0]
    header = struct.pack(">IIBBBBB", rows.shape[1], height, 8, colour, 0, 0, 0)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)
    plte = _chunk(b"PLTE", bytes(range(256)) * 3) if palette else b""
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + plte + _chunk(b"IDAT", zlib.compress(raw))
            + _chunk(b"IEND", b""))  # fmt: skip


def _interlaced_png(array: np.ndarray) -> bytes:
    """A grayscale Adam7 PNG of ``array`` (Pillow writes no interlaced PNGs)."""
    passes = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
    raw = b""
    for x, y, dx, dy in passes:
        sub = array[y::dy, x::dx]
        if sub.size:
            raw += b"".join(b"\x00" + row.tobytes() for row in sub)
    header = struct.pack(">IIBBBBB", array.shape[1], array.shape[0], 8, 0, 0, 0, 1)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b"")


def test_a_png_whose_data_holds_only_its_first_rows_is_refused(tmp_path):
    path = tmp_path / "four_rows.png"
    path.write_bytes(_png(np.full((4, 2000), 7, np.uint8), height=2000))
    with Image.open(path) as image:  # what the check stands in for: Pillow fills the missing rows with zeros
        image.load()
        assert np.asarray(image)[-1].max() == 0
    with pytest.raises(DataError, match=rf"{path}: image data ends after 4 of 2000 rows"):
        read_image(path)
    rgb = tmp_path / "rgb.png"
    rgb.write_bytes(_png(np.full((3, 50, 3), 9, np.uint8), height=40, colour=2))
    with pytest.raises(DataError, match="image data ends after 3 of 40 rows"):
        read_image(rgb)


def test_a_mask_whose_data_stops_halfway_is_refused(tmp_path):
    labels = (np.arange(200 * 30).reshape(200, 30) % 5).astype(np.uint8)
    path = tmp_path / "half.png"
    path.write_bytes(_png(labels[:100], height=200, colour=3, palette=True))
    with pytest.raises(DataError, match=rf"{path}: mask data ends after 100 of 200 rows"):
        read_mask(path)
    complete = tmp_path / "complete.png"
    complete.write_bytes(_png(labels, colour=3, palette=True))
    np.testing.assert_array_equal(read_mask(complete), labels)


def test_a_png_cut_inside_its_data_is_refused(tmp_path):
    labels = (np.random.default_rng(0).integers(0, 21, (120, 90))).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(labels).save(buffer, "PNG")
    path = tmp_path / "cut.png"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(DataError, match=rf"{path}: mask data ends after \d+ of 120 rows"):
        read_mask(path)


def test_interlaced_pngs_are_counted_pass_by_pass(tmp_path):
    array = (np.arange(13 * 11).reshape(13, 11) * 3 % 256).astype(np.uint8)  # sizes that leave passes partial
    path = tmp_path / "interlaced.png"
    path.write_bytes(_interlaced_png(array))
    np.testing.assert_array_equal(read_mask(path), array)
    data = path.read_bytes()
    idat = data.index(b"IDAT") - 4
    length = struct.unpack(">I", data[idat : idat + 4])[0]
    compressed = zlib.decompress(data[idat + 8 : idat + 8 + length])
    short = zlib.compress(compressed[: len(compressed) - 20])
    path.write_bytes(data[:idat] + _chunk(b"IDAT", short) + _chunk(b"IEND", b""))
    with pytest.raises(DataError, match=rf"image data ends after {len(compressed) - 20} of {len(compressed)} bytes"):
        read_image(path)


@pytest.mark.parametrize("mode", ["L", "P", "I;16", "1", "RGB", "RGBA", "LA"])
def test_complete_pngs_of_every_kind_read_as_written(tmp_path, mode):
    values = (np.arange(37 * 23).reshape(37, 23) % 200).astype(np.uint8)
    image = {"1": lambda: Image.fromarray(values > 100), "I;16": lambda: Image.fromarray(values.astype(np.uint16))}.get(
        mode, lambda: Image.fromarray(values).convert(mode)
    )()
    path = tmp_path / f"{mode.replace(';', '_')}.png"
    image.save(path)
    if mode in ("RGB", "RGBA", "LA"):
        np.testing.assert_array_equal(read_image(path), np.asarray(image.convert("RGB")))
    else:
        np.testing.assert_array_equal(read_mask(path), np.asarray(image).astype(np.uint8))


def test_a_truncated_jpeg_is_refused(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 80, 3), dtype=np.uint8)).save(buffer, "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(DataError, match=rf"{path}: cannot decode image: image file is truncated"):
        read_image(path)


# ----------------------------------------------------------------------------------- a DataLoader worker's error


def test_a_worker_error_comes_back_as_its_one_line(tmp_path):
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((200, 30, 3), np.uint8)).save(image)
    mask = tmp_path / "a_mask.png"
    mask.write_bytes(_png(np.zeros((100, 30), np.uint8), height=200))
    dataset = SegmentationDataset([(image, mask)], class_names=["a", "b"], palette=np.zeros((256, 3), np.uint8),
                                  label_table=np.arange(256, dtype=np.uint8), valid_raw=np.arange(256) < 2)  # fmt: skip
    with pytest.raises(DataError) as error:
        next(iter(DataLoader(dataset, num_workers=1)))
    assert str(error.value).startswith("Caught DataError in DataLoader worker process 0.")  # what torch does
    assert user_message(error.value) == f"{mask}: mask data ends after 100 of 200 rows: a truncated or damaged PNG " \
                                        "(its other rows would read as zeros)"  # fmt: skip
    assert user_message(DataError("x.png: bad")) == "x.png: bad"
    assert user_message(WeightsError("a\nb")) == "a\nb"  # a message of several lines stays whole


def test_a_checkpoints_stored_spec_never_chooses_weights_to_download_or_open(tmp_path, monkeypatch):
    """Issue 29, B7: ``spec.pretrained_backbone`` / ``spec.weights`` in a file are initialisation choices, not the
    architecture: never obeyed when the file is read (no download, no other file opened), and the labels the file
    carries are checked as untrusted input (B9) before anything is built from them."""
    import torch.hub

    from atrous.checkpoint import model_checkpoint

    model = atrous.build_model("deeplabv3", backbone="resnet18", num_classes=3)
    contents = model_checkpoint(model)
    contents["spec"] = {**contents["spec"], "pretrained_backbone": "imagenet", "weights": str(tmp_path / "fifo")}
    os.mkfifo(tmp_path / "fifo")  # opening it would block forever
    path = tmp_path / "steering.pt"
    torch.save(contents, path)
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("downloaded"))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda *a, **k: pytest.fail("downloaded"))
    loaded = atrous.from_pretrained(path)
    assert loaded.spec.pretrained_backbone is None and loaded.spec.weights is None
    torch.testing.assert_close(loaded.state_dict(), model.state_dict())

    for key, value, expected in [
        ("class_names", ["a", 7, "c"], r"class_names\[1\] is a int .* not a class name"),
        ("class_names", "abc", r"class_names is a str of length 3, not a list"),
        ("class_names", ["a", "b", "x" * 10_000], r"class_names\[2\] is a str of length 10000"),
        ("palette", [[0, 0, 0], [1, 2], [3, 4, 5]], r"palette\[1\] is \[1, 2\], not \[r, g, b\]"),
        ("palette", [[0, 0, 0]] * 100_000, r"palette is a list of length 100000, not rows"),
        ("palette", [[0, 0, 0], [0, 0, 300], [0, 0, 1]], r"palette\[1\] is \[0, 0, 300\]"),
    ]:
        crafted = {**model_checkpoint(model), key: value}
        if key == "palette":
            crafted["class_names"] = ["a", "b", "c"]
        torch.save(crafted, tmp_path / "labels.pt")
        with pytest.raises(WeightsError, match=rf"labels.pt: its {expected}"):
            atrous.from_pretrained(tmp_path / "labels.pt")
