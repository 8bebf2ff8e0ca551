"""Never lose a user's work: run-directory lock and refusal, disk full while saving, save before validate, resumed
metrics, resume from the wrong file, refused pickles, checksums, and a frozen distributed rank."""

import errno
import io
import math
import multiprocessing
import os
import re
import shutil
import signal
import socket
import struct
import time
import zipfile
from pathlib import Path

import pytest
import torch
from test_engine import small_config, synthetic  # noqa: F401  (synthetic is a fixture)

import atrous
from atrous import checkpoint, distributed, engine
from atrous.checkpoint import atomic_save, load_checkpoint, model_checkpoint, save_checkpoint, verify_checksum
from atrous.data import build_dataset
from atrous.engine import train
from atrous.errors import ConfigError, DataError, DistributedTimeoutError, MissingFileError, StorageError, WeightsError
from atrous.evaluation import evaluate
from atrous.folder_lock import LOCK_FILE
from atrous.run_dir import claim, read_metrics

FORK = multiprocessing.get_context("fork")  # children with torch already imported start in milliseconds
STRAIGHT = {"iterations": 6, "val_every": 3, "save_every": 2, "keep_last": 10}


def straight_config(root, out, **train_options):
    return small_config(root, out, train={**STRAIGHT, **train_options})


@pytest.fixture(scope="module")
def straight(synthetic, tmp_path_factory):  # noqa: F811
    """A run of 6 iterations trained without interruption (validated at 3 and 6, saved every 2): the reference."""
    config = straight_config(synthetic, tmp_path_factory.mktemp("straight"))
    train(config)
    return config.run_dir


def rows(run_dir: Path) -> list[dict]:
    """metrics.jsonl without its timings (the only values a resumed run cannot repeat)."""
    return [{k: v for k, v in row.items() if k != "images_per_second"} for row in read_metrics(run_dir / "metrics.jsonl")]


def files(directory: Path) -> dict[str, tuple]:
    """Each file's identity, size and time of change, and the bytes of the small ones: what any write would change."""
    found = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != LOCK_FILE):
        status = path.stat()
        small = path.read_bytes() if status.st_size < 2**20 else None
        found[str(path.relative_to(directory))] = (status.st_ino, status.st_size, status.st_mtime_ns, small)
    return found


def copy_run(run_dir: Path, out: Path) -> Path:
    """A copy of a run as ``out/run`` (the name ``small_config`` gives). Checkpoints are hard links, not copies:
    atrous never writes into an existing checkpoint file, it replaces it."""

    def link_checkpoints(source, target):
        return os.link(source, target) if source.endswith(".pt") else shutil.copy2(source, target)

    shutil.copytree(run_dir, out / "run", copy_function=link_checkpoints)
    return out / "run"


# 1. The run directory: refused when it holds a run, locked while one runs in it.


def test_a_directory_holding_a_run_is_refused_unless_resumed_or_overwritten(synthetic, straight, tmp_path):  # noqa: F811
    run_dir = copy_run(straight, tmp_path)
    before = files(run_dir)
    with pytest.raises(ConfigError) as refused:
        train(straight_config(synthetic, tmp_path))
    message = str(refused.value)
    for expected in (str(run_dir), "iteration 6", "iter_0000006.pt", "metrics.jsonl", "config.yaml", "--resume",
                     "--overwrite", "name=..."):  # fmt: skip
        assert expected in message, (expected, message)
    assert files(run_dir) == before  # nothing replaced, nothing truncated

    (run_dir / "notes.txt").write_text("mine")  # files that are not the run's stay
    (run_dir / "eval").mkdir()
    (run_dir / "eval" / "metrics.json").write_text("{}")
    summary = train(straight_config(synthetic, tmp_path, iterations=2, val_every=1), overwrite=True, stop_at=1)
    assert summary["iteration"] == 1
    assert [row["iteration"] for row in rows(run_dir)] == [1, 1]  # the old run's rows are gone
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("iter_*.pt")) == ["iter_0000001.pt"]
    assert load_checkpoint(run_dir / "checkpoints" / "best.pt")["iteration"] == 1
    assert not (run_dir / "report.html").exists()  # the old run's report went with it
    assert (run_dir / "notes.txt").read_text() == "mine" and (run_dir / "eval" / "metrics.json").is_file()


