"""0/255 binary masks read without a label mapping: 255 is the ignore label, so every object pixel would be ignored
and a run would learn background alone (issue 29, A1). Training refuses before its first iteration, naming a mask,
the values and both fixes; a mapping that says what 255 is lets it run; a set of real class indices is not touched."""

from pathlib import Path

import numpy as np
import pytest
from data_fixtures import make_disc_folder
from PIL import Image

from atrous.cli import main
from atrous.config import config_from_dict, save_config
from atrous.data import build_dataset
from atrous.data.checks import refuse_binary_masks_read_as_ignore
from atrous.engine import prepare
from atrous.errors import DataError


def _folder(root: Path, *, foreground: int = 255) -> Path:
    return make_disc_folder(root, foreground=foreground, train=6, val=6, size=(40, 48))


def _config(root: Path, out: Path, label_mapping=None):
    return config_from_dict({
        "name": "binary", "out_dir": str(out),
        "model": {"name": "deeplabv3plus", "backbone": "resnet18", "num_classes": 2},
        "data": {"dataset": "folder", "root": str(root), "crop_size": 32, "batch_size": 2, "val_batch_size": 1,
                 "workers": 0, "label_mapping": label_mapping},
        "train": {"iterations": 1, "val_every": 1, "save_every": 1, "log_every": 1, "device": "cpu"},
    })  # fmt: skip


def test_training_on_0_255_masks_without_a_mapping_is_refused_naming_a_mask_and_the_fixes(tmp_path):
    root = _folder(tmp_path / "data")
    with pytest.raises(DataError) as refused:
        prepare(_config(root, tmp_path / "runs"))
    message = str(refused.value)
    assert message.startswith(str(root / "train" / "masks"))  # a mask, by its path
    for expected in ("only the values 0 and 255", "6 of 6 read", "learn background alone",
                     "data.label_mapping={0: 0, 255: 1}", "--label-map 0:0,255:1", "data.label_mapping={0: 0, 255: 255}"):  # fmt: skip
        assert expected in message, (expected, message)


def test_the_command_line_says_it_in_one_line_before_any_checkpoint(tmp_path, capsys):
    root = _folder(tmp_path / "data")
    config = _config(root, tmp_path / "runs")
    recipe = tmp_path / "recipe.yaml"
    save_config(config, recipe)
    assert main(["train", "--config", str(recipe)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "only the values 0 and 255" in error
    assert not list((config.run_dir / "checkpoints").glob("*.pt"))


@pytest.mark.parametrize("mapping", [{0: 0, 255: 1}, {0: 0, 255: 255}])
def test_a_mapping_that_says_what_255_is_lets_the_run_start(tmp_path, mapping):
    root = _folder(tmp_path / "data")
    run = prepare(_config(root, tmp_path / "runs", label_mapping=mapping))
    assert run.train_set.num_classes == 2


def test_masks_of_class_indices_are_not_taken_for_binary_masks(tmp_path):
    """Negative controls: 0/1 masks (with or without a 255 outline), and one class-1 mask among 0/255 ones."""
    indices = build_dataset("folder", _folder(tmp_path / "indices", foreground=1), "train", num_classes=2)
    refuse_binary_masks_read_as_ignore(indices)
    mixed_root = _folder(tmp_path / "mixed")
    mask = np.array(Image.open(mixed_root / "train" / "masks" / "train_5.png"))
    Image.fromarray(np.where(mask == 255, 1, 0).astype(np.uint8)).save(mixed_root / "train" / "masks" / "train_5.png")
    refuse_binary_masks_read_as_ignore(build_dataset("folder", mixed_root, "train", num_classes=2))
    with pytest.raises(DataError, match="only the values 0 and 255"):  # and the unmixed set is refused, as above
        refuse_binary_masks_read_as_ignore(build_dataset("folder", _folder(tmp_path / "binary"), "train", num_classes=2))
