"""Telling an out-of-memory failure from other errors, and how much it asked for, whichever allocator said it: CUDA
(``torch.OutOfMemoryError``), torch's CPU allocator (a ``RuntimeError``: "DefaultCPUAllocator: can't allocate
memory: you tried to allocate N bytes"), C++ code (``std::bad_alloc``) and Python (``MemoryError``)."""

from __future__ import annotations

import re

_CPU_ASKED = re.compile(r"you tried to allocate (\d+) bytes")
_CUDA_ASKED = re.compile(r"Tried to allocate ([\d.]+ [KMGT]?i?B)")


def is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, MemoryError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and (
        "out of memory" in text or "DefaultCPUAllocator: can't allocate memory" in text or "bad_alloc" in text
    )


def memory_asked(error: BaseException) -> str | None:
    """The size of the allocation that failed, as "2.0 GiB", when the allocator said it."""
    text = str(error)
    cpu = _CPU_ASKED.search(text)
    if cpu is not None:
        return f"{int(cpu[1]) / 2**30:.1f} GiB" if int(cpu[1]) >= 2**30 else f"{int(cpu[1]) / 2**20:.0f} MiB"
    cuda = _CUDA_ASKED.search(text)
    return cuda[1] if cuda is not None else None
