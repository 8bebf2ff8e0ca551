"""The package's import graph has no cycle (``../shared/tools/import_graph.py``, which counts imports inside functions
too), and its depth does not grow past what the layout reached."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT.parent / "shared" / "tools" / "import_graph.py"
# Measured when the publishers moved into their folders; see the issue-28 note for the chain that sets it.
MAX_LAYERS = 14


@pytest.fixture(scope="module")
def summary() -> str:
    if not TOOL.is_file():
        pytest.skip(f"the workplace's import-graph tool is not at {TOOL}")
    result = subprocess.run([sys.executable, str(TOOL), str(ROOT / "src" / "atrous")], capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"import cycles:\n{result.stdout}"  # the tool exits 1 on a cycle
    return result.stdout.splitlines()[0]


def test_the_package_has_no_import_cycle(summary):
    assert " 0 cycle(s)" in summary


def test_the_layers_do_not_grow(summary):
    layers = int(summary.split(" layers")[0].rsplit(" ", 1)[1])
    assert layers <= MAX_LAYERS, summary


def _imported_modules(path: Path, package: str) -> set[str]:
    """The modules ``path`` (a module of ``package``) imports from, relative imports resolved."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - node.level + 1]
                names.add(".".join(base + ([node.module] if node.module else [])))
            else:
                names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_the_core_never_imports_a_publisher_nor_what_lists_them():
    """``atrous.models`` knows no publisher: none of its modules imports ``atrous.publishers``, ``atrous.registry`` or
    what builds on it (its package faces forward the registry's names by name, on first use)."""
    src = ROOT / "src"
    above = ("atrous.publishers", "atrous.registry", "atrous.build", "atrous.weights.load", "atrous.weights.pretrained")
    offenders = {}
    for path in (src / "atrous" / "models").rglob("*.py"):
        module = ".".join(path.relative_to(src).with_suffix("").parts)
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        bad = sorted(name for name in _imported_modules(path, package.removesuffix(".__init__"))
                     if name.startswith(above))  # fmt: skip
        if bad:
            offenders[module] = bad
    assert offenders == {}
