"""Install advice that works (issue 29, D16): atrous is not on the package index, so an extra is installed from the
folder pip recorded for this copy (PEP 610's direct_url.json), pinned by its constraints, or else as the packages
themselves."""

import json
from importlib import metadata
from pathlib import Path

import pytest

from atrous import install
from atrous.install import extra_command

ROOT = Path(__file__).resolve().parents[1]


class _Installed:
    def __init__(self, direct_url):
        self.direct_url = direct_url

    def read_text(self, name):
        return None if self.direct_url is None else json.dumps(self.direct_url)


def test_from_this_clone_the_extra_comes_with_its_constraints():
    # The suite runs from an editable install of this checkout (README's test command, CI's too).
    command = extra_command("timm", "timm")
    assert command == f'python -m pip install -c "{ROOT / "constraints.txt"}" -e "{ROOT}[timm]"'
    assert "atrous[" not in command


@pytest.mark.parametrize(
    "direct_url",
    [None, {"url": "file:///somewhere", "dir_info": {}}, {"url": "https://example.org/atrous.whl", "archive_info": {}}],
)
def test_elsewhere_the_packages_themselves(monkeypatch, direct_url):
    monkeypatch.setattr(install.metadata, "distribution", lambda name: _Installed(direct_url))
    assert extra_command("crf", "pydensecrf2") == "python -m pip install pydensecrf2"


def test_not_installed_at_all(monkeypatch):
    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(install.metadata, "distribution", missing)
    assert extra_command("timm", "timm") == "python -m pip install timm"

