"""glibc allocator settings for training on the CPU.

By default glibc returns large freed blocks (a batch's activations) to the kernel and faults
them in again on the next step: thousands of page faults per step. Fixed thresholds keep such
blocks in the process for reuse, at a little peak memory (measured: docs/performance.md).
"""

from __future__ import annotations

import ctypes
import ctypes.util

# The same settings as environment variables, for a child process started before Python.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 * 2**20), "MALLOC_TRIM_THRESHOLD_": str(2**30)}
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, from glibc's malloc.h


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def release_free_memory() -> bool:
    """Hands the allocator's free pages back to the kernel (glibc's ``malloc_trim``).

    With :func:`tune_malloc`'s trim threshold glibc keeps freed memory for reuse; after a
    one-off peak, such as reading a data file, this returns it.

    Returns:
        Whether it ran (False where the C library is not glibc).
    """
    libc = _libc()
    if libc is None or not hasattr(libc, "malloc_trim"):
        return False
    libc.malloc_trim(0)
    return True


def tune_malloc() -> bool:
    """Sets :data:`MALLOC_ENV`'s thresholds in this process.

    Returns:
        Whether they were set (False where the C library is not glibc).
    """
    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    return all(
        libc.mallopt(param, int(MALLOC_ENV[name])) == 1
        for param, name in (
            (_M_MMAP_THRESHOLD, "MALLOC_MMAP_THRESHOLD_"),
            (_M_TRIM_THRESHOLD, "MALLOC_TRIM_THRESHOLD_"),
        )
    )