def test_the_cli_refuses_a_finished_run_and_names_resume_and_overwrite(synthetic, straight, tmp_path, capsys):  # noqa: F811
    from atrous.cli import main
    from atrous.config import save_config

    run_dir = copy_run(straight, tmp_path)
    before = files(run_dir)
    recipe = tmp_path / "recipe.yaml"
    save_config(straight_config(synthetic, tmp_path), recipe)
    assert main(["train", "--config", str(recipe)]) == 2
    error = capsys.readouterr().err
    assert f"{run_dir} already holds a training run" in error and "--resume" in error and "--overwrite" in error
    assert files(run_dir) == before
    assert main(["train", "--config", str(recipe), "--overwrite", "--stop-at", "1"]) == 0
    assert [row["iteration"] for row in rows(run_dir)] == [1]
    assert main(["train", "--config", str(recipe), "--resume", "--overwrite"]) == 2
    assert "--resume continues the run there, --overwrite deletes it; give one" in capsys.readouterr().err


def test_a_start_that_failed_before_its_first_checkpoint_does_not_block_the_retry(
    synthetic, tmp_path, caplog, monkeypatch  # noqa: F811
):
    """A start that fails after the run directory was claimed and its config written (here the first step runs out
    of memory): nothing to continue, so the retry proceeds."""

    def out_of_memory(run):
        raise RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 34359738368 bytes")

    monkeypatch.setattr(engine, "train_step", out_of_memory)
    with pytest.raises(RuntimeError, match="not enough memory"):
        train(small_config(synthetic, tmp_path, train={"iterations": 2}))
    monkeypatch.undo()
    run_dir = small_config(synthetic, tmp_path).run_dir
    assert (run_dir / "config.yaml").is_file() and not list((run_dir / "checkpoints").glob("*.pt"))
    with caplog.at_level("WARNING", logger="atrous"):
        summary = train(small_config(synthetic, tmp_path, train={"iterations": 1, "save_every": 1}))
    assert summary["iteration"] == 1
    assert "holds a run that saved no checkpoint" in caplog.text and str(run_dir) in caplog.text
    assert [row["iteration"] for row in rows(run_dir) if "loss" in row] == [1]

    # Once it holds a checkpoint, the same directory is protected again (negative control).
    with pytest.raises(ConfigError, match="already holds a training run"):
        train(small_config(synthetic, tmp_path, train={"iterations": 1}))


def _hold(run_dir, ready):
    lock = claim(run_dir)
    ready.set()
    time.sleep(120)
    lock.release()


def test_a_locked_run_directory_is_refused_naming_its_holder_and_a_killed_holder_leaves_no_lock(synthetic, tmp_path):  # noqa: F811
    config = small_config(synthetic, tmp_path, train={"iterations": 1})
    ready = FORK.Event()
    holder = FORK.Process(target=_hold, args=(config.run_dir, ready), daemon=True)
    holder.start()
    try:
        assert ready.wait(timeout=30)
        for options in ({}, {"overwrite": True}, {"resume": True}):
            with pytest.raises(ConfigError, match=rf"{config.run_dir} is in use by another training run \(pid "
                               rf"{holder.pid} on {socket.gethostname()}, started "):  # fmt: skip
                train(config, **options)
        assert files(config.run_dir) == {}  # the refused runs wrote nothing
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # no clean-up runs: the kernel alone frees the lock
        holder.join()
    claim(config.run_dir).release()


def test_the_lock_is_this_process_one_not_its_forked_workers(tmp_path):
    lock = claim(tmp_path)
    with pytest.raises(ConfigError, match=rf"in use by another training run \(pid {os.getpid()} .*, this process\)"):
        claim(tmp_path)  # a second run in the same process, e.g. a notebook cell started twice
    ready = FORK.Event()
    worker = FORK.Process(target=ready.wait, daemon=True)  # as a DataLoader worker: the lock file open in it too
    worker.start()
    try:
        lock.release()
        claim(tmp_path).release()  # free as soon as the run ends, though the worker lives on
    finally:
        ready.set()
        worker.join()


