"""Keep freed tensor memory in the process instead of returning it to the OS (glibc only).

A training step on the CPU allocates and frees the same large tensors every round (attention
scores of a length bucket: ``[B, heads, L, L]``, tens of MB). glibc's ``malloc`` serves blocks
above its mmap threshold with a fresh ``mmap`` and unmaps them on ``free``, and trims the top of
its heap when more than the trim threshold is free there, so each round the kernel hands the
same memory back page by page: on an ml-1m FedSGD round of 256 clients (SASRec, max_len 200)
that was 91,156 minor page faults and a 1.6× slower round (``benchmarks/engines.py``, variant
``a0`` against ``a``; docs/benchmarks.md).
:func:`keep_freed_memory` raises both thresholds with ``mallopt`` (the documented glibc knobs
``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD``, also settable as ``MALLOC_MMAP_THRESHOLD_`` /
``MALLOC_TRIM_THRESHOLD_`` in the environment), so freed blocks are reused by the next round.

It changes no result, only where memory comes from. The peak resident set is the same; between
rounds the process keeps up to ``trim_bytes`` of freed memory instead of returning it. Blocks
above glibc's largest mmap threshold (32 MiB on 64-bit) are still mapped and unmapped each
time. On another C library (macOS, musl) it does nothing; ``FEDREC_MALLOC_TUNING=0`` turns it
off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

#: ``mallopt`` parameter numbers (glibc ``malloc.h``).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

#: glibc's ceiling for ``M_MMAP_THRESHOLD`` on 64-bit (``DEFAULT_MMAP_THRESHOLD_MAX``).
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024

_DONE = False


def keep_freed_memory(trim_bytes: int = 1 << 30) -> bool:
    """Raise glibc's mmap and trim thresholds once per process.

    Parameters
    ----------
    trim_bytes : int
        Freed memory at the top of the heap that is kept before ``malloc`` returns it to the
        OS (default 1 GiB).

    Returns
    -------
    bool
        True when the thresholds are set (now or by an earlier call); False where this is not
        glibc or ``FEDREC_MALLOC_TUNING=0``.
    """
    global _DONE
    if _DONE:
        return True
    if os.environ.get("FEDREC_MALLOC_TUNING", "1") == "0":
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
        if not hasattr(libc, "gnu_get_libc_version"):
            return False
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX) == 1
    ok = mallopt(M_TRIM_THRESHOLD, int(min(trim_bytes, 2**31 - 1))) == 1 and ok
    _DONE = ok
    return ok
