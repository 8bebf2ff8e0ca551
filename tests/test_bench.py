"""The benchmark's measuring parts: alternation, child processes, comparisons that must hold before a ratio counts.
Timings themselves are never asserted."""

import pytest
import torch

from atrous.bench import Report, run_bench
from atrous.bench.models import model_pair
from atrous.bench.pipeline import confusion_matrix_update, densecrf_cores
from atrous.bench.timing import ab_medians, peak_rss_mib, run_child
from atrous.cli import main


def test_ab_medians_alternates_candidates_within_each_round():
    calls = []
    medians = ab_medians({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=3, warmup=1)
    assert calls == ["a", "b"] + ["a", "b"] * 3
    assert set(medians) == {"a", "b"} and all(value >= 0 for value in medians.values())


PROBE = """
import json, sys
from atrous.bench.timing import peak_rss_mib
task = json.loads(sys.argv[1])
if task["allocate_mib"] < 0:
    raise SystemExit("negative allocation")
ballast = bytearray(task["allocate_mib"] * 2**20)
print(json.dumps({"peak_mib": peak_rss_mib()}))
"""


@pytest.fixture
def probe_module(tmp_path, monkeypatch):
    (tmp_path / "memory_probe.py").write_text(PROBE)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    return "memory_probe"


def test_child_reports_its_own_peak_memory_not_its_parents(probe_module):
    ballast = torch.ones(600 * 2**20 // 4)  # the parent's peak is now >= 600 MiB above a bare interpreter
    parent = peak_rss_mib()
    small, large = run_child(probe_module, {"allocate_mib": 1}), run_child(probe_module, {"allocate_mib": 300})
    assert small["peak_mib"] < parent - 400, (small, parent)
    assert 250 < large["peak_mib"] - small["peak_mib"] < 350, (small, large)
    del ballast


def test_child_failure_names_the_task(probe_module):
    with pytest.raises(RuntimeError, match=r"benchmark child memory_probe \{'allocate_mib': -1\} failed"):
        run_child(probe_module, {"allocate_mib": -1})


def test_model_pair_holds_one_set_of_weights():
    images = torch.randn(2, 3, 65, 65)
    theirs, ours = model_pair(16, images)
    with torch.no_grad():
        torch.testing.assert_close(ours(images).logits, theirs(images)["out"], rtol=1e-4, atol=1e-4)


def test_pipeline_measures_check_their_results_first():
    metrics = confusion_matrix_update(updates=10, rounds=1)
    assert metrics["atrous"] > 0 and metrics["torchmetrics"] > 0
    crf = densecrf_cores(images=2, size=33)
    assert crf["workers"] >= 1 and crf["serial_s"] > 0


def test_report_writes_markdown_tables():
    lines = []
    report = Report(lines.append)
    report.table(["a", "b"], [["1", "2"]])
    assert lines == ["| a | b |", "|---|---|", "| 1 | 2 |", ""]


def test_bench_rejects_unknown_sections_and_references(capsys):
    with pytest.raises(ValueError, match=r"unknown bench sections \['gpu'\]"):
        run_bench(sections=("gpu",))
    assert main(["bench", "--compare", "mmseg"]) == 2
    assert "--compare supports 'torchvision'" in capsys.readouterr().err