def test_resume_and_overwrite_together_or_resume_without_a_run_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="resume and overwrite were both asked for"):
        claim(tmp_path, resume=True, overwrite=True)
    with pytest.raises(MissingFileError, match=rf"{tmp_path} holds no run to resume"):
        claim(tmp_path, resume=True)
    claim(tmp_path).release()  # the refusals released the lock


# 2. Disk full while saving.


class _FullDisk(io.RawIOBase):
    """A file that takes ``room`` bytes, writes part of the next write, then fails as a full disk does."""

    def __init__(self, file, room: int, error: int = errno.ENOSPC):
        self.file, self.room, self.error = file, room, error

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        data = bytes(data)
        if len(data) > self.room:
            self.file.write(data[: self.room])
            self.room = 0
            raise OSError(self.error, os.strerror(self.error))
        self.room -= len(data)
        return self.file.write(data)

    def fileno(self) -> int:
        return self.file.fileno()

    def close(self) -> None:
        self.file.close()
        super().close()


def _state(iteration: int) -> dict:
    return {"iteration": iteration, "model": {"w": torch.full((2_000_000,), float(iteration))}}  # 7.6 MiB


@pytest.mark.parametrize("failure", [errno.ENOSPC, errno.EIO])
def test_a_failed_save_leaves_no_temporary_file_and_a_full_disk_says_how_much_space(tmp_path, monkeypatch, failure):
    save_checkpoint(_state(1), tmp_path, iteration=1, keep_last=3, is_best=True)
    monkeypatch.setattr(checkpoint, "open", lambda path, mode: _FullDisk(open(path, mode), 100_000, failure),  # noqa: SIM115
                        raising=False)  # fmt: skip
    if failure == errno.ENOSPC:
        free = shutil.disk_usage(tmp_path).free
        with pytest.raises(StorageError) as full:
            save_checkpoint(_state(2), tmp_path, iteration=2, keep_last=3, is_best=True)
        message = str(full.value)
        assert message.startswith(f"disk full: cannot write {tmp_path / 'iter_0000002.pt'}: it needs about 7.6 MiB "
                                  f"and {tmp_path} has ")  # fmt: skip
        # The free space it names is the disk's at that moment: within 1 GiB of ours (other processes write too).
        said = re.search(r"has ([0-9.]+) (GiB|MiB) free", message)
        assert said, message
        assert abs(float(said[1]) * 2.0 ** (30 if said[2] == "GiB" else 20) - free) < 2**30, (message, free)
        assert "enforce fail" not in message and full.value.errno == errno.ENOSPC
    else:
        with pytest.raises(RuntimeError):  # any other failure keeps torch's error, but not the partial file
            save_checkpoint(_state(2), tmp_path, iteration=2, keep_last=3, is_best=True)
    assert not list(tmp_path.glob(".*.tmp")) and not (tmp_path / "iter_0000002.pt").exists()
    assert load_checkpoint(tmp_path / "last.pt")["iteration"] == 1 == load_checkpoint(tmp_path / "best.pt")["iteration"]


def test_temporary_files_of_killed_saves_are_removed_but_never_a_live_process_one(tmp_path):
    host = socket.gethostname().replace(".", "_")
    finished = FORK.Process(target=int)
    finished.start()
    finished.join()  # its pid names no live process now
    directory = tmp_path / "checkpoints"
    directory.mkdir()
    names = {"dead": f".iter_0000003.pt.{host}-{finished.pid}.tmp", "old format": f".last.pt.{finished.pid}.tmp",
             "live": f".iter_0000004.pt.{host}-{os.getppid()}.tmp", "other host": ".best.pt.elsewhere-1.tmp"}  # fmt: skip
    for name in names.values():
        (directory / name).write_bytes(b"partial")
    save_checkpoint(_state(1), directory, iteration=1, keep_last=3, is_best=False)
    assert sorted(p.name for p in directory.glob(".*.tmp")) == sorted([names["live"], names["other host"]])
    claim(tmp_path, resume=True).release()  # with the directory locked, every temporary file in it is a dead one
    assert not list(directory.glob(".*.tmp"))


