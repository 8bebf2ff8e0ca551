"""What a careless user meets on the command line (issue 29, C12-C14): out of memory said with the knobs, a mistyped
flag named with the closest valid one, a folder without images refused, Ctrl-C answered with one line saying what
was kept and how to go on."""

import re
import subprocess
import sys

import pytest
import torch
from data_fixtures import write_jpeg
from test_engine import small_config, synthetic  # noqa: F401  (synthetic is a fixture)

import atrous.cli
from atrous import engine
from atrous.cli import main
from atrous.config import save_config
from atrous.memory import is_out_of_memory, memory_asked


def test_a_mistyped_flag_is_named_with_the_closest_valid_one_before_required_ones(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["predict", "--weigths", "model.pt", str(tmp_path), "--out", str(tmp_path / "out")])
    assert exited.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error == "atrous predict: error: unrecognized argument --weigths; did you mean --weights?"
    with pytest.raises(SystemExit):  # a flag nothing is close to: named alone
        main(["eval", "--zzz"])
    assert capsys.readouterr().err.strip().splitlines()[-1] == "atrous eval: error: unrecognized argument --zzz"
    with pytest.raises(SystemExit):  # the flags of the innermost command named
        main(["data", "synth", "--outt", str(tmp_path / "d"), "--train", "2"])
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "atrous data synth: error: unrecognized argument --outt; did you mean --out?"
    )


def test_an_abbreviation_argparse_accepts_and_overrides_are_not_taken_for_mistypes(tmp_path, capsys):
    photos = tmp_path / "photos"
    write_jpeg(photos / "a.jpg", 24, 32)
    # --weig is argparse's abbreviation of --weights: it gets as far as the missing file.
    assert main(["predict", "--weig", str(tmp_path / "absent.pt"), str(photos), "--out", str(tmp_path / "out")]) == 2
    assert "absent.pt" in capsys.readouterr().err


def test_predict_on_a_folder_without_images_exits_2_naming_it_and_the_extensions(tmp_path, capsys):
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "notes.txt").write_text("no image here")
    assert main(["predict", "--weights", str(tmp_path / "m.pt"), str(empty), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert f"no images in the folder {empty}" in error and ".jpg" in error and ".png" in error


def test_ctrl_c_in_training_says_what_was_kept_and_how_to_continue(synthetic, tmp_path, capsys, monkeypatch):  # noqa: F811
    config = small_config(synthetic, tmp_path, train={"iterations": 4, "save_every": 1})
    recipe = tmp_path / "recipe.yaml"
    save_config(config, recipe)
    assert main(["train", "--config", str(recipe), "--stop-at", "1"]) == 0
    capsys.readouterr()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "train", interrupted)
    assert main(["train", "--config", str(recipe), "--resume"]) == 130
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "Traceback" not in error
    assert error.startswith(f"atrous train: interrupted: {config.run_dir} keeps its last checkpoint (")
    assert "iteration 1" in error and "the same command with --resume continues it" in error

    monkeypatch.setattr(atrous.cli, "predict_files", interrupted)
    photos = tmp_path / "photos"
    write_jpeg(photos / "a.jpg", 24, 32)
    weights = config.run_dir / "checkpoints" / "last.pt"
    assert main(["predict", "--weights", str(weights), str(photos), "--out", str(tmp_path / "out")]) == 130
    assert capsys.readouterr().err.strip() == ("atrous predict: interrupted: every file written so far is whole (none "
                                               "is left half-written); run the command again to redo it")  # fmt: skip


_TRAIN_WITH_CAPPED_MEMORY = """
import resource, sys
from atrous.cli import main

def vm(key):
    line = next(l for l in open("/proc/self/status") if l.startswith(key + ":"))
    return int(line.split()[1]) * 1024

resource.setrlimit(resource.RLIMIT_AS, (vm("VmSize") + 1536 * 2**20, resource.RLIM_INFINITY))
sys.exit(main(sys.argv[1:]))
"""


def test_out_of_memory_in_training_is_one_line_with_the_batch_the_crop_and_the_knobs(synthetic, tmp_path):  # noqa: F811
    """The issue's --crop-size 513 (a batch of 16, the synthetic set's size), with the address space capped so that it fails here too."""
    recipe = tmp_path / "recipe.yaml"
    save_config(small_config(synthetic, tmp_path / "runs", data={"batch_size": 16, "crop_size": 513}), recipe)
    done = subprocess.run([sys.executable, "-c", _TRAIN_WITH_CAPPED_MEMORY, "train", "--config", str(recipe)],
                          capture_output=True, text=True, timeout=600, check=False)  # fmt: skip
    assert done.returncode == 2, done.stderr[-3000:]
    said = done.stderr.strip().splitlines()[-1]
    assert re.fullmatch(
        r"atrous train: error: out of memory on cpu at iteration 1, training on 16 crop\(s\) of 513x513 pixels per "
        r"process(?: asked for [\d.]+ [MG]iB more)?; lower --batch-size \(now 16\), --crop-size \(now 513x513\), "
        r"train\.activation_checkpointing=true \(recomputes activations rather than keeping them\) or train\.amp=bf16 "
        r"\(half the activation memory\)",
        said,
    ), said
    assert "Traceback" not in done.stderr


def test_cuda_and_cpu_allocator_failures_are_told_from_other_errors_with_what_they_asked():
    cuda = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of "
                                  "79.19 GiB of which 1.25 GiB is free.")  # fmt: skip
    cpu = RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you "
                       "tried to allocate 3221225472 bytes. Error code 12 (Cannot allocate memory)")  # fmt: skip
    assert is_out_of_memory(cuda) and memory_asked(cuda) == "2.00 GiB"
    assert is_out_of_memory(cpu) and memory_asked(cpu) == "3.0 GiB"
    assert is_out_of_memory(MemoryError()) and memory_asked(MemoryError()) is None
    assert not is_out_of_memory(RuntimeError("The size of tensor a (4) must match the size of tensor b (5)"))
