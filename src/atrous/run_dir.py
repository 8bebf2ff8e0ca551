"""A run directory (``out_dir/name``): who owns it, what it holds, and its metrics log.

A training run claims its directory before it builds anything (``claim``): it locks it (``folder_lock``), so a
second run there is refused naming the first; it refuses a directory that already holds a run unless told to
continue it (resume) or replace it (overwrite); and it deletes the temporary files that killed saves left (no other
process can be writing there while the lock is held).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

from .atomic import write_text_whole
from .errors import ConfigError, DataError, MissingFileError
from .folder_lock import FolderLock, lock_folder

CHECKPOINTS, METRICS, CONFIG = "checkpoints", "metrics.jsonl", "config.yaml"
# What a training run writes into its directory: all that ``overwrite`` deletes. Anything else there (the user's
# notes, ``atrous eval`` output) is not the run's to delete.
RUN_FILES = (CHECKPOINTS, METRICS, CONFIG, "tensorboard", "report.html", "report_assets", "curves.png",
             "per_class_iou.png", "confusion_matrix.png")  # fmt: skip
_SNAPSHOT = re.compile(r"iter_(\d+)\.pt")

log = logging.getLogger(__name__)


def claim(run_dir: str | Path, *, resume: str | Path | bool | None = None, overwrite: bool = False) -> FolderLock:
    """Lock ``run_dir`` for this process's training run and make it ready to start.

    resume: True (continue the run in ``run_dir``) or a checkpoint path: the run's files stay, to be continued.
    overwrite: delete the run already there (``RUN_FILES`` only) first.
    Raises ``ConfigError`` when another process holds the directory, when it holds a run with a checkpoint and neither
    ``resume`` nor ``overwrite`` is given, or when both are (a run that saved no checkpoint, a start that failed, holds
    nothing to continue: it is replaced, with a warning); ``MissingFileError`` when ``resume=True`` finds no run to
    continue.
    """
    run_dir = Path(run_dir)
    if resume and overwrite:
        raise ConfigError(f"{run_dir}: resume and overwrite were both asked for: --resume continues the run there, "
                          "--overwrite deletes it; give one")  # fmt: skip
    lock = lock_folder(run_dir, purpose="training run", hint="choose another name (name=...)")
    try:
        held = describe_run(run_dir)
        if resume is True and not (run_dir / CHECKPOINTS / "last.pt").is_file():
            raise MissingFileError(f"{run_dir} holds no run to resume ({held or 'no checkpoints'}): start it without "
                                   "--resume, or pass --resume PATH to a checkpoint")  # fmt: skip
        if held is not None and not resume:
            if not overwrite and has_checkpoint(run_dir):
                raise ConfigError(f"{run_dir} already holds a training run ({held}): pass --resume to continue it, "
                                  "--overwrite to replace it, or choose another name (name=...)")  # fmt: skip
            if not overwrite:  # a start that failed before its first checkpoint: nothing there to continue or lose
                log.warning("%s holds a run that saved no checkpoint (%s): starting afresh in its place", run_dir, held)
            remove_run(run_dir)
        remove_temporary_files(run_dir)
    except BaseException:
        lock.release()
        raise
    return lock


def has_checkpoint(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds a checkpoint of its run (anything to continue)."""
    return any((Path(run_dir) / CHECKPOINTS).glob("*.pt"))


def describe_run(run_dir: str | Path) -> str | None:
    """What says ``run_dir`` holds a run ("last checkpoint: iteration 8 (checkpoints/iter_0000008.pt); metrics.jsonl;
    config.yaml"), or None when it holds none of a run's checkpoints, metrics or config."""
    run_dir = Path(run_dir)
    found = []
    checkpoints = run_dir / CHECKPOINTS
    snapshots = sorted(checkpoints.glob("iter_*.pt"))
    if snapshots:
        iteration = _SNAPSHOT.fullmatch(snapshots[-1].name)
        number = f"iteration {int(iteration[1])} " if iteration else ""
        found.append(f"last checkpoint: {number}({CHECKPOINTS}/{snapshots[-1].name})")
    elif any(checkpoints.glob("*.pt")):
        found.append(f"checkpoints in {CHECKPOINTS}/")
    found += [name for name in (METRICS, CONFIG) if (run_dir / name).exists()]
    return "; ".join(found) or None


def remove_run(run_dir: str | Path) -> None:
    """Delete what a training run wrote into ``run_dir`` (``RUN_FILES``), nothing else."""
    for name in RUN_FILES:
        path = Path(run_dir) / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def remove_temporary_files(run_dir: str | Path) -> None:
    """Delete the temporary files (``.<name>.<writer>.tmp``) in ``run_dir`` and its checkpoints: with the directory
    locked, each is the remains of a process killed while writing."""
    for directory in (Path(run_dir), Path(run_dir) / CHECKPOINTS):
        for temporary in directory.glob(".*.tmp"):
            temporary.unlink(missing_ok=True)


def read_metrics(path: str | Path) -> list[dict]:
    """The rows of a ``metrics.jsonl`` (empty when there is none)."""
    path = Path(path)
    if not path.is_file():
        return []
    lines, rows = path.read_text().splitlines(), []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError as error:
            if number == len(lines):  # the last line of a run killed while writing it
                break
            raise DataError(f"{path}: line {number} is not JSON ({error}): repair or delete the line") from error
    return rows


def trim_metrics(path: str | Path, iteration: int) -> list[dict]:
    """Keep the rows of ``metrics.jsonl`` up to ``iteration`` (a resumed run writes those after it again) and return
    them. The file is replaced atomically: a crash leaves the old or the new log, never half of one."""
    path = Path(path)
    rows = [row for row in read_metrics(path) if row.get("iteration", 0) <= iteration]
    if path.is_file():
        write_text_whole(path, "".join(json.dumps(row) + "\n" for row in rows))
    return rows
