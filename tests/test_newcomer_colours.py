"""Class colours and names from the data to the user (issue 16, item 4) and a report that reads well (item 5):
predictions in the model's own palette with a legend, folder datasets that name and colour their classes, overlays
whose class colour matches the legend, and a report whose plots, samples and header say what they show."""

import math
import re

import numpy as np
import pytest
import torch
from data_fixtures import write_jpeg
from matplotlib.backends.backend_agg import FigureCanvasAgg
from PIL import Image

import atrous
import atrous.predict
from atrous import load_trained_model
from atrous.checkpoint import model_checkpoint
from atrous.cli import main
from atrous.config import apply_overrides, config_from_dict
from atrous.data import build_dataset
from atrous.data.cityscapes import CITYSCAPES_PALETTE
from atrous.data.classes import CITYSCAPES_CLASSES
from atrous.data.labels import full_palette, voc_palette
from atrous.engine import train
from atrous.errors import ConfigError
from atrous.evaluation import Evaluation, ReportSample, write_run_report
from atrous.metrics import ConfusionMatrix
from atrous.plots import per_class_iou_figure
from atrous.report import PANEL_CAPTIONS, describe_inference
from atrous.visualize import legend, overlay, region_edges

FOLDER_CLASSES = ["sky", "road", "car"]
FOLDER_COLOURS = [[70, 130, 180], [128, 64, 128], [0, 0, 142]]


def _tiny_model(num_classes: int):
    """The cheapest DeepLab to run: V2's classifiers on MobileNetV3 at output stride 32."""
    torch.manual_seed(0)
    return atrous.build_model("deeplabv2", backbone="mobilenet_v3_large", num_classes=num_classes,
                              output_stride=32).eval()  # fmt: skip


def _palette_of(path) -> np.ndarray:
    image = Image.open(path)
    assert image.mode == "P"
    return np.asarray(image.getpalette(), dtype=np.uint8).reshape(-1, 3)


