"""Allocator tuning for the command-line process: keep freed memory for the next batch.

Convolution activations are tens to hundreds of megabytes. glibc's ``malloc`` serves blocks
above its mmap threshold (dynamic, 128 KiB to 32 MiB) with fresh ``mmap`` calls and unmaps them
on ``free``, so every batch maps new pages and the kernel zero-fills each one on first touch. On
a virtual machine those page faults cost nearly as much as the arithmetic. Raising the threshold
above the largest activation, and the trim threshold so that the heap's free top survives
between batches, lets a batch reuse much of the memory the previous one freed
(``benchmarks/allocator.py`` measures it; the README keeps the figures). The trim threshold is
kept moderate so that a steady loop of batches stays at the default's resident size.
PyTorch's CPU performance guide recommends jemalloc or tcmalloc for the same reason; this uses
the allocator already loaded.

Only ``fracturekit``'s command line calls it, and not for ``serve``: a library must not change
its host process's allocator, and a long-running service must give a burst's memory back.
``FRACTUREKIT_MALLOC=0`` switches it off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# mallopt parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# Blocks up to this size come from the heap and are reused; larger ones are still mapped.
MMAP_THRESHOLD = 512 << 20
TRIM_THRESHOLD = 256 << 20  # keep up to 256 MiB of free heap for the next batch


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process. True when applied.

    Does nothing (False) off Linux/glibc, when ``FRACTUREKIT_MALLOC=0``, or when the C library
    refuses a value. Memory freed by one batch is then reused by the next instead of being
    unmapped and faulted in again.
    """
    if os.environ.get("FRACTUREKIT_MALLOC", "1").strip() == "0" or not sys.platform.startswith(
        "linux"
    ):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
