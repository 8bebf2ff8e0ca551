"""README's "your own data" commands, run verbatim on a small folder dataset of 0/255 masks, offline."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
from data_fixtures import make_disc_folder
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[list[str]]:
    """The commands of the fenced block after "Your own data:" in README.md."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"Your own data:.*?```bash\n(.*?)```", text, re.DOTALL)
    assert block, "README has no 'Your own data' block"
    return [shlex.split(line) for line in block[1].splitlines() if line.startswith("atrous ")]


def test_the_readme_custom_data_commands_run_verbatim(tmp_path):
    commands = readme_commands()
    assert [command[1] for command in commands] == ["data", "train", "predict"]
    make_disc_folder(tmp_path / "my_data")
    (tmp_path / "configs").symlink_to(ROOT / "configs")  # the commands run from the repository's folder
    for command in commands:
        if command[1] == "train":  # the only addition: stop after 2 iterations, validated there (best.pt)
            command = [*command, "--stop-at", "2", "train.val_every=2"]
        completed = subprocess.run([sys.executable, "-m", "atrous", *command[1:]], cwd=tmp_path, capture_output=True,
                                   text=True, timeout=600, check=False)  # fmt: skip
        assert completed.returncode == 0, (command, completed.stdout[-2000:], completed.stderr[-3000:])
    labels = Image.open(tmp_path / "my_predictions" / "val_0.png")
    assert labels.size == (64, 48) and set(np.unique(np.asarray(labels))) <= {0, 1}
