"""Keep freed CPU memory in the process instead of returning it to the OS after every step.

glibc serves every allocation above its mmap threshold (at most 32 MiB) with a fresh ``mmap`` and
unmaps it on free. A CPU training step at 256x256 allocates activation tensors of 50-400 MiB, so each
step page-faults (and the kernel zeroes) gigabytes anew: the fine-tuning benchmark saw 67 M minor
faults and 2.5 of 9.8 CPU-minutes in the kernel. With ``mmap`` disabled and trimming off, freed
blocks stay on the heap and the next step reuses them: 9.5 -> 4.4 s per two-stream step (half-width
D2) and 5.1 -> 3.1 s per supervised step at 256x256 on the 2-core machine (docs/BENCHMARKS.md). The price is that the
process keeps its peak RSS, which a training process reaches every step anyway.

This is process-wide and only affects allocations made afterwards; it does nothing on non-glibc
platforms (macOS, Windows, musl) and never raises.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

__all__ = ["retain_freed_memory"]

logger = logging.getLogger(__name__)

# mallopt parameter numbers from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
# Largest trim threshold glibc accepts (an int): never give the heap's top back to the OS.
_NEVER_TRIM = 2**31 - 1


def retain_freed_memory(enable: bool = True) -> bool:
    """Ask glibc to serve large allocations from the heap and keep freed memory for reuse.

    Args:
        enable: ``False`` does nothing (the config switch ``retain_freed_memory: false``).

    Returns:
        ``True`` if both ``mallopt`` calls succeeded, ``False`` if disabled or not glibc.
    """
    if not enable or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM))
    logger.debug("retain_freed_memory: mallopt %s", "applied" if ok else "refused")
    return ok
