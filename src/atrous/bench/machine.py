"""What machine a figure was measured on: the CPU's model, its core count and the instruction sets that decide which
kernels are fast (AVX-512, native bf16, VNNI for int8, AMX tiles), and the GPU when there is one."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

import torch

# The flags that choose between fast paths, in /proc/cpuinfo's spelling.
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8")


@dataclass(frozen=True)
class Machine:
    cpu: str
    cores: int
    flags: tuple[str, ...]  # the ISA_FLAGS this CPU has
    gpu: str | None
    ghz: float | None = None  # the clock the system states (the highest "cpu MHz"; virtual machines often show the
    # nominal one), None where it states none
    vendor: str | None = None  # /proc/cpuinfo's vendor_id: GenuineIntel, AuthenticAMD
    family: int | None = None  # its "cpu family": 25 = AMD Zen 3/Zen 4, 26 = Zen 5

    def has(self, flag: str) -> bool:
        return flag in self.flags

    def __str__(self) -> str:
        gpu = f"; GPU {self.gpu}" if self.gpu else ""
        return f"{self.cpu}, {self.cores} cores ({' '.join(self.flags) or 'no AVX2/AVX-512'}){gpu}"


CPUINFO = Path("/proc/cpuinfo")


def _cpuinfo(path: Path) -> dict:
    """Model name, flags, highest stated clock in GHz, vendor and family from /proc/cpuinfo (Linux); the platform's
    processor name and nothing else elsewhere."""
    found = {"name": platform.processor() or platform.machine(), "flags": set(), "vendor": None, "family": None}
    megahertz = []
    if path.is_file():
        for line in path.read_text(errors="replace").splitlines():
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
    return {**found, "ghz": max(megahertz) / 1000 if megahertz else None}


def fma_width_bits(machine: Machine) -> int:
    """How wide each FMA unit computes: 512 bits with AVX-512, except AMD Zen 4 (family 25), which runs AVX-512 on
    256-bit units, two passes per instruction (Zen 5, family 26, has 512-bit units); 256 with AVX2; 128 otherwise."""
    if machine.has("avx512f"):
        return 256 if (machine.vendor, machine.family) == ("AuthenticAMD", 25) else 512
    return 256 if machine.has("avx2") else 128


def fma_peak_gflops(machine: Machine) -> float:
    """Theoretical fp32 peak: cores x 2 FMA units x fp32 lanes per unit (``fma_width_bits`` / 32) x 2 FLOPs x the
    stated clock. Two FMA units is what server cores of both vendors have; the bench prints the figure as an
    assumption."""
    return machine.cores * 2 * (fma_width_bits(machine) // 32) * 2 * machine.ghz


def this_machine(cpuinfo: Path = CPUINFO) -> Machine:
    found = _cpuinfo(cpuinfo)
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return Machine(cpu=found["name"], cores=os.cpu_count() or 1, flags=tuple(f for f in ISA_FLAGS if f in found["flags"]),
                   gpu=gpu, ghz=found["ghz"], vendor=found["vendor"], family=found["family"])  # fmt: skip