# 3. and 4. Save before validate; resume validates what was not validated and repeats no metrics row.


def test_a_crash_in_validation_loses_no_training_and_the_resumed_run_equals_the_straight_one(
    synthetic, straight, tmp_path, monkeypatch  # noqa: F811
):
    config = straight_config(synthetic, tmp_path)

    def crash(run):
        raise RuntimeError("validation crashed")

    monkeypatch.setattr(engine, "validate", crash)
    with pytest.raises(RuntimeError, match="validation crashed"):
        train(config)
    checkpoints = config.run_dir / "checkpoints"
    assert load_checkpoint(checkpoints / "last.pt")["iteration"] == 3  # written before the validation that crashed
    assert not (checkpoints / "best.pt").exists()
    monkeypatch.undo()

    summary = train(config, resume=True)  # validates iteration 3 first, then goes on
    assert rows(config.run_dir) == rows(straight)  # every row once, with the straight run's values
    for name in ("last.pt", "best.pt"):
        resumed, reference = load_checkpoint(checkpoints / name), load_checkpoint(straight / "checkpoints" / name)
        assert resumed["iteration"] == reference["iteration"]
        assert resumed["best_metric"] == reference["best_metric"] == summary["best_mIoU"]
        assert all(torch.equal(resumed["model"][k], reference["model"][k]) for k in reference["model"])
    best_logged = max(row["val"]["mIoU"] for row in rows(straight) if "val" in row)
    assert summary["best_mIoU"] == best_logged


def test_resuming_an_earlier_checkpoint_trims_the_metrics_instead_of_repeating_them(synthetic, straight, tmp_path):  # noqa: F811
    run_dir = copy_run(straight, tmp_path)
    assert len(rows(run_dir)) == 8  # 6 training rows, 2 validations
    train(straight_config(synthetic, tmp_path), resume=run_dir / "checkpoints" / "iter_0000004.pt")
    assert rows(run_dir) == rows(straight)  # 8 rows, not 10; iterations 5 and 6 trained again, identically


def test_validation_skips_an_unreadable_image_under_on_error_skip(synthetic, tmp_path):  # noqa: F811
    root = tmp_path / "data"
    shutil.copytree(synthetic, root)
    voc = root / "VOCdevkit" / "VOC2012"
    broken = (voc / "ImageSets" / "Segmentation" / "val.txt").read_text().split()[0]
    (voc / "JPEGImages" / f"{broken}.jpg").write_bytes(b"not a jpeg")
    model = atrous.build_model("deeplabv3plus", backbone="resnet18", num_classes=7)

    with pytest.raises(DataError, match=f"{broken}.jpg"):
        evaluate(model, build_dataset("synthetic", root, "val"), device=torch.device("cpu"), progress=False)
    skipping = build_dataset("synthetic", root, "val", on_error="skip")
    counted = evaluate(model, skipping, device=torch.device("cpu"), progress=False).matrix.matrix.sum().item()
    good = [skipping.load(i)[1] for i in range(len(skipping)) if broken not in str(skipping.samples[i][0])]
    assert counted == sum(int((mask != 255).sum()) for mask in good)  # left out, not replaced by a neighbour

    config = small_config(root, tmp_path / "runs", data={"on_error": "skip"}, train={"iterations": 2, "val_every": 1})
    assert train(config, stop_at=1)["last_val"] is not None  # validated at 1, the bad image left out


# 5. Resume from the wrong file; files holding code.


