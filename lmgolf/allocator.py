"""Freed memory kept for reuse on CPU: glibc's allocation thresholds raised for a training process.

glibc serves every block above its mmap threshold (dynamic, at most 32 MiB by default) with a fresh
mmap and hands it back to the OS when it is freed. A CPU training step frees and reallocates the same
activation buffers at every step, so each step faults in its memory again, page by page: about a fifth
of a step at nanoGPT's Shakespeare shape (docs/benchmarks.md). With both thresholds raised, freed blocks
stay in the heap and the next step reuses them; the cost is that the process keeps its peak memory.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

M_TRIM_THRESHOLD = -1  # mallopt parameter numbers from glibc's malloc.h
M_MMAP_THRESHOLD = -3
KEEP_BYTES = 1 << 30   # blocks up to 1 GiB come from the heap, and up to 1 GiB free at its top is kept


def keep_freed_memory(limit: int = KEEP_BYTES) -> bool:
    """Raises glibc's mmap and trim thresholds to `limit` bytes for this process; False where the C
    library is not glibc (nothing is changed there)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return False
    if not hasattr(libc, "mallopt"):
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, limit)) and bool(libc.mallopt(M_TRIM_THRESHOLD, limit))


def apply_cpu_malloc(choice: str, device_type: str) -> bool:
    """train.cpu_malloc for a run on `device_type`: True where freed memory is now kept (reuse, on CPU, glibc)."""
    return device_type == "cpu" and choice == "reuse" and keep_freed_memory()
