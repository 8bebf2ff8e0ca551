"""What a path is, in words a user recognises, for the messages about files that are not what a command expected:
a FIFO, a device, a folder, an empty file, an image, an archive, a Git LFS pointer, text.

Nothing here opens what is not a regular file (opening a FIFO waits for a writer; ``/dev/zero`` never ends), and a
regular file is read for its first bytes only.
"""

from __future__ import annotations

import codecs
import os
import stat
from pathlib import Path

_SNIFFED_BYTES = 512

# Leading bytes -> what a file starting with them is.
_MAGIC = [
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"GIF8", "a GIF image"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"BM", "a BMP image"),
    (b"%PDF", "a PDF document"),
    (b"\x1f\x8b", "a gzip archive (unpack it first)"),
    (b"BZh", "a bzip2 archive (unpack it first)"),
    (b"\xfd7zXZ\x00", "an xz archive (unpack it first)"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive (unpack it first)"),
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file (Keras .h5 weights: not a PyTorch file)"),
    (b"version https://git-lfs", "a Git LFS pointer, not the file itself (run `git lfs pull` where you cloned it)"),
    (b"<!DOCTYPE html", "an HTML page (a download that saved the web page, not the file)"),
    (b"<html", "an HTML page (a download that saved the web page, not the file)"),
]


def special_kind(path: str | Path) -> str | None:
    """What ``path`` is when it is not a regular file ("a FIFO (named pipe)", "a character device", "a folder"),
    links followed; None for a regular file or a path that does not exist."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def missing_kind(path: str | Path) -> str:
    """Why ``path`` cannot be read that does not exist: "not found", or a link to a target that does not exist."""
    path = Path(path)
    if path.is_symlink():
        return f"a link to {os.readlink(path)}, which does not exist"
    return "not found"


def content_kind(path: str | Path) -> str | None:
    """What a regular file is from its first bytes: "empty (0 bytes)", one of ``_MAGIC``'s kinds, "a text file
    (starting '...')", or None when its bytes say nothing recognisable (a binary format, or the expected one)."""
    with open(path, "rb") as handle:
        head = handle.read(_SNIFFED_BYTES)
    if not head:
        return "empty (0 bytes: an interrupted download or copy?)"
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "a WebP image"
    if len(head) > 262 and head[257:262] == b"ustar":
        return "a tar archive (unpack it first)"
    try:  # incremental: a character cut at the end of the bytes read is not an error
        text = codecs.getincrementaldecoder("utf-8")().decode(head)
    except UnicodeDecodeError:
        return None
    if all(character.isprintable() or character in "\t\r\n" for character in text):
        first_line = text.strip().splitlines()[0][:40] if text.strip() else ""
        return f"a text file (starting {first_line!r})"
    return None
