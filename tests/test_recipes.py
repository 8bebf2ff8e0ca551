"""Every shipped recipe reads and checks; the GTA5 -> Cityscapes recipe trains on GTA5 and validates on Cityscapes."""

from pathlib import Path

import numpy as np
import pytest
from data_fixtures import make_cityscapes, write_png

from atrous.config import apply_overrides, load_config
from atrous.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("recipe", sorted(CONFIGS.glob("*.yaml")), ids=lambda path: path.stem)
def test_every_recipe_reads_and_says_what_it_reaches(recipe):
    config = load_config(recipe)
    header = recipe.read_text().split("\nname:")[0]
    assert config.model.num_classes >= 2
    assert "mIoU" in header or "your own data" in header.lower(), "a recipe names the score it should reach"


def test_gta5_training_validates_on_cityscapes(tmp_path):
    from atrous.engine import train

    labels = np.full((32, 48), 7, np.uint8)  # road
    labels[:, 24:] = 26  # car
    for index in range(2):
        write_png(tmp_path / "gta5" / "images" / f"0000{index}.png", np.full((32, 48, 3), 90 * index, np.uint8))
        write_png(tmp_path / "gta5" / "labels" / f"0000{index}.png", labels)
    make_cityscapes(tmp_path / "cityscapes", labels, split="val")
    recipe = load_config(CONFIGS / "deeplabv2_r101-caffe-os8_gta5-to-cityscapes_720x1280_150k.yaml")
    config = apply_overrides(recipe, [
        f"data.root={tmp_path / 'gta5'}", f"data.val_root={tmp_path / 'cityscapes'}", f"out_dir={tmp_path / 'runs'}",
        "model.backbone=resnet18", "data.crop_size=32", "data.scale_range=[1, 1]", "data.workers=0",
        "train.iterations=1", "train.val_every=1",
    ])  # fmt: skip
    summary = train(config)
    assert summary["iteration"] == 1 and summary["last_val"] is not None
    assert summary["last_val"]["per_class_iou"] is not None and len(summary["class_names"]) == 19


def test_a_validation_dataset_with_other_classes_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"data.val_dataset: unknown value 'kitti'"):
        apply_overrides(load_config(CONFIGS / "deeplabv2_r101-caffe-os8_gta5-to-cityscapes_720x1280_150k.yaml"),
                        ["data.val_dataset=kitti"])  # fmt: skip
