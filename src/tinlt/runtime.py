"""Process-level tuning applied once when the CLI starts.

glibc returns large freed blocks to the OS with munmap and maps them again on the next
step; PyTorch's CPU activations are exactly such blocks, and on our 2-core machines the
mmap/munmap churn took most of the CPU time. Raising the mmap and trim thresholds keeps
those blocks in the heap. ``mallopt`` does at run time what the MALLOC_*_ environment
variables do at start-up (measured side by side in ``benchmarks/malloc_effect.py``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# the largest C int; 32 MiB still left ~63k page faults per training step here (benchmarks/malloc_effect.py)
_THRESHOLD = 2**31 - 1
_done = False


def tune_allocator() -> bool:
    """Apply the thresholds unless the user set their own or opted out (TINLT_NO_MALLOC_TUNING=1)."""
    global _done
    if _done or os.environ.get("TINLT_NO_MALLOC_TUNING") == "1":
        return False
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, _THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, _THRESHOLD) == 1
    _done = ok
    return ok
