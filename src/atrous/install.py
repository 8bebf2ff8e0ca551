"""The command that installs an optional extra, as this copy of atrous was installed: atrous is not on the package
index, so ``pip install 'atrous[timm]'`` cannot work; from a clone the extra comes with the clone's constraints."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path
from urllib.parse import unquote, urlparse


def extra_command(extra: str, packages: str) -> str:
    """``pip install`` of ``extra`` for this installation: from its source folder (pinned by its constraints.txt when
    it has one) when pip recorded one, else the extra's ``packages`` themselves."""
    source = _source_folder()
    if source is None:
        return f"python -m pip install {packages}"
    constraints = source / "constraints.txt"
    pinned = f'-c "{constraints}" ' if constraints.is_file() else ""
    return f'python -m pip install {pinned}-e "{source}[{extra}]"'


def _source_folder() -> Path | None:
    """The folder pip installed atrous from in editable mode (PEP 610's direct_url.json), or None."""
    try:
        recorded = metadata.distribution("atrous").read_text("direct_url.json")
    except metadata.PackageNotFoundError:
        return None
    try:
        origin = json.loads(recorded or "null")
    except ValueError:
        return None
    if not isinstance(origin, dict) or not origin.get("dir_info", {}).get("editable"):
        return None
    url = urlparse(str(origin.get("url", "")))
    folder = Path(unquote(url.path)) if url.scheme == "file" else None
    return folder if folder is not None and (folder / "pyproject.toml").is_file() else None
