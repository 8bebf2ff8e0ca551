"""Progress off a terminal is complete lines (a log file stays readable); on one, tqdm's bar."""

import subprocess
import sys

import pytest

from atrous.progress import LineProgress, lines_wanted, progress_bar


def test_training_logged_to_a_file_is_plain_lines_with_loss_lr_speed_and_eta(tmp_path):
    log = tmp_path / "log.txt"
    synth = [sys.executable, "-m", "atrous", "data", "synth", "--out", str(tmp_path / "data"), "--train", "4",
             "--val", "2", "--size", "32"]  # fmt: skip
    train = [sys.executable, "-m", "atrous", "train", "data.dataset=synthetic", f"data.root={tmp_path / 'data'}",
             "model.backbone=mobilenet_v3_large", "model.num_classes=7", "data.crop_size=32", "data.batch_size=2",
             "data.val_batch_size=2", "data.workers=0", "train.iterations=4", "train.log_every=2",
             "train.val_every=4", f"out_dir={tmp_path / 'runs'}"]  # fmt: skip
    with open(log, "w") as handle:  # what `nohup atrous train ... > log.txt 2>&1` gives the process
        for command in (synth, train):
            subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, check=True, timeout=300)
    text = log.read_text()
    assert "\r" not in text and "\x1b[" not in text
    lines = text.splitlines()
    train_lines = [line for line in lines if line.startswith("train ")]
    assert [line.split()[1] for line in train_lines[:2]] == ["2/4", "4/4"], lines
    first = train_lines[0]
    for field in ("(50%)", "loss=", "lr=", "img_s=", "elapsed ", "ETA "):
        assert field in first, first
    assert any(line.startswith("iteration 4: mIoU") for line in lines), lines
    assert any(line.startswith("synthetic data 6/6 (100%)") for line in lines), lines
    assert max(len(line) for line in lines) < 300


def test_line_progress_speaks_at_most_every_interval_and_says_the_final_count(capsys):
    bar = LineProgress(range(10), desc="eval", unit="batch", line_seconds=3600)
    assert list(bar) == list(range(10))
    bar.close()
    assert capsys.readouterr().err.splitlines() == ["eval 10/10 (100%) elapsed 0m00s"]
    chatty = LineProgress(total=3, desc="predict", line_seconds=0)
    for _ in range(3):
        chatty.update()
    chatty.close()
    printed = capsys.readouterr().err.splitlines()
    assert [line.split()[1] for line in printed] == ["1/3", "2/3", "3/3"]
    assert "ETA" in printed[0] and "ETA" not in printed[-1]


@pytest.mark.parametrize("choice, lines", [("lines", True), ("bar", False)])
def test_the_environment_variable_overrides_the_terminal_check(monkeypatch, choice, lines):
    monkeypatch.setenv("ATROUS_PROGRESS", choice)
    assert lines_wanted() is lines
    assert isinstance(progress_bar(total=1, disable=True), LineProgress) is lines


def test_under_pytest_output_is_captured_so_lines_are_chosen(monkeypatch):
    monkeypatch.delenv("ATROUS_PROGRESS", raising=False)
    assert not sys.stdout.isatty() and lines_wanted()
