"""Who writes a folder: one process at a time, named to whoever comes second.

A writer takes an exclusive lock on ``folder/.atrous.lock``, which the kernel drops when the process ends however it
ends, so a killed writer never leaves a stale lock behind; the file records who holds it (purpose, pid, host, start),
so a refusal names the holder. Training runs lock their run directory (``run_dir.claim``); ``atrous eval`` and
``atrous predict`` lock their output folder (``output_folder``), so two of them never mix their results in one.

The lock is a POSIX record lock (``fcntl.lockf``), not ``flock``: an flock belongs to the open file, which the
DataLoader's forked workers share, so it would outlive the run in them; a record lock belongs to the process alone.
A process does not conflict with its own record locks, so the folders this process holds are also listed here.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from .atomic import remove_dead_temporaries
from .errors import ConfigError
from .paths import check_writable_dir

LOCK_FILE = ".atrous.lock"
_HELD: dict[Path, FolderLock] = {}  # resolved folder -> this process's lock on it


@dataclass
class FolderLock:
    """The held lock of a folder; ``release`` (or the end of the process) frees it."""

    folder: Path
    purpose: str
    handle: IO[str] | None

    def release(self) -> None:
        if self.handle is not None:
            _HELD.pop(self.folder.resolve(), None)
            self.handle.close()  # closing the file drops this process's record lock on it
            self.handle = None


def lock_folder(folder: str | Path, *, purpose: str, hint: str) -> FolderLock:
    """Take ``folder``'s lock (creating the folder) without waiting, for ``purpose`` ("training run", "prediction");
    ``ConfigError`` naming the holder and ending with ``hint`` (what else the user can do) when another process, or
    this one, holds it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    held = _HELD.get(folder.resolve())
    if held is not None:  # checked before opening: closing any descriptor of the file would drop our lock
        held.handle.seek(0)
        holder = _describe_holder(held.handle.read(), this_process=True)
        raise ConfigError(f"{folder} is in use by {holder}: wait for it to end, or {hint}")
    # "a": opening must not truncate the holder's details before the lock is ours.
    handle = open(folder / LOCK_FILE, "a+")  # noqa: SIM115 (held open for as long as the lock)
    try:
        fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        handle.seek(0)
        holder = handle.read()
        handle.close()
        if error.errno not in (errno.EACCES, errno.EAGAIN):
            raise
        raise ConfigError(f"{folder} is in use by {_describe_holder(holder)}: wait for it to end or stop it, or "
                          f"{hint}") from None  # fmt: skip
    except BaseException:
        handle.close()
        raise
    handle.truncate(0)
    started = time.strftime("%Y-%m-%d %H:%M:%S %z")
    details = {"purpose": purpose, "pid": os.getpid(), "host": socket.gethostname(), "started": started}
    handle.write(json.dumps(details) + "\n")
    handle.flush()
    lock = _HELD[folder.resolve()] = FolderLock(folder, purpose, handle)
    return lock


def _describe_holder(text: str, *, this_process: bool = False) -> str:
    try:
        holder = json.loads(text)
        # Lock files written before the purpose was recorded were all training runs'.
        purpose = holder.get("purpose", "training run")
        mine = ", this process" if this_process else ""
        return f"another {purpose} (pid {holder['pid']} on {holder['host']}, started {holder['started']}{mine})"
    except (ValueError, TypeError, KeyError, AttributeError):  # the holder has not written its details yet
        return "another atrous process (one that has not written its details yet)"


@contextmanager
def output_folder(folder: str | Path, purpose: str, *, hint: str = "choose another --out folder") -> Iterator[Path]:
    """Hold ``folder`` for writing the outputs of one ``purpose`` ("prediction", "evaluation") for the block: it is
    created and proven writable (else ``ConfigError`` naming it), a second writer is refused naming this one, and
    the temporaries of writers killed there before are deleted first.

    Re-entrant for one purpose within this process (``atrous eval`` claims its folder before exporting, then the
    evaluation claims it again); any other claim of a held folder is refused."""
    folder = check_writable_dir(folder, f"{purpose} output folder")
    held = _HELD.get(folder.resolve())
    if held is not None and held.purpose == purpose:
        yield folder
        return
    lock = lock_folder(folder, purpose=purpose, hint=hint)
    try:
        remove_dead_temporaries(folder, recursive=True)
        yield folder
    finally:
        lock.release()
