"""The benchmark's measuring parts: alternation, child processes, comparisons that must hold before a ratio counts.
Timings themselves are never asserted."""

import pytest
import torch

from atrous.bench import Report, _gpu, gpu_section, run_bench, timing
from atrous.bench.models import model_pair, torchvision_deeplabv3
from atrous.bench.pipeline import confusion_matrix_update, densecrf_cores
from atrous.bench.timing import ab_medians, peak_rss_mib, run_child
from atrous.cli import main


def test_ab_medians_alternates_candidates_within_each_round():
    calls = []
    medians = ab_medians({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=3, warmup=1,
                         min_seconds=0, settle=0)  # fmt: skip
    assert calls == ["a", "b"] + ["a", "b"] * 3
    assert set(medians) == {"a", "b"} and all(value >= 0 for value in medians.values())


def test_ab_medians_repeats_short_candidates_and_settles_before_every_sample(monkeypatch):
    """On a clock the candidates drive: a 0.02 s call is made 5 times a round to last 0.1 s, a 0.3 s one once,
    one too short to measure at most MAX_REPEATS times; every median is per call; the pause comes before every
    sample (warm-up calls included), never between the calls of one sample. Without warm-up: once a round."""
    now = [0.0]
    monkeypatch.setattr(timing, "_clock", lambda: now[0])
    calls = []
    monkeypatch.setattr(timing, "_sleep", lambda seconds: calls.append(f"pause {seconds}"))

    def candidate(name, seconds):
        def run():
            calls.append(name)
            now[0] += seconds

        return run

    candidates = {"short": candidate("short", 0.02), "long": candidate("long", 0.3), "instant": candidate("instant", 1e-9)}
    medians = ab_medians(candidates, rounds=2, warmup=1, min_seconds=0.1, settle=0.05)
    one_round = ["pause 0.05", *["short"] * 5, "pause 0.05", "long", "pause 0.05", *["instant"] * timing.MAX_REPEATS]
    assert calls == ["pause 0.05", "short", "pause 0.05", "long", "pause 0.05", "instant"] + one_round * 2
    assert medians["short"] == pytest.approx(0.02) and medians["long"] == pytest.approx(0.3)
    assert medians["instant"] == pytest.approx(1e-9)
    calls.clear()
    ab_medians(candidates, rounds=2, warmup=0, min_seconds=0.1, settle=0)
    assert [call for call in calls if not call.startswith("pause")] == ["short", "long", "instant"] * 2


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


@pytest.mark.parametrize("output_stride, depth", [(8, 101), (16, 50)])
def test_torchvision_models_are_assembled_as_torchvision_builds_them(output_stride, depth):
    """The bench's torchvision side is torchvision's own DeepLabV3 (output stride 8); at 16 only layer4 is dilated."""
    from torchvision.models.segmentation import deeplabv3_resnet50, deeplabv3_resnet101

    ours = torchvision_deeplabv3(output_stride, depth=depth)
    if output_stride == 8:
        builder = {50: deeplabv3_resnet50, 101: deeplabv3_resnet101}[depth]
        assert str(ours) == str(builder(weights=None, weights_backbone=None, num_classes=21, aux_loss=False))
    dilations = {name: m.dilation for name, m in ours.backbone.named_modules() if name.endswith("conv2")}
    assert dilations["layer3.0.conv2"] == (1, 1)  # a dilated layer's first block keeps the stride it replaces
    assert dilations["layer3.1.conv2"] == ((1, 1) if output_stride == 16 else (2, 2))
    assert dilations["layer4.1.conv2"] == ((2, 2) if output_stride == 16 else (4, 4))
    assert sum(1 for name in dilations if name.startswith("layer3")) == {50: 6, 101: 23}[depth]


def test_model_pair_at_resnet101_holds_one_set_of_weights():
    images = torch.randn(2, 3, 65, 65)
    theirs, ours = model_pair(16, images, depth=101)
    with torch.no_grad():
        torch.testing.assert_close(ours(images).logits, theirs(images)["out"], rtol=1e-4, atol=1e-4)


def test_gpu_section_runs_its_measures_on_the_cpu():
    """The GPU section's code on the CPU (bf16, small): both models in one training loop from one set of weights,
    peak memory from child processes, latency rows per batch size; the report holds the figures."""
    lines = []
    measured = gpu_section(Report(lines.append), torch.device("cpu"), rounds=1, depth=50, size=65, batch=2,
                           latency_batches=(1, 2))  # fmt: skip
    training = measured["training"]
    assert training["amp"] == "bf16"
    # Warm-up and one round; a short step is repeated within the round (ab_medians), as often as its time says.
    assert all(2 <= len(losses) <= 1 + timing.MAX_REPEATS for losses in training["losses"].values())
    assert training["max_relative_loss_difference"] < 0.02, training["losses"]  # bf16 rounding, nothing more
    assert all(value > 100 for value in measured["memory"].values()), measured["memory"]  # a ResNet-50 is ~100 MiB
    assert [row["batch"] for row in measured["inference"]] == [1, 2]
    assert all(row["runtime"] == "bf16" and row["agreement"] > 0.9 for row in measured["inference"])
    text = "\n".join(lines)
    assert "CPU training: DeepLabV3-ResNet50 OS16, 65x65 crop, batch 2, AMP bf16" in text
    assert f"| atrous | {training['seconds']['atrous']:.3f} |" in text
    assert "pixels predicted alike" in text and "| 2 |" in text


def test_gpu_section_says_when_there_is_no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    lines = []
    _gpu(Report(lines.append), rounds=1)
    assert any("no CUDA GPU on this machine" in line for line in lines)


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
    with pytest.raises(ValueError, match=r"unknown bench sections \['tpu'\]"):
        run_bench(sections=("tpu",))
    assert main(["bench", "--compare", "mmseg"]) == 2
    assert "--compare supports 'torchvision'" in capsys.readouterr().err


def test_the_machine_is_named_with_the_instruction_sets_that_choose_paths(tmp_path):
    from atrous.bench.machine import fma_peak_gflops, fma_width_bits, this_machine

    def cpuinfo(name, vendor, family, flags, mhz):
        text = "".join(f"processor\t: {i}\nvendor_id\t: {vendor}\ncpu family\t: {family}\nmodel name\t: {name}\n"
                       f"cpu MHz\t\t: {mhz}\nflags\t\t: {flags}\n\n" for i in range(2))  # fmt: skip
        path = tmp_path / f"{name.split()[0]}-{family}"
        path.write_text(text)
        return path

    avx512 = "fpu sse avx2 avx512f avx512_bf16 avx512_vnni"
    zen4 = cpuinfo("AMD EPYC 9R14 96-Core Processor", "AuthenticAMD", 25, avx512, "2600.000")
    zen5 = cpuinfo("AMD EPYC 9575F 64-Core Processor", "AuthenticAMD", 26, avx512, "2600.000")
    intel = cpuinfo("Intel(R) Xeon(R) Platinum 8488C", "GenuineIntel", 6, avx512 + " amx_bf16 amx_tile amx_int8",
                    "2400.000")  # fmt: skip
    amd = this_machine(zen4)
    assert amd.cpu == "AMD EPYC 9R14 96-Core Processor" and amd.has("avx512_bf16") and not amd.has("amx_tile")
    assert (amd.vendor, amd.family) == ("AuthenticAMD", 25)
    assert this_machine(intel).has("amx_int8") and "amx_tile" in str(this_machine(intel))
    assert amd.ghz == pytest.approx(2.6)
    cores = amd.cores  # the machine running the test: cores come from the OS, not the file
    # Zen 4 runs AVX-512 on 256-bit units (8 fp32 lanes each); Zen 5 and Intel's AVX-512 cores have 512-bit ones.
    assert [fma_width_bits(this_machine(path)) for path in (zen4, zen5, intel)] == [256, 512, 512]
    assert fma_peak_gflops(amd) == pytest.approx(cores * 2 * 8 * 2 * 2.6)
    assert fma_peak_gflops(this_machine(intel)) == pytest.approx(cores * 2 * 16 * 2 * 2.4)
