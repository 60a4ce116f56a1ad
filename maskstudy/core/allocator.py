"""The C allocator's handling of large freed blocks, for training and evaluation on the CPU (glibc only).

glibc serves large blocks with fresh ``mmap`` calls (its threshold starts at 128 KiB and rises to the largest
block freed so far, at most 32 MiB) and returns free memory at the top of the heap to the system beyond its trim
threshold (twice the mmap threshold). A training step allocates and frees tens of megabytes of activations and
gradients, so every step the pages came back from the kernel zero-filled, one page fault per 4 KiB: measured
5,000-11,000 faults (22-46 MB) per step of the cpu profile's IR-ResNet-18 with torch 2.14, against 0-550 with
:func:`keep_freed_memory`, and 5-15 % of the step's CPU time. PyTorch's performance guide reaches the same end by
preloading jemalloc or tcmalloc; :func:`keep_freed_memory` needs no other library.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

#: glibc's ``mallopt`` parameters (``malloc.h``).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
#: Blocks up to this size come from the heap and are reused (glibc's upper bound on 64-bit systems).
MMAP_THRESHOLD = 32 * 1024 * 1024
#: Free memory at the top of the heap is kept up to this size instead of being returned after every step.
TRIM_THRESHOLD = 512 * 1024 * 1024
#: Set to ``0`` to keep glibc's defaults.
ENV_SWITCH = "MASKSTUDY_KEEP_FREED_MEMORY"

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Once per process: have glibc keep freed blocks of up to :data:`MMAP_THRESHOLD` for reuse and keep up to
    :data:`TRIM_THRESHOLD` of free heap instead of returning it to the system. Process-wide and not undone (the
    cost is that the process's resident memory stays at its peak, as with jemalloc). Returns whether the
    settings are in force: False without glibc (macOS, Windows, musl) or with ``MASKSTUDY_KEEP_FREED_MEMORY=0``."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get(ENV_SWITCH, "1").strip() in ("0", "false", "no"):
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
        glibc = hasattr(libc, "gnu_get_libc_version")  # musl has no such symbol, and other mallopt semantics
    except (OSError, AttributeError):
        return False
    if not glibc:
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _applied
