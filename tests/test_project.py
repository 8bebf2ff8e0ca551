"""The project's own promises: CI runs the README's test command, and the pins match the brief."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    ci_lines = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if "pytest" in line]
    assert len(ci_lines) == 1
    assert ci_lines[0].strip() in (ROOT / "README.md").read_text()


def test_constraints_pin_torch_and_torchvision():
    pins = (ROOT / "constraints.txt").read_text().split()
    assert "torch==2.14.1" in pins and "torchvision==0.29.1" in pins


def test_importing_atrous_shortens_openmp_spinning_unless_the_user_chose():
    """libgomp reads GOMP_SPINCOUNT when torch starts it: atrous sets it before importing torch (see __init__)."""
    import os
    import subprocess
    import sys

    probe = "import os, atrous; print(os.environ.get('GOMP_SPINCOUNT'))"
    env = {key: value for key, value in os.environ.items() if key not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    run = lambda extra: subprocess.run([sys.executable, "-c", probe], env={**env, **extra}, capture_output=True,
                                       text=True, check=True).stdout.strip()  # fmt: skip
    assert run({}) == "10000"
    assert run({"GOMP_SPINCOUNT": "42"}) == "42"
    assert run({"OMP_WAIT_POLICY": "ACTIVE"}) == "None"
