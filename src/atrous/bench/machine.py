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


def _cpuinfo() -> tuple[str, set[str]]:
    """(model name, flags) from /proc/cpuinfo (Linux); the platform's processor name and no flags elsewhere."""
    path = Path("/proc/cpuinfo")
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


def this_machine() -> Machine:
    name, flags = _cpuinfo()
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return Machine(cpu=name, cores=os.cpu_count() or 1, flags=tuple(f for f in ISA_FLAGS if f in flags), gpu=gpu)
