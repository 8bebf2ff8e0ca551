"""Files that appear whole or not at all: each is written under a temporary name beside its final one and renamed
over it in one step, so a reader (or the next run after a crash) finds the previous complete file or the new one,
never half of one.

The temporary name records its writer, ``.<name>.<token>.<host>-<pid><suffix>``: what a process killed mid-write
leaves can be told from what a live one is still writing (``written_by_live_process``); the random token keeps two
threads of one process writing the same file (an export cache behind a threaded server) off each other's bytes.
"""

from __future__ import annotations

import glob
import os
import re
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_TEMPORARY = re.compile(r"\.(?P<name>.+)\.(?:(?P<host>[^.]+)-)?(?P<pid>\d+)\.(?:tmp|partial)")


def writer() -> str:
    """This process, as temporary file names record it: host (dots replaced) and pid."""
    return f"{socket.gethostname().replace('.', '_')}-{os.getpid()}"


@contextmanager
def written_whole(path: str | Path, *, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary name beside ``path`` for the block to write; renamed to ``path`` when the block ends, deleted
    when it fails (KeyboardInterrupt too). Named rather than mkstemp'd: the file gets the user's usual permissions,
    not mkstemp's 0600."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.{writer()}{suffix}")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def written_by_live_process(temporary: Path) -> bool:
    """Whether the process that names ``temporary`` may still be writing it. A process on another host cannot be
    asked: its file is kept (the run directory's lock keeps other hosts out; claiming it clears what they left)."""
    match = _TEMPORARY.fullmatch(temporary.name)
    if match is None:
        return True  # not a name atrous writes
    host, pid = match["host"], int(match["pid"])
    if host is not None and host != writer().rsplit("-", 1)[0]:
        return True
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def remove_dead_temporaries(folder: str | Path, *, name: str | None = None, recursive: bool = False) -> list[Path]:
    """Delete the temporary files in ``folder`` (and below, with ``recursive``) whose writer is dead: what a process
    killed mid-write left (SIGKILL or power loss run no cleanup). With ``name``, only those of the final file
    ``name``. Returns the paths deleted."""
    pattern = f".{glob.escape(name)}.*" if name else ".*"
    candidates = Path(folder).rglob(pattern) if recursive else Path(folder).glob(pattern)
    removed = []
    for temporary in candidates:
        match = _TEMPORARY.fullmatch(temporary.name)
        if match is None or (name is not None and not match["name"].startswith(f"{name}.")):
            continue
        if temporary.is_file() and not written_by_live_process(temporary):
            temporary.unlink(missing_ok=True)
            removed.append(temporary)
    return removed


def write_text_whole(path: str | Path, text: str) -> Path:
    """``Path.write_text`` that a crash cannot leave half done (a truncated config.yaml or metrics.json would stop
    the next resume or script that reads it)."""
    with written_whole(path) as temporary:
        temporary.write_text(text)
    return Path(path)
