"""Loaders on tiny fixtures in each real layout; label mappings value by value; bad input; checks; stats."""

import json

import numpy as np
import pytest
from data_fixtures import make_cityscapes, make_sbd, make_voc, write_jpeg, write_png
from PIL import Image

from atrous.cli import main
from atrous.data import DataError, SynthSpec, build_dataset, read_image, read_mask, write_synthetic
from atrous.data.checks import class_statistics, read_class_weights
from atrous.data.classes import CITYSCAPES_LABEL_TO_TRAIN, COCO_STUFF_UNUSED_IDS
from atrous.errors import ConfigError


def test_voc_splits_read_palette_indices(tmp_path):
    make_voc(tmp_path)
    train = build_dataset("voc", tmp_path, "train")
    assert [p[0].stem for p in train.samples] == ["a", "b", "c"]
    assert len(build_dataset("voc", tmp_path / "VOCdevkit", "val")) == 2
    assert len(build_dataset("voc", tmp_path / "VOCdevkit" / "VOC2012", "trainval")) == 5
    image, mask = train[0]
    raw = np.asarray(Image.open(train.samples[0][1]))
    assert Image.open(train.samples[0][1]).mode == "P"
    assert image.shape == (24, 32, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(mask, raw)  # palette index = class, 255 kept
    assert train.num_classes == 21 and train.class_names[15] == "person"
    assert tuple(train.palette[15]) == (192, 128, 128) and tuple(train.palette[255]) == (224, 224, 192)


def test_trainaug_is_voc_train_plus_sbd_minus_voc_val(tmp_path):
    voc = make_voc(tmp_path, train=("a", "b", "c"), val=("d", "e"))
    sbd = make_sbd(tmp_path, train=("b", "f", "d"), val=("g",))
    dataset = build_dataset("voc", tmp_path, "trainaug")
    ids = [image.stem for image, _ in dataset.samples]
    assert ids == ["a", "b", "c", "f", "g"]  # d is VOC val: excluded
    masks = {image.stem: mask for image, mask in dataset.samples}
    assert masks["b"] == voc / "SegmentationClass" / "b.png"  # VOC's annotation preferred
    assert masks["f"] == sbd / "cls" / "f.mat"
    from scipy.io import loadmat

    _, mask = dataset[ids.index("f")]
    np.testing.assert_array_equal(mask, loadmat(sbd / "cls" / "f.mat")["GTcls"][0]["Segmentation"][0])


def test_trainaug_without_sbd_says_where_to_put_it(tmp_path):
    make_voc(tmp_path)
    with pytest.raises(FileNotFoundError, match="benchmark_RELEASE/dataset"):
        build_dataset("voc", tmp_path, "trainaug")


def test_cityscapes_label_ids_map_value_by_value(tmp_path):
    raw = np.tile(np.append(np.arange(34), 255).astype(np.uint8), (3, 1))  # every labelId, and 255
    make_cityscapes(tmp_path, raw)
    dataset = build_dataset("cityscapes", tmp_path, "train")
    assert len(dataset) == 2 and dataset.num_classes == 19
    _, mask = dataset[0]
    expected = {label_id: CITYSCAPES_LABEL_TO_TRAIN.get(label_id, 255) for label_id in range(34)}
    for column, label_id in enumerate(range(34)):
        assert mask[0, column] == expected[label_id], label_id
    assert (mask[0, 7], mask[0, 26], mask[0, 33]) == (0, 13, 18)
    assert all(mask[0, i] == 255 for i in range(7))
    assert mask[0, 34] == 255


def test_cityscapes_train_ids_are_accepted_and_convert_writes_them(tmp_path):
    raw = np.tile(np.array([7, 8, 26, 33, 0, 255], dtype=np.uint8), (4, 2))
    make_cityscapes(tmp_path, raw)
    before = build_dataset("cityscapes", tmp_path, "train")
    assert before.samples[0][1].name.endswith("_gtFine_labelIds.png")
    assert main(["data", "convert", "--dataset", "cityscapes", "--root", str(tmp_path), "--split", "train"]) == 0
    after = build_dataset("cityscapes", tmp_path, "train")
    assert after.samples[0][1].name.endswith("_gtFine_labelTrainIds.png")
    np.testing.assert_array_equal(after[0][1], before[0][1])
    np.testing.assert_array_equal(after[0][1][0, :6], [0, 1, 13, 18, 255, 255])


def test_gta5_maps_to_cityscapes_and_reports_size_mismatch_by_name(tmp_path):
    raw = np.array([[7, 26, 33, 3]], dtype=np.uint8).repeat(5, axis=0)
    write_png(tmp_path / "images" / "00001.png", np.zeros((5, 4, 3), dtype=np.uint8))
    write_png(tmp_path / "labels" / "00001.png", raw)
    write_png(tmp_path / "images" / "00002.png", np.zeros((6, 4, 3), dtype=np.uint8))
    write_png(tmp_path / "labels" / "00002.png", raw)
    dataset = build_dataset("gta5", tmp_path, "all")
    np.testing.assert_array_equal(dataset[0][1][0], [0, 13, 18, 255])
    with pytest.raises(DataError, match=r"size mismatch: image .*00002.png is 4x6 but mask .*00002.png is 4x5"):
        dataset[1]


def test_ade20k_reduces_the_zero_label(tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    write_jpeg(root / "images" / "training" / "ADE_train_00000001.jpg", 2, 151)
    write_png(root / "annotations" / "training" / "ADE_train_00000001.png", np.tile(np.arange(151, dtype=np.uint8), (2, 1)))
    dataset = build_dataset("ade20k", tmp_path, "train")
    _, mask = dataset[0]
    assert mask[0, 0] == 255 and mask[0, 1] == 0 and mask[0, 150] == 149
    np.testing.assert_array_equal(mask[0, 1:], np.arange(150))
    assert dataset.num_classes == 150


def test_coco_stuff_renumbers_182_ids_to_171_classes(tmp_path):
    raw = np.tile(np.append(np.arange(182), 255).astype(np.uint8), (2, 1))
    write_jpeg(tmp_path / "images" / "val2017" / "000000000139.jpg", 2, 183)
    write_png(tmp_path / "annotations" / "val2017" / "000000000139.png", raw)
    dataset = build_dataset("coco_stuff", tmp_path, "val")
    _, mask = dataset[0]
    assert dataset.num_classes == 171
    assert mask[0, 12] == 11 and mask[0, 0] == 0 and mask[0, 181] == 170 and mask[0, 182] == 255
    assert all(mask[0, unused] == 255 for unused in COCO_STUFF_UNUSED_IDS)
    used = [mask[0, i] for i in range(182) if i not in COCO_STUFF_UNUSED_IDS]
    assert used == list(range(171))
    assert dataset.class_names[11] == "stop sign"


def test_folder_dataset_with_binary_mapping(tmp_path):
    binary = np.zeros((6, 8), dtype=np.uint8)
    binary[2:4, 2:6] = 255
    write_jpeg(tmp_path / "images" / "cell_01.jpg", 6, 8)
    write_png(tmp_path / "masks" / "cell_01.png", binary)
    write_png(tmp_path / "images" / "cell_02.png", np.zeros((6, 8, 3), dtype=np.uint8))
    write_png(tmp_path / "masks" / "cell_02.png", binary)
    dataset = build_dataset("folder", tmp_path, None, label_mapping={0: 0, 255: 1})
    assert len(dataset) == 2 and dataset.num_classes == 2
    np.testing.assert_array_equal(dataset[0][1], (binary == 255).astype(np.uint8))
    binary[0, 0] = 128
    write_png(tmp_path / "masks" / "cell_02.png", binary)
    with pytest.raises(DataError, match=r"cell_02.png: label values \[128\]"):
        dataset[1]
    write_jpeg(tmp_path / "images" / "orphan.jpg", 6, 8)
    with pytest.raises(DataError, match="no mask.*orphan.jpg"):
        build_dataset("folder", tmp_path, None, label_mapping={0: 0, 255: 1})


def test_out_of_range_labels_raise_naming_file_and_values(tmp_path):
    voc = make_voc(tmp_path)
    mask = np.zeros((24, 32), dtype=np.uint8)
    mask[3, 3], mask[4, 4] = 40, 21
    write_png(voc / "SegmentationClass" / "a.png", mask, palette=True)
    dataset = build_dataset("voc", tmp_path, "train")
    with pytest.raises(ValueError, match=r"a.png: label values \[21, 40\] are not valid .*0..20, 255"):
        dataset[0]


def test_bad_files_raise_by_default_and_are_skipped_and_counted_on_request(tmp_path, caplog):
    voc = make_voc(tmp_path)
    (voc / "JPEGImages" / "b.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    strict = build_dataset("voc", tmp_path, "train")
    with pytest.raises(DataError, match="b.jpg: cannot decode image"):
        strict[1]
    lenient = build_dataset("voc", tmp_path, "train", on_error="skip")
    image, _ = lenient[1]  # b is replaced by the next good sample, c
    np.testing.assert_array_equal(image, read_image(voc / "JPEGImages" / "c.jpg"))
    assert lenient.skipped == 1 and "b.jpg" in caplog.text


def test_truncated_jpeg_is_an_error(tmp_path):
    path = write_jpeg(tmp_path / "t.jpg", 64, 64)
    path.write_bytes(path.read_bytes()[:400])
    with pytest.raises(DataError, match="t.jpg"):
        read_image(path)


def test_exif_orientation_and_image_modes_become_rgb_uint8(tmp_path):
    base = np.random.default_rng(0).integers(0, 256, (10, 20, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    Image.fromarray(base).save(tmp_path / "rotated.jpg", exif=exif.tobytes(), quality=95)
    assert read_image(tmp_path / "rotated.jpg").shape == (20, 10, 3)
    Image.fromarray(base).convert("L").save(tmp_path / "gray.png")
    Image.fromarray(base).convert("RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(base).convert("P").save(tmp_path / "palette.png")
    Image.fromarray(base).convert("CMYK").save(tmp_path / "cmyk.jpg")
    Image.fromarray(np.arange(200, dtype=np.uint16).reshape(10, 20) * 300).save(tmp_path / "deep.png")
    for name in ("gray.png", "rgba.png", "palette.png", "cmyk.jpg", "deep.png"):
        image = read_image(tmp_path / name)
        assert image.shape == (10, 20, 3) and image.dtype == np.uint8, name
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png"), base)
    deep = read_image(tmp_path / "deep.png")
    assert deep[0, 0, 0] == 0 and deep[-1, -1, 0] == round(199 * 300 * 255 / 65535)


def test_decompression_bomb_limit_stays_on(tmp_path, monkeypatch):
    path = write_jpeg(tmp_path / "big.jpg", 64, 64)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(DataError, match="big.jpg: refused"):
        read_image(path)


def test_rgb_masks_are_refused(tmp_path):
    path = write_png(tmp_path / "m.png", np.zeros((4, 4, 3), dtype=np.uint8))
    with pytest.raises(DataError, match="m.png: mask has mode RGB"):
        read_mask(path)


def test_data_check_finds_each_planted_fault(tmp_path, capsys):
    voc = make_voc(tmp_path, train=("a", "b", "c", "d"), val=("e",))
    (voc / "JPEGImages" / "a.jpg").write_bytes((voc / "JPEGImages" / "a.jpg").read_bytes()[:300])  # corrupt JPEG
    write_png(voc / "SegmentationClass" / "b.png", np.zeros((10, 10), dtype=np.uint8), palette=True)  # wrong size
    forty = np.zeros((24, 32), dtype=np.uint8)
    forty[5, 5] = 40
    write_png(voc / "SegmentationClass" / "c.png", forty, palette=True)  # label 40 in a 21-class set
    code = main(["data", "check", "--dataset", "voc", "--root", str(tmp_path), "--split", "train"])
    out = capsys.readouterr().out
    assert code == 1
    assert "4 pairs checked, 3 bad" in out
    assert "a.jpg" in out and "b.png" in out and "label values [40]" in out and "d.jpg" not in out
    assert main(["data", "check", "--dataset", "voc", "--root", str(tmp_path), "--split", "val"]) == 0


def test_data_check_warns_when_0_255_masks_are_read_as_class_0_and_ignore(tmp_path, capsys):
    binary = np.zeros((6, 8), dtype=np.uint8)
    binary[1:5, 1:7] = 255  # 24 of 48 pixels: foreground
    for name in ("a", "b"):
        write_jpeg(tmp_path / "images" / f"{name}.jpg", 6, 8)
        write_png(tmp_path / "masks" / f"{name}.png", binary)
    as_classes = ["data", "check", "--dataset", "folder", "--root", str(tmp_path), "--split", "", "--num-classes", "2"]
    assert main(as_classes) == 0  # it loads: warnings, not errors
    out = capsys.readouterr().out
    assert "2 pairs checked, 0 bad, 2 warnings" in out
    assert "1 of 2 classes have no pixel in this split: class_1" in out
    assert "50.0% of all pixels are 255" in out and "--label-map 0:0,255:1" in out
    assert main([*as_classes[:-2], "--label-map", "0:0,255:1"]) == 0
    assert "2 pairs checked, 0 bad, 0 warnings" in capsys.readouterr().out


def test_stats_frequencies_and_weights_match_numpy(tmp_path):
    synthetic_root = write_synthetic(tmp_path / "synth", SynthSpec(train=6, val=2, size=48), progress=False)
    dataset = build_dataset("synthetic", tmp_path / "synth", "train")
    stats = class_statistics(dataset, progress=False)
    masks = np.stack([dataset[i][1] for i in range(len(dataset))])
    counts = np.array([(masks == c).sum() for c in range(dataset.num_classes)])
    np.testing.assert_array_equal(stats["pixel_counts"], counts)
    frequency = counts / counts.sum()
    np.testing.assert_allclose(stats["frequency"], frequency)
    present = counts > 0
    median = np.where(present, np.median(frequency[present]) / np.where(present, frequency, 1), 0)
    np.testing.assert_allclose(stats["weights"]["median_frequency"], median)
    out = tmp_path / "w.json"
    assert main(["data", "stats", "--dataset", "synthetic", "--root", str(tmp_path / "synth"), "--out", str(out)]) == 0
    assert read_class_weights(out, num_classes=7) == pytest.approx(list(median))
    with pytest.raises(ValueError, match="7 class weights, but the model has 21"):
        read_class_weights(out, num_classes=21)
    assert json.loads(out.read_text())["classes"][0] == "background"
    assert synthetic_root.name == "VOC2012"


@pytest.mark.parametrize(
    "name, split, message",
    [
        ("vocc", "train", r"unknown dataset 'vocc'; choose from \['ade20k'"),
        ("cityscapes", "training", r"unknown Cityscapes split 'training'"),
    ],
)
def test_dataset_errors(tmp_path, name, split, message):
    with pytest.raises(ValueError, match=message):
        build_dataset(name, tmp_path, split)


def test_missing_root_and_missing_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_dataset("voc", tmp_path / "nowhere", "train")
    with pytest.raises(FileNotFoundError, match="no PASCAL VOC layout .*VOCdevkit/VOC2012/JPEGImages"):
        build_dataset("voc", tmp_path, "train")
    with pytest.raises(FileNotFoundError, match="no Cityscapes layout"):
        build_dataset("cityscapes", tmp_path, "val")


def test_datasets_work_in_dataloader_workers(tmp_path):
    import torch
    from torch.utils.data import DataLoader

    from atrous.data import train_transforms
    from atrous.models.normalization import IMAGENET_RGB

    write_synthetic(tmp_path, SynthSpec(train=8, val=2, size=40), progress=False)
    dataset = build_dataset("synthetic", tmp_path, "train", transforms=train_transforms(normalization=IMAGENET_RGB, crop_size=32))
    images, masks = next(iter(DataLoader(dataset, batch_size=4, num_workers=2)))
    assert images.shape == (4, 3, 32, 32) and masks.shape == (4, 32, 32) and masks.dtype == torch.int64


def test_each_dataset_family_declares_its_options_and_engine_config_and_cli_ask_data(monkeypatch, capsys):
    """The options beyond transforms and on_error are the family's declaration (folder's: its classes), not a name
    engine, config or the command line know: a new family that takes class names gets them through all three."""
    import atrous.data
    from atrous.config import Config, apply_overrides, with_model_labels
    from atrous.engine import dataset_options

    assert atrous.data.family_options("folder") == ("num_classes", "class_names", "palette", "label_mapping")
    assert [name for name in atrous.data.list_datasets() if atrous.data.family_options(name)] == ["folder"]
    assert atrous.data.datasets_taking("label_mapping") == ["folder"] and atrous.data.family_options("nothing") == ()
    folder = apply_overrides(Config(), ["data.dataset=folder", "data.label_mapping={0: 0, 255: 1}"])
    assert dataset_options(folder) == {"num_classes": folder.model.num_classes, "label_mapping": {0: 0, 255: 1}}
    assert dataset_options(Config()) == {}  # VOC names and counts its own classes

    toy = atrous.data.DatasetFamily(lambda root, split, **options: options, options=("num_classes", "class_names"))
    monkeypatch.setitem(atrous.data.DATASETS, "toy", toy)
    config = apply_overrides(Config(), ["data.dataset=toy", "model.num_classes=2", "data.class_names=[sky, road]"])
    assert dataset_options(config) == {"num_classes": 2, "class_names": ["sky", "road"]}
    assert atrous.data.build_dataset("toy", ".", "val", **dataset_options(config))["class_names"] == ["sky", "road"]
    with pytest.raises(ConfigError, match=r"data\.palette is for folder datasets; dataset 'toy' names"):
        apply_overrides(config, ["data.palette=[[1, 2, 3], [4, 5, 6]]"])
    with pytest.raises(ConfigError, match=r"data\.label_mapping is for folder datasets \(raw mask value"):
        apply_overrides(config, ["data.label_mapping={0: 0, 255: 1}"])
    unnamed = apply_overrides(Config(), ["data.dataset=toy", "model.num_classes=2"])
    named = with_model_labels(unnamed, class_names=("sky", "road"), palette=np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]]))
    assert named.data.class_names == ["sky", "road"] and named.data.palette is None  # toy takes no palette
    voc = with_model_labels(Config(), class_names=("sky", "road"), palette=None)
    assert voc.data.class_names is None  # VOC names its own classes

    monkeypatch.setitem(atrous.data.DATASETS, "toy", atrous.data.DatasetFamily(toy.build, options=("label_mapping",)))
    with pytest.raises(SystemExit):
        main(["data", "check", "--help"])
    usage = " ".join(capsys.readouterr().out.split())
    assert ", ".join(atrous.data.list_datasets()) in usage and "toy" in usage
    assert "folder and toy datasets, e.g. 0:0,255:1" in usage


def test_a_folder_config_without_names_takes_the_models_names_and_colours():
    from atrous.config import Config, apply_overrides, with_model_labels

    config = apply_overrides(Config(), ["data.dataset=folder", "model.num_classes=2"])
    palette = np.arange(256 * 3, dtype=np.uint8).reshape(256, 3)
    named = with_model_labels(config, class_names=("sky", "road"), palette=palette)
    assert named.data.class_names == ["sky", "road"] and named.data.palette == palette[:2].tolist()
    given = apply_overrides(config, ["data.palette=[[1, 2, 3], [4, 5, 6]]"])
    assert with_model_labels(given, class_names=("sky", "road"), palette=palette).data.palette == [[1, 2, 3], [4, 5, 6]]
    own = apply_overrides(config, ["data.class_names=[a, b]"])
    assert with_model_labels(own, class_names=("sky", "road"), palette=palette) is own
    assert with_model_labels(config, class_names=None, palette=palette) is config