def _solid_blocks(picture: np.ndarray, colour, side: int) -> int:
    """How many ``side`` x ``side`` squares of exactly ``colour`` start in ``picture`` (overlapping ones counted)."""
    exact = np.all(picture == np.asarray(colour, dtype=np.uint8), axis=-1).astype(np.int64)
    sums = np.pad(exact.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    windows = sums[side:, side:] - sums[:-side, side:] - sums[side:, :-side] + sums[:-side, :-side]
    return int((windows == side * side).sum())


# ------------------------------------------------------------------------------------------ predict: colours, legend


@pytest.mark.parametrize("trained_on", ["cityscapes", "nothing said"])
def test_predictions_are_coloured_as_the_checkpoint_says_with_a_legend(trained_on, tmp_path, capsys):
    model = _tiny_model(19)
    if trained_on == "cityscapes":
        model.set_labels(CITYSCAPES_CLASSES, CITYSCAPES_PALETTE)
    torch.save(model_checkpoint(model), tmp_path / "model.pt")
    write_jpeg(tmp_path / "photos" / "street.jpg", 40, 64)
    out = tmp_path / "out"
    assert main(["predict", "--weights", str(tmp_path / "model.pt"), str(tmp_path / "photos"), "--out", str(out),
                 "--runtime", "eager"]) == 0  # fmt: skip
    expected = CITYSCAPES_PALETTE if trained_on == "cityscapes" else voc_palette()
    np.testing.assert_array_equal(_palette_of(out / "street.png"), expected)
    shown = np.asarray(Image.open(out / "legend.png").convert("RGB"))
    for index in range(19):  # every class has a swatch of exactly the colour its label pixels are drawn with
        assert _solid_blocks(shown, expected[index], side=16) > 0, index
    names = CITYSCAPES_CLASSES if trained_on == "cityscapes" else [f"class_{i}" for i in range(19)]
    np.testing.assert_array_equal(shown, legend(names, full_palette(expected)))
    assert "legend" in capsys.readouterr().out


def test_a_palette_of_only_the_classes_is_completed_for_the_label_png(tmp_path):
    """mmseg files carry one colour per class, not 256: the PNG keeps them first and stays a full 8-bit palette."""
    model = _tiny_model(3)
    model.set_labels(FOLDER_CLASSES, np.asarray(FOLDER_COLOURS, dtype=np.uint8))
    write_jpeg(tmp_path / "in" / "a.jpg", 24, 32)
    [written] = atrous.predict.predict_files(model, [tmp_path / "in" / "a.jpg"], tmp_path / "out", progress=False)
    palette = _palette_of(written)
    assert len(palette) == 256 and palette[:3].tolist() == FOLDER_COLOURS


def test_an_input_named_legend_keeps_its_outputs_and_the_legend_moves_aside(tmp_path):
    model = _tiny_model(3)
    write_jpeg(tmp_path / "in" / "legend.jpg", 24, 32)
    atrous.predict.predict_files(model, [tmp_path / "in" / "legend.jpg"], tmp_path / "out", progress=False)
    assert _palette_of(tmp_path / "out" / "legend.png").shape == (256, 3)  # the prediction, not the legend
    assert Image.open(tmp_path / "out" / "legend_1.png").mode == "RGB"


# ------------------------------------------------------------------------------------------ overlays


def test_overlay_edges_are_the_exact_class_colour_and_regions_stay_tinted():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    labels = np.zeros((30, 40), dtype=np.uint8)
    labels[5:25, 10:30] = 2
    labels[0, :] = 255
    palette = full_palette(FOLDER_COLOURS)
    shown = overlay(image, labels, palette)
    edges = region_edges(labels) & (labels != 255)
    assert edges[5, 15] and edges[4, 15] and not edges[15, 20]  # both sides of an edge, not the inside
    np.testing.assert_array_equal(shown[edges], palette[labels[edges]])
    inside = ~region_edges(labels) & (labels != 255)
    tint = np.abs(shown[inside].astype(int) - palette[labels[inside]].astype(int))
    assert tint.max() > 0 and tint.mean() < 0.5 * np.abs(image[inside].astype(int) - palette[labels[inside]]).mean()
    np.testing.assert_array_equal(shown[0], image[0])  # ignored pixels keep the photo


def test_overlays_written_in_strips_equal_the_whole_image(tmp_path, monkeypatch):
    """Each strip sees its neighbours' edge rows: an edge on a strip boundary is drawn as in the whole image."""
    image = np.random.default_rng(1).integers(0, 256, (61, 50, 3), dtype=np.uint8)
    labels = np.zeros((61, 50), dtype=np.uint8)
    labels[20:, :] = 1  # an edge between rows 19 and 20: the boundary of the strips below
    labels[35:50, 10:20] = 2
    palette = full_palette(FOLDER_COLOURS)
    atrous.predict._save_overlay(tmp_path / "whole.jpg", image, labels, palette)
    monkeypatch.setattr(atrous.predict, "OVERLAY_PIXELS_PER_STRIP", 20 * 50)  # strips of 20 rows
    atrous.predict._save_overlay(tmp_path / "strips.jpg", image, labels, palette)
    assert (tmp_path / "strips.jpg").read_bytes() == (tmp_path / "whole.jpg").read_bytes()


# ------------------------------------------------------------------------------------------ folder classes in config


def _write_folder(root, *, size=32):
    """Two splits of three images whose masks hold classes 0, 1 and 2."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for index in range(3):
            write_jpeg(root / split / "images" / f"{index}.jpg", size, size, seed=index)
            mask = rng.integers(0, 3, (size, size), dtype=np.uint8)
            (root / split / "masks").mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask).save(root / split / "masks" / f"{index}.png")
    return root


def _folder_overrides(tmp_path, data):
    return [
        f"out_dir={tmp_path / 'runs'}", "name=named", "model.name=deeplabv2", "model.backbone=resnet18",
        "model.num_classes=3", "data.dataset=folder", f"data.root={data}", "data.crop_size=32",
        "data.scale_range=[1.0,1.0]", "data.batch_size=2", "data.workers=0", "train.iterations=1",
        "train.val_every=1", "train.device=cpu", "train.log_every=1",
    ]  # fmt: skip


def test_folder_class_names_and_palette_reach_the_checkpoint_and_the_report(tmp_path):
    data = _write_folder(tmp_path / "data")
    config = apply_overrides(config_from_dict({}), [
        *_folder_overrides(tmp_path, data), f"data.class_names={FOLDER_CLASSES}", f"data.palette={FOLDER_COLOURS}",
    ])  # fmt: skip
    train(config)
    model = load_trained_model(config.run_dir / "checkpoints" / "best.pt")
    assert model.class_names == FOLDER_CLASSES
    assert model.palette[:3].tolist() == FOLDER_COLOURS
    report = (config.run_dir / "report.html").read_text()
    for name, (r, g, b) in zip(FOLDER_CLASSES, FOLDER_COLOURS):
        assert f"<td>{name}</td>" in report and f"rgb({r},{g},{b})" in report
    assert "class_0" not in report
    # The Python API takes them too.
    dataset = build_dataset("folder", data, "val", class_names=FOLDER_CLASSES, palette=FOLDER_COLOURS)
    assert dataset.class_names == FOLDER_CLASSES and dataset.palette[:3].tolist() == FOLDER_COLOURS


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.class_names=[sky, road]"], r"data\.class_names gives 2 names for 3 classes \(model\.num_classes\)"),
        (["data.class_names=[sky, road, sky]"], r"data\.class_names: 'sky' is given twice"),
        (["data.class_names=[sky, '', car]"], r"data\.class_names\[1\]='': every class needs a name"),
        (["data.palette=[[0, 0, 0], [255, 0, 0]]"], r"data\.palette gives 2 colours for 3 classes \(model\.num_classes\)"),
        (["data.palette=[[0, 0, 0], [0, 256, 0], [1, 2, 3]]"],
         r"data\.palette\[1\]=\[0, 256, 0\]: must be \[r, g, b\] with integers 0\.\.255"),
        (["data.palette=[[0, 0, 0], [1, 2], [1, 2, 3]]"], r"data\.palette\[1\]=\[1, 2\]: must be \[r, g, b\]"),
        (["data.palette=[[9, 9, 9], [1, 2, 3], [9, 9, 9]]"], r"data\.palette\[2\]: classes 0 and 2 have the same colour"),
        (["data.palette=[[0, 0, 0], [1.5, 2, 3], [1, 2, 3]]"], r"data\.palette\[1\]\[0\]: expected an integer"),
        (["data.dataset=voc", "data.class_names=[a, b, c]"], r"data\.class_names is for folder datasets"),
        (["data.dataset=voc", "data.palette=[[1, 2, 3]]"], r"data\.palette is for folder datasets"),
    ],
)  # fmt: skip
def test_class_names_and_palette_that_cannot_be_used_are_refused_naming_the_key(overrides, message):
    dataset = [] if any(key.startswith("data.dataset=") for key in overrides) else ["data.dataset=folder"]
    with pytest.raises(ConfigError, match=message):
        apply_overrides(config_from_dict({}), ["model.num_classes=3", *dataset, *overrides])


def test_the_folder_dataset_checks_what_python_callers_give(tmp_path):
    data = _write_folder(tmp_path / "data", size=8)
    with pytest.raises(ConfigError, match=r"palette gives 2 colours for 3 classes"):
        build_dataset("folder", data, "val", class_names=FOLDER_CLASSES, palette=FOLDER_COLOURS[:2])
    with pytest.raises(ConfigError, match=r"class_names gives 3 names for 2 classes \(num_classes\)"):
        build_dataset("folder", data, "val", class_names=FOLDER_CLASSES, num_classes=2)


# ------------------------------------------------------------------------------------------ the report


def _css_rules(page: str) -> dict[str, str]:
    style = re.search(r"<style>(.*?)</style>", page, re.DOTALL)[1]
    return {selector.strip(): body for selector, body in re.findall(r"([^{}]+)\{([^}]*)\}", style)}


@pytest.fixture
def report_page(tmp_path):
    """A report with figures and two samples (one small, one larger than a panel), as ``atrous eval`` writes it."""
    matrix = ConfusionMatrix(3)
    truth = torch.from_numpy(np.random.default_rng(0).integers(0, 3, (40, 50)))
    matrix.update(truth.roll(3, 1), truth)
    rng = np.random.default_rng(1)
    samples = [ReportSample(f"sample_{side}.jpg", rng.integers(0, 256, (side, side + 10, 3), dtype=np.uint8),
                            rng.integers(0, 3, (side, side + 10)).astype(np.uint8),
                            rng.integers(0, 3, (side, side + 10)).astype(np.uint8)) for side in (40, 300)]  # fmt: skip
    details = {"weights": "runs/x/checkpoints/best.pt", "runtime": "onnxruntime",
               "inference": {"scales": [0.5, 1.0, 1.5], "flip": True, "crop": 321, "stride": None},
               "config": {"name": "x"}}  # fmt: skip
    path = write_run_report(tmp_path, title="atrous evaluation: folder", class_names=FOLDER_CLASSES,
                            palette=full_palette(FOLDER_COLOURS), evaluation=Evaluation(matrix, samples),
                            details=details)  # fmt: skip
    return path.read_text(), tmp_path


def test_only_label_images_are_pixelated_never_the_plots(report_page):
    page, _ = report_page
    rules = _css_rules(page)
    pixelated = [selector for selector, body in rules.items() if "pixelated" in body]
    assert pixelated == ["img.labels"]
    plots = re.findall(r"<img([^>]*)src=\"(per_class_iou|confusion_matrix)\.png\"", page)
    assert len(plots) == 2 and all("labels" not in attributes for attributes, _ in plots)
    sample_images = re.findall(r"<img([^>]*)src=\"report_assets/[^\"]+\"", page)
    assert len(sample_images) == 6 and all("class=labels" in attributes for attributes in sample_images)


def test_each_sample_shows_three_captioned_panels_with_gaps(report_page):
    page, directory = report_page
    samples = re.findall(r"<figcaption>([^<]*)</figcaption><div class=panels>(.*?)</div>", page)
    assert [name for name, _ in samples] == ["sample_40.jpg", "sample_300.jpg"]
    for _, panels in samples:
        assert re.findall(r"<figcaption>([^<]*)</figcaption>", panels) == list(PANEL_CAPTIONS)
    gap = re.search(r"gap:(\d+)px", _css_rules(page)[".panels"])
    assert gap and int(gap[1]) >= 4  # the panels stand apart
    for index, size in enumerate([(150, 120), (192, 186)]):  # 40x50 enlarged 3 times; 300x310 reduced to 192
        panels = sorted(directory.glob(f"report_assets/sample_{index:03d}*"))
        assert len(panels) == 3 and {Image.open(path).size for path in panels} == {size}


def test_the_report_names_the_weights_and_the_mode_above_the_scores(report_page):
    page, _ = report_page
    top = page[: page.index("<h2>")]
    assert "<code>runs/x/checkpoints/best.pt</code>" in top
    assert "sliding window 321 px, stride 214 px; test-time augmentation: scales 0.5, 1, 1.5 + horizontal flip" in top
    assert "<th>runtime</th><td>onnxruntime</td>" in top
    assert "name: x" in page[page.index("Resolved configuration") :]  # the configuration, at the end


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({}, "whole image; one scale"),
        ({"flip": True}, "whole image; one scale + horizontal flip, probabilities averaged"),
        ({"scales": [1, 0.75, 0.5], "fusion": "max"},
         "whole image; multi-scale inputs (MSC) at scales 1, 0.75, 0.5, logits max-fused"),
        ({"crop": 513, "stride": 341, "crf": True}, "sliding window 513 px, stride 341 px; one scale; DenseCRF"),
    ],
)  # fmt: skip
def test_inference_modes_in_words(options, words):
    assert describe_inference(options) == words


def _eval_named_folder_model(tmp_path, data_section: str, *options: str) -> None:
    """`atrous eval` into tmp_path/e of a 3-class model that knows FOLDER_CLASSES / FOLDER_COLOURS, on a folder
    dataset whose config's data section adds ``data_section``."""
    data = _write_folder(tmp_path / "data", size=24)
    model = _tiny_model(3)
    model.set_labels(FOLDER_CLASSES, np.asarray(FOLDER_COLOURS, dtype=np.uint8))
    torch.save(model_checkpoint(model), tmp_path / "model.pt")
    config = tmp_path / "config.yaml"
    config.write_text(f"model: {{name: deeplabv2, backbone: mobilenet_v3_large, num_classes: 3}}\n"
                      f"data: {{dataset: folder, root: {data}{data_section}}}\n")  # fmt: skip
    assert main(["eval", "--config", str(config), "--weights", str(tmp_path / "model.pt"), "--out", str(tmp_path / "e"),
                 *options, "--runtime", "eager"]) == 0  # fmt: skip


def test_eval_reports_say_which_weights_and_mode_they_evaluated(tmp_path):
    _eval_named_folder_model(tmp_path, f", class_names: {FOLDER_CLASSES}", "--tta", "--slide", "--crop", "16",
                             "--stride", "8")
    top = (tmp_path / "e" / "report.html").read_text().split("<h2>")[0]
    assert f"<code>{tmp_path / 'model.pt'}</code>" in top
    assert "sliding window 16 px, stride 8 px; test-time augmentation: scales 0.5, 0.75, 1, 1.25, 1.5, 1.75" in top
    assert "<th>runtime</th><td>eager</td>" in top


# ------------------------------------------------------------------------------------------ per-class IoU chart


def test_per_class_iou_values_sit_inside_the_axes_and_never_across_a_bar_end():
    names = ["background", "a class with a long name", *[f"c{i}" for i in range(8)]]
    iou = [0.0, 0.05, 0.19, 0.2, 0.5, 0.88, 0.93, 0.999, 1.0, math.nan]
    figure = per_class_iou_figure(names, iou)
    renderer = FigureCanvasAgg(figure).get_renderer()
    figure.draw(renderer)
    [axis] = figure.axes
    frame = axis.get_window_extent(renderer)
    bars = axis.patches
    assert len(axis.texts) == len(bars) == len(names)
    for text, bar in zip(axis.texts, bars):
        box, end = text.get_window_extent(renderer), bar.get_window_extent(renderer)
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1, text
        inside_bar = end.x0 <= box.x0 and box.x1 <= end.x1
        past_the_end = box.x0 >= end.x1
        assert inside_bar or past_the_end, (text.get_text(), box, end)
        if inside_bar and box.x1 > end.x0:  # on the bar: light text on the dark blue
            assert text.get_color() == "white"


def test_eval_of_a_folder_config_without_names_uses_the_models_names_and_colours(tmp_path, capsys):
    _eval_named_folder_model(tmp_path, "")
    printed, report = capsys.readouterr().out, (tmp_path / "e" / "report.html").read_text()
    assert "class_0" not in printed and "class_0" not in report
    for name, (r, g, b) in zip(FOLDER_CLASSES, FOLDER_COLOURS):
        assert name in printed and f"<td>{name}</td>" in report and f"rgb({r},{g},{b})" in report
