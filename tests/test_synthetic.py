"""The embedded synthetic dataset: VOC layout, deterministic, shape+texture classes, 4x scale range."""

import hashlib

import numpy as np
from scipy import ndimage

from atrous.cli import main
from atrous.data import SYNTHETIC_CLASSES, SynthSpec, build_dataset, write_synthetic
from atrous.data.synthetic import render_sample


def digest(root):
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return hashlib.sha256(b"".join(p.read_bytes() for p in files)).hexdigest()


def test_written_in_the_voc_layout_and_read_by_the_voc_loader(tmp_path):
    assert main(["data", "synth", "--out", str(tmp_path), "--train", "12", "--val", "4", "--size", "64"]) == 0
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    assert len(list((voc / "JPEGImages").glob("*.jpg"))) == 16
    assert len((voc / "ImageSets" / "Segmentation" / "train.txt").read_text().split()) == 12
    dataset = build_dataset("voc", tmp_path, "val", class_names=SYNTHETIC_CLASSES)
    assert len(dataset) == 4 and dataset[0][0].shape == (64, 64, 3)
    assert build_dataset("synthetic", tmp_path, "train").num_classes == 7


def test_deterministic_per_seed_and_reused(tmp_path):
    spec = SynthSpec(seed=3, train=5, val=2, size=48)
    first = write_synthetic(tmp_path / "a", spec, progress=False)
    second = write_synthetic(tmp_path / "b", spec, progress=False)
    assert digest(first) == digest(second)
    other = write_synthetic(tmp_path / "c", SynthSpec(seed=4, train=5, val=2, size=48), progress=False)
    assert digest(other) != digest(first)
    stamp = (first / "JPEGImages" / "synth_00000.jpg").stat().st_mtime_ns
    write_synthetic(tmp_path / "a", spec, progress=False)  # identical spec: reused, nothing rewritten
    assert (first / "JPEGImages" / "synth_00000.jpg").stat().st_mtime_ns == stamp


def test_classes_are_shapes_with_varied_colours_over_a_4x_scale_range():
    spec = SynthSpec(seed=0, size=128)
    sizes = {c: [] for c in range(1, len(SYNTHETIC_CLASSES))}
    colours = {c: [] for c in range(1, len(SYNTHETIC_CLASSES))}
    multi_object = 0
    for index in range(150):
        image, mask = render_sample(spec, index)
        present = [c for c in np.unique(mask) if c not in (0, 255)]
        multi_object += len(present) >= 2
        for c in present:
            labels, count = ndimage.label(mask == c)
            for component in range(1, count + 1):
                ys, xs = np.nonzero(labels == component)
                if len(ys) > 30 and ys.min() > 0 and xs.min() > 0 and ys.max() < 127 and xs.max() < 127:
                    sizes[c].append(max(np.ptp(ys), np.ptp(xs)) + 1)
                    colours[c].append(image[ys, xs].mean(axis=0))
    assert len(sizes) >= 6 and all(len(v) >= 5 for v in sizes.values())
    every_size = np.concatenate([np.array(v) for v in sizes.values()])
    assert every_size.max() / every_size.min() >= 4
    for c, values in colours.items():
        assert np.std(np.array(values), axis=0).mean() > 30, SYNTHETIC_CLASSES[c]  # colour does not tell the class
    assert multi_object >= 30
