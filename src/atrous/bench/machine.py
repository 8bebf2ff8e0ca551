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

    def has(self, flag: str) -> bool:
        return flag in self.flags

    def __str__(self) -> str:
        gpu = f"; GPU {self.gpu}" if self.gpu else ""
        return f"{self.cpu}, {self.cores} cores ({' '.join(self.flags) or 'no AVX2/AVX-512'}){gpu}"


CPUINFO = Path("/proc/cpuinfo")


def _cpuinfo(path: Path) -> tuple[str, set[str], float | None]:
    """(model name, flags, highest stated clock in GHz) from /proc/cpuinfo (Linux); the platform's processor name, no
    flags and no clock elsewhere."""
    name, flags, megahertz = platform.processor() or platform.machine(), set(), []
    if path.is_file():
        for line in path.read_text(errors="replace").splitlines():
            key, _, value = (part.strip() for part in line.partition(":"))
            if key == "model name" and value:
                name = value
            elif key == "flags":
                flags = set(value.split())
            elif key == "cpu MHz" and value:
                megahertz.append(float(value))
    return name, flags, max(megahertz) / 1000 if megahertz else None


def fma_peak_gflops(machine: Machine) -> float:
    """Theoretical fp32 peak: cores x 2 FMA units x lanes (16 with AVX-512, 8 with AVX2, 4 otherwise) x 2 FLOPs x
    the stated clock. Two FMA units is what server cores of both vendors have; the bench prints the figure as an
    assumption."""
    lanes = 16 if machine.has("avx512f") else 8 if machine.has("avx2") else 4
    return machine.cores * 2 * lanes * 2 * machine.ghz


def this_machine(cpuinfo: Path = CPUINFO) -> Machine:
    name, flags, ghz = _cpuinfo(cpuinfo)
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return Machine(cpu=name, cores=os.cpu_count() or 1, flags=tuple(f for f in ISA_FLAGS if f in flags), gpu=gpu,
                   ghz=ghz)  # fmt: skip
