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

    def has(self, flag: str) -> bool:
        return flag in self.flags

    def __str__(self) -> str:
        gpu = f"; GPU {self.gpu}" if self.gpu else ""
        return f"{self.cpu}, {self.cores} cores ({' '.join(self.flags) or 'no AVX2/AVX-512'}){gpu}"


CPUINFO = Path("/proc/cpuinfo")


def _cpuinfo(path: Path = CPUINFO) -> tuple[str, set[str]]:
    """(model name, flags) from /proc/cpuinfo (Linux); the platform's processor name and no flags elsewhere."""
    name, flags = platform.processor() or platform.machine(), set()
    if path.is_file():
        for line in path.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                name = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
            if flags and name:
                break
    return name, flags


def clock_ghz(path: Path = CPUINFO) -> float | None:
    """The CPU's clock as the system states it (the highest "cpu MHz" in /proc/cpuinfo; virtual machines often show
    the nominal one), or None."""
    if not path.is_file():
        return None
    values = [float(line.split(":")[1]) for line in path.read_text(errors="replace").splitlines()
              if line.startswith("cpu MHz") and ":" in line]  # fmt: skip
    return max(values) / 1000 if values else None


def fma_peak_gflops(machine: Machine, ghz: float) -> float:
    """Theoretical fp32 peak: cores x 2 FMA units x lanes (16 with AVX-512, 8 with AVX2, 4 otherwise) x 2 FLOPs x
    clock. Two FMA units is what server cores of both vendors have; the bench prints the figure as an assumption."""
    lanes = 16 if machine.has("avx512f") else 8 if machine.has("avx2") else 4
    return machine.cores * 2 * lanes * 2 * ghz


def this_machine(cpuinfo: Path = CPUINFO) -> Machine:
    name, flags = _cpuinfo(cpuinfo)
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return Machine(cpu=name, cores=os.cpu_count() or 1, flags=tuple(f for f in ISA_FLAGS if f in flags), gpu=gpu)
