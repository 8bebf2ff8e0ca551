"""What this CPU has, and what oneDNN may use of it: for the fast paths chosen at run time and for the figures that
name the machine they were measured on.

What the hardware has: torch's probes (AMX, native bf16), and /proc/cpuinfo for the model, clock and the instruction
set flags that choose between fast paths (``processor``). What oneDNN may use: the hardware capped by
``ONEDNN_MAX_CPU_ISA``, the variable oneDNN itself obeys: a process that keeps oneDNN off AMX gets atrous's no-AMX
paths too (and a bench run can measure them on an AMX machine). ONNX Runtime ignores the cap (its int8 kernels use
whatever the hardware has), so a question about ONNX Runtime asks the hardware.
"""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass
from pathlib import Path

import torch

# oneDNN's ISA names, lowest first (its documentation, "CPU ISA hints"); ALL = no cap.
ONEDNN_ISAS = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI",
               "AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16", "ALL")  # fmt: skip
# The flags that choose between fast paths, in /proc/cpuinfo's spelling, each with the lowest oneDNN ISA that uses it.
ISA_FLAGS = {"avx2": "AVX2", "avx512f": "AVX512_CORE", "avx512_bf16": "AVX512_CORE_BF16",
             "avx512_vnni": "AVX512_CORE_VNNI", "amx_tile": "AVX512_CORE_AMX", "amx_bf16": "AVX512_CORE_AMX",
             "amx_int8": "AVX512_CORE_AMX"}  # fmt: skip
CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True)
class Processor:
    """What the system says of its CPU: /proc/cpuinfo on Linux; elsewhere the platform's processor name only."""

    name: str
    flags: tuple[str, ...]  # the ISA_FLAGS it has, in ISA_FLAGS' order
    ghz: float | None = None  # the highest stated "cpu MHz" (virtual machines often show the nominal clock)
    vendor: str | None = None  # vendor_id: GenuineIntel, AuthenticAMD
    family: int | None = None  # "cpu family": 25 = AMD Zen 3/Zen 4, 26 = Zen 5


def processor(cpuinfo: Path = CPUINFO) -> Processor:
    """This CPU as ``cpuinfo`` describes it (a file in /proc/cpuinfo's format)."""
    found = {"name": platform.processor() or platform.machine(), "flags": set(), "vendor": None, "family": None}
    megahertz = []
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = (part.strip() for part in line.partition(":"))
            if key == "model name" and value:
                found["name"] = value
            elif key == "flags":
                found["flags"] = set(value.split())
            elif key == "cpu MHz" and value:
                megahertz.append(float(value))
            elif key == "vendor_id" and value:
                found["vendor"] = value
            elif key == "cpu family" and value.isdigit():
                found["family"] = int(value)
    return Processor(name=found["name"], flags=tuple(flag for flag in ISA_FLAGS if flag in found["flags"]),
                     ghz=max(megahertz) / 1000 if megahertz else None, vendor=found["vendor"],
                     family=found["family"])  # fmt: skip


def onednn_cap() -> str | None:
    """The ISA oneDNN is capped at (``ONEDNN_MAX_CPU_ISA``, or its older name ``DNNL_MAX_CPU_ISA``), None without one."""
    return os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or None


def onednn_allows(isa: str) -> bool:
    """Whether oneDNN's cap leaves it ``isa`` (one of ``ONEDNN_ISAS``), if the hardware has it."""
    cap = (onednn_cap() or "ALL").upper()
    if cap not in ONEDNN_ISAS:  # oneDNN ignores a name it does not know; so do we
        return True
    return ONEDNN_ISAS.index(cap) >= ONEDNN_ISAS.index(isa)


def onednn_may_use(flag: str, flags: tuple[str, ...]) -> bool:
    """Whether oneDNN may use the instruction set ``flag`` (one of ``ISA_FLAGS``) on a CPU with ``flags``: the
    hardware has it and the cap leaves it."""
    return flag in flags and onednn_allows(ISA_FLAGS[flag])


def _torch_reports(name: str) -> bool:
    probe = getattr(torch.cpu, name, None)  # private probes: a torch without one reads as "absent"
    return bool(probe()) if probe is not None else False


@functools.cache
def amx_bf16() -> bool:
    """AMX tiles with bf16 (Intel Sapphire Rapids and later), usable by oneDNN."""
    return _torch_reports("_is_amx_tile_supported") and onednn_allows("AVX512_CORE_AMX")


@functools.cache
def amx_fp16() -> bool:
    return _torch_reports("_is_amx_fp16_supported") and onednn_allows("AVX512_CORE_AMX_FP16")


@functools.cache
def native_bf16() -> bool:
    """bf16 arithmetic in hardware (AVX512_BF16: Intel Cooper Lake and later, AMD Zen 4 and later; or AMX). Without
    it, bf16 is emulated: an atrous layer measured 4-8.5x slower than float32 (BENCHMARKS.md)."""
    return (_torch_reports("_is_avx512_bf16_supported") and onednn_allows("AVX512_CORE_BF16")) or amx_bf16()


def fast_reduced_precision_matmuls(dtype: torch.dtype) -> bool:
    """Whether matrix products in ``dtype`` run on AMX here, where they beat oneDNN's dilated bf16/fp16
    convolutions 2-4x (one ASPP layer forward + backward, BENCHMARKS.md); without AMX, oneDNN's convolutions were
    1.1-1.2x faster in three of four shapes."""
    return amx_bf16() if dtype == torch.bfloat16 else amx_fp16() if dtype == torch.float16 else False


def warn_if_slow_on_this_cpu(device: torch.device, dtype: torch.dtype, what: str, logger) -> None:
    """Say so, once per run, when ``what`` asks for ``dtype`` (bf16 or fp16) on a CPU that has no hardware for it:
    it works, but slower than the float32 the user was trying to beat."""
    if device.type != "cpu":
        return
    if dtype == torch.bfloat16 and not native_bf16():
        logger.warning("%s: this CPU has no native bf16 (AVX512_BF16 or AMX), so bf16 is emulated here and runs "
                       "slower than float32 (4-8x measured, BENCHMARKS.md); float32 is the fast choice on it", what)
    elif dtype == torch.float16 and not amx_fp16():
        # Measured: DeepLabV3-R50 at 513 took 1.3x float32's time in fp16 on an Intel Xeon with AVX512-FP16
        # and AMX-BF16 (bf16: 0.35x); a CPU without AVX512-FP16 can only do worse.
        logger.warning("%s: fp16 is a GPU's half precision; without AMX-FP16 a CPU runs it slower than float32 "
                       "(1.3x float32's time measured); use bf16 (%s on this CPU) or float32 here", what,
                       "native" if native_bf16() else "emulated, so float32")  # fmt: skip
