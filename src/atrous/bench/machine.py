"""What machine a figure was measured on: the CPU's model, its core count and the instruction sets that decide which
kernels are fast (AVX-512, native bf16, VNNI for int8, AMX tiles), and the GPU when there is one. The CPU's facts
come from ``atrous.cpu``, the one reader of what the hardware has and what oneDNN may use of it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import cpu


@dataclass(frozen=True)
class Machine:
    cpu: str
    cores: int
    flags: tuple[str, ...]  # the cpu.ISA_FLAGS the hardware has (ONNX Runtime uses them all)
    gpu: str | None
    ghz: float | None = None  # the clock the system states (the highest "cpu MHz"; virtual machines often show the
    # nominal one), None where it states none
    vendor: str | None = None  # /proc/cpuinfo's vendor_id: GenuineIntel, AuthenticAMD
    family: int | None = None  # its "cpu family": 25 = AMD Zen 3/Zen 4, 26 = Zen 5

    def has(self, flag: str) -> bool:
        """The hardware has ``flag``: what ONNX Runtime's kernels, which ignore oneDNN's cap, may use."""
        return flag in self.flags

    def onednn_may_use(self, flag: str) -> bool:
        """The hardware has ``flag`` and oneDNN's cap (``ONEDNN_MAX_CPU_ISA``) leaves it: what torch's kernels use."""
        return cpu.onednn_may_use(flag, self.flags)

    def __str__(self) -> str:
        gpu = f"; GPU {self.gpu}" if self.gpu else ""
        return f"{self.cpu}, {self.cores} cores ({' '.join(self.flags) or 'no AVX2/AVX-512'}){gpu}"


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


def this_machine(cpuinfo: Path = cpu.CPUINFO) -> Machine:
    found = cpu.processor(cpuinfo)
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return Machine(cpu=found.name, cores=os.cpu_count() or 1, flags=found.flags, gpu=gpu, ghz=found.ghz,
                   vendor=found.vendor, family=found.family)  # fmt: skip
