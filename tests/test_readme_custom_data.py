"""README's "your own data" commands, run verbatim on a small folder dataset of 0/255 masks, offline."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[list[str]]:
    """The commands of the fenced block after "Your own data:" in README.md."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"Your own data:.*?```bash\n(.*?)```", text, re.DOTALL)
    assert block, "README has no 'Your own data' block"
    return [shlex.split(line) for line in block[1].splitlines() if line.startswith("atrous ")]


def write_folder_dataset(root: Path) -> None:
    """Bright discs on dark noise; masks 0 (background) / 255 (disc), as a binary-mask tool writes them."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 8), ("val", 2)):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        for index in range(count):
            rows, cols = np.mgrid[0:48, 0:64]
            disc = (rows - 24) ** 2 + (cols - 20 - 4 * index) ** 2 < 12**2
            image = rng.integers(0, 60, (48, 64, 3)).astype(np.uint8)
            image[disc] = 220
            Image.fromarray(image).save(root / split / "images" / f"{split}_{index}.jpg")
            Image.fromarray((disc * 255).astype(np.uint8)).save(root / split / "masks" / f"{split}_{index}.png")


def test_the_readme_custom_data_commands_run_verbatim(tmp_path):
    commands = readme_commands()
    assert [command[1] for command in commands] == ["data", "train", "predict"]
    write_folder_dataset(tmp_path / "my_data")
    (tmp_path / "configs").symlink_to(ROOT / "configs")  # the commands run from the repository's folder
    for command in commands:
        if command[1] == "train":  # the only addition: stop after 2 iterations, validated there (best.pt)
            command = [*command, "--stop-at", "2", "train.val_every=2"]
        completed = subprocess.run([sys.executable, "-m", "atrous", *command[1:]], cwd=tmp_path, capture_output=True,
                                   text=True, timeout=600, check=False)  # fmt: skip
        assert completed.returncode == 0, (command, completed.stdout[-2000:], completed.stderr[-3000:])
    labels = Image.open(tmp_path / "my_predictions" / "val_0.png")
    assert labels.size == (64, 48) and set(np.unique(np.asarray(labels))) <= {0, 1}
