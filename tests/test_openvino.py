"""tests/openvino_checks.py, in a pytest process of its own: with OpenVINO loaded (its TBB threads, its own oneDNN)
the full suite's process later died of a segmentation fault, twice at the same point (around test 820 of 1190,
after test_openvino), which neither the OpenVINO tests with the tests after them nor any smaller subset reproduced.
Until that is found, OpenVINO does not share the suite's process; its checks still run and fail here by name."""

import subprocess
import sys
from pathlib import Path


def test_the_openvino_checks_pass_in_their_own_process():
    checks = Path(__file__).with_name("openvino_checks.py")
    completed = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(checks)],
                               capture_output=True, text=True, timeout=900, check=False)  # fmt: skip
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-2000:]
    assert " passed" in completed.stdout.splitlines()[-1]