def test_resume_from_another_architecture_or_a_weights_only_file_says_what_to_do(synthetic, straight, tmp_path):  # noqa: F811
    last = straight / "checkpoints" / "last.pt"
    other = small_config(synthetic, tmp_path / "a", model={"name": "deeplabv3", "backbone": "resnet18"})
    with pytest.raises(ConfigError) as mismatch:
        train(other, resume=last)
    assert str(mismatch.value).startswith(
        f"checkpoint {last} was trained as deeplabv3plus resnet18 OS16 with 7 classes, the config asks deeplabv3 "
        "resnet18 OS16 with 7 classes (name 'deeplabv3plus' -> 'deeplabv3'): resume with the run's own config, or "
        f"start a new run with model.weights={last}"
    )
    state = load_checkpoint(last)
    weights_only = tmp_path / "weights.pt"
    torch.save({key: state[key] for key in ("model", "spec", "class_names", "palette", "checksum")}, weights_only)
    with pytest.raises(WeightsError, match=rf"{weights_only} holds weights only \(no optimizer state or iteration\): "
                       rf"to start a run from it use model.weights={weights_only}"):  # fmt: skip
        train(small_config(synthetic, tmp_path / "b"), resume=weights_only)
    string_spec = tmp_path / "string_spec.pt"
    torch.save({**state, "spec": "deeplabv3plus"}, string_spec)
    with pytest.raises(WeightsError, match=rf"{string_spec}: its 'spec' is a str \('deeplabv3plus'\), not the mapping"):
        train(small_config(synthetic, tmp_path / "c"), resume=string_spec)
    assert not (tmp_path / "a" / "run" / "metrics.jsonl").exists()  # refused before anything was written


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_checkpoint_holding_code_is_refused_without_running_it(synthetic, tmp_path):  # noqa: F811
    marker = tmp_path / "code_ran"
    malicious = tmp_path / "malicious.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "iteration": _RunsCode(marker)}, malicious)
    for attempt in (lambda: load_checkpoint(malicious), lambda: train(small_config(synthetic, tmp_path), resume=malicious)):
        with pytest.raises(WeightsError) as refused:
            attempt()
        message = str(refused.value)
        assert message.startswith(f"{malicious}: refused for safety: the file holds pickled code or objects")
        assert "system" in message and "weights_only" not in message and "corrupt" not in message
    assert not marker.exists()

    truncated = atomic_save(model_checkpoint(atrous.build_model("deeplabv2", backbone="resnet18", num_classes=3)),
                            tmp_path / "truncated.pt")  # fmt: skip
    truncated.write_bytes(truncated.read_bytes()[:5000])
    with pytest.raises(WeightsError, match=rf"{truncated}: cannot read checkpoint \(truncated or damaged file\?\)"):
        load_checkpoint(truncated)
    # The same bytes named as weights (the one reader of torch files serves both): refused alike, never an OSError.
    with pytest.raises(WeightsError, match=rf"{truncated}: cannot read weights \(truncated or damaged file\?\)"):
        atrous.from_pretrained(truncated)


# 6. Checksums.


