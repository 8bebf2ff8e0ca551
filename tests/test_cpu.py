"""Fast paths chosen from what the CPU has, capped the way oneDNN is capped (ONEDNN_MAX_CPU_ISA)."""

import logging

import pytest
import torch

import atrous
from atrous import cpu
from atrous.runtime import prepare_inference


@pytest.fixture(autouse=True)
def fresh_answers():
    for probe in (cpu.amx_bf16, cpu.amx_fp16, cpu.native_bf16):
        probe.cache_clear()
    yield
    for probe in (cpu.amx_bf16, cpu.amx_fp16, cpu.native_bf16):
        probe.cache_clear()


def test_the_onednn_cap_turns_off_what_it_excludes(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    answers = {}
    for cap in ("ALL", "avx512_core_amx", "AVX512_CORE_BF16", "AVX512_CORE", "AVX2", "not-an-isa"):
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
        cpu.amx_bf16.cache_clear(), cpu.native_bf16.cache_clear()
        answers[cap] = (cpu.amx_bf16(), cpu.native_bf16(), cpu.fast_reduced_precision_matmuls(torch.bfloat16))
    assert answers == {
        "ALL": (True, True, True), "avx512_core_amx": (True, True, True),
        "AVX512_CORE_BF16": (False, True, False),  # AMD Zen 4's ISA: bf16 without AMX
        "AVX512_CORE": (False, False, False), "AVX2": (False, False, False),
        "not-an-isa": (True, True, True),  # oneDNN ignores a name it does not know
    }  # fmt: skip


def test_hardware_without_bf16_is_reported_whatever_the_cap(monkeypatch):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    assert not cpu.native_bf16() and not cpu.fast_reduced_precision_matmuls(torch.bfloat16)
    assert not cpu.fast_reduced_precision_matmuls(torch.float32)


@pytest.mark.parametrize("runtime, hardware, message", [
    ("bf16", "native_bf16", "this CPU has no native bf16"),  # emulated: slower than float32
    ("fp16", "amx_fp16", "fp16 is a GPU's half precision"),  # fast on a CPU only with AMX-FP16
])  # fmt: skip
def test_half_precision_on_a_cpu_without_the_hardware_is_warned_about(runtime, hardware, message, monkeypatch, caplog):
    model = atrous.build_model("deeplabv3", backbone="resnet18", num_classes=3, pretrained_backbone=None)
    monkeypatch.setattr(cpu, "native_bf16", lambda: True)
    for present in (True, False):
        monkeypatch.setattr(cpu, hardware, lambda present=present: present)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="atrous"):
            prepare_inference(model, runtime, device=torch.device("cpu"))
        warned = [r.getMessage() for r in caplog.records if message in r.getMessage()]
        assert len(warned) == (not present), warned
    if runtime == "fp16":  # and it says what to use instead
        assert "use bf16 (native on this CPU) or float32 here" in warned[0]


@pytest.mark.parametrize("cap", [None, "ALL", "AVX512_CORE_AMX", "AVX512_CORE_BF16", "AVX512_CORE_VNNI", "AVX2"])
def test_the_machine_the_bench_names_and_the_fast_paths_read_the_cpu_alike(cap, monkeypatch, tmp_path):
    """One reading of the CPU: the bench's machine says what the hardware has (ONNX Runtime's int8 kernels use it
    all) and what oneDNN may use of it, as the fast paths' probes say under the same cap."""
    from atrous.bench.machine import this_machine

    flags = "fpu avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8"
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"vendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel name\t: Xeon\ncpu MHz\t\t: 2400.0\n"
                       f"flags\t\t: {flags}\n")  # fmt: skip
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)  # the same hardware, as torch probes it
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    if cap is None:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    else:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    machine = this_machine(cpuinfo)
    assert machine.flags == ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8")
    assert all(machine.has(flag) for flag in machine.flags)  # the hardware, whatever the cap
    assert cpu.onednn_cap() == cap
    assert machine.onednn_may_use("amx_bf16") == cpu.amx_bf16()
    assert (machine.onednn_may_use("avx512_bf16") or machine.onednn_may_use("amx_bf16")) == cpu.native_bf16()
    uncapped = cap in (None, "ALL", "AVX512_CORE_AMX")
    assert machine.onednn_may_use("avx512_vnni") == (cap != "AVX2")
    assert cpu.amx_bf16() == uncapped
    assert not this_machine(tmp_path / "absent").flags  # no /proc/cpuinfo: no flags claimed