def _flip_a_byte_of_the_largest_tensor(path: Path) -> None:
    """Change one byte inside a tensor's data record, in place: the zip's own CRC is not checked by torch."""
    with zipfile.ZipFile(path) as archive:
        record = max((i for i in archive.infolist() if "/data/" in i.filename and "serialization" not in i.filename),
                     key=lambda i: i.file_size)  # fmt: skip
    raw = bytearray(path.read_bytes())
    name_length, extra_length = struct.unpack("<HH", raw[record.header_offset + 26 : record.header_offset + 30])
    raw[record.header_offset + 30 + name_length + extra_length + record.file_size // 2] ^= 0x01
    path.write_bytes(bytes(raw))


def test_a_changed_or_damaged_checkpoint_is_refused_by_its_checksum(straight, tmp_path):
    assert "checksum" in load_checkpoint(straight / "checkpoints" / "last.pt")  # training checkpoints carry one
    model = atrous.build_model("deeplabv2", backbone="resnet18", num_classes=3)
    flipped = atomic_save(model_checkpoint(model), tmp_path / "flipped.pt")
    _flip_a_byte_of_the_largest_tensor(flipped)
    expected = rf"{flipped}: the weights do not match the checksum stored with them: the file was changed or damaged"
    with pytest.raises(WeightsError, match=expected):
        load_checkpoint(flipped)

    state = model_checkpoint(model)
    edited = tmp_path / "edited.pt"
    torch.save({**state, "model": {**state["model"], "classifier.aspp.0.weight": torch.zeros(1)}}, edited)
    with pytest.raises(WeightsError, match=rf"{edited}: the weights do not match"):
        load_checkpoint(edited)
    without = tmp_path / "without.pt"
    torch.save({key: value for key, value in state.items() if key != "checksum"}, without)
    assert set(load_checkpoint(without)["model"]) == set(state["model"])  # older and foreign files pass
    verify_checksum(state, "in memory")
    with pytest.raises(WeightsError, match="in memory: the weights do not match"):
        verify_checksum({**state, "checksum": "0" * 64}, "in memory")


# 7. A frozen distributed rank.


def _rank(rank: int, port: int, results) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), ATROUS_DIST_TIMEOUT="3")  # fmt: skip
    distributed.init_distributed("cpu")
    if rank == 1:
        os.kill(os.getpid(), signal.SIGSTOP)  # frozen, as a rank whose node hangs
        return
    started = time.monotonic()
    try:
        with distributed.explain_timeouts():
            distributed.barrier()
        results.put(("no error", "", 0.0))
    except Exception as error:  # noqa: BLE001 (any error is the result, sent to the test process)
        results.put((type(error).__name__, str(error), time.monotonic() - started))


def test_a_frozen_rank_ends_the_others_after_the_collective_timeout():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    results = FORK.Queue()
    ranks = [FORK.Process(target=_rank, args=(rank, port, results), daemon=True) for rank in (0, 1)]
    for process in ranks:
        process.start()
    try:
        kind, message, waited = results.get(timeout=60)
    finally:
        for process in ranks:
            os.kill(process.pid, signal.SIGKILL)
            process.join()
    assert kind == DistributedTimeoutError.__name__, message
    assert message.startswith("rank 0: the other processes of the run did not answer within 3 s (the collective "
                              "timeout, ATROUS_DIST_TIMEOUT)"), message  # fmt: skip
    assert 2.5 < waited < 20


def test_the_collective_timeout_is_30_minutes_unless_the_environment_says(monkeypatch):
    monkeypatch.delenv("ATROUS_DIST_TIMEOUT", raising=False)
    assert distributed.collective_timeout().total_seconds() == 1800
    monkeypatch.setenv("ATROUS_DIST_TIMEOUT", "90.5")
    assert distributed.collective_timeout().total_seconds() == 90.5
    for bad in ("ten", "0", "-5", "nan", "inf"):
        monkeypatch.setenv("ATROUS_DIST_TIMEOUT", bad)
        with pytest.raises(ConfigError, match=rf"ATROUS_DIST_TIMEOUT='{bad}': expected a number of seconds > 0"):
            distributed.collective_timeout()


def test_a_diverging_run_stops_naming_the_learning_rate_and_keeps_only_finite_checkpoints(synthetic, tmp_path):  # noqa: F811
    from atrous.errors import TrainingError

    config = small_config(synthetic, tmp_path, optim={"lr": 1e12, "warmup_iters": 0},
                          train={"iterations": 6, "val_every": 100, "save_every": 1, "log_every": 1})  # fmt: skip
    with pytest.raises(TrainingError, match=r"training diverged at iteration \d: .* Lower optim.lr \(now 1e\+12\)"):
        train(config)
    for path in (config.run_dir / "checkpoints").glob("*.pt"):
        weights = load_checkpoint(path)["model"]
        assert all(tensor.isfinite().all() for tensor in weights.values() if tensor.is_floating_point()), path
    losses = [row["loss"] for row in read_metrics(config.run_dir / "metrics.jsonl") if "loss" in row]
    assert all(math.isfinite(loss) for loss in losses), losses  # no NaN row was logged
