"""The process's memory on Linux/glibc: keep or hand back freed memory, and read the resident set.

- :func:`retain_freed_memory` (the configs' ``retain_freed_memory`` key): glibc serves every
  allocation above its mmap threshold (at most 32 MiB) with a fresh ``mmap`` and unmaps it on free,
  so a CPU training step whose activations are larger page-faults (and the kernel zeroes) them anew
  every step. With ``mmap`` disabled and trimming off, freed blocks stay on the heap and the next
  step reuses them; the price is that the process keeps its peak RSS, which a training process
  reaches every step anyway. What it saves: docs/history/BENCHMARKS.md, section "Page faults: why training
  configs call retain_freed_memory".
- :func:`malloc_trim`: hand freed heap memory back to the OS, so that a measurement starts from
  what is really live.
- :func:`current_rss`, :func:`peak_rss`, :func:`reset_peak_rss`, :func:`process_peak_rss`: the
  resident set in bytes, from ``/proc/self/status`` (``VmRSS``, and the kernel's high-water mark
  ``VmHWM``, resettable through ``/proc/self/clear_refs``), else ``getrusage``'s ``ru_maxrss``.

Everything is process-wide, does nothing where the platform lacks it (macOS, Windows, musl) and
never raises.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import resource
import sys
from pathlib import Path

__all__ = ["retain_freed_memory", "malloc_trim", "current_rss", "peak_rss", "reset_peak_rss", "process_peak_rss"]

logger = logging.getLogger(__name__)

# mallopt parameter numbers from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
# Largest trim threshold glibc accepts (an int): never give the heap's top back to the OS.
_NEVER_TRIM = 2**31 - 1


def _libc():
    """glibc's handle, or None where it is not glibc (looked up once)."""
    global _LIBC
    if _LIBC is None:
        _LIBC = False
        if sys.platform.startswith("linux"):
            try:
                _LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            except OSError:
                pass
    return _LIBC or None


_LIBC = None


def retain_freed_memory(enable: bool = True) -> bool:
    """Ask glibc to serve large allocations from the heap and keep freed memory for reuse.

    Only allocations made afterwards are affected.

    Args:
        enable: ``False`` does nothing (the config switch ``retain_freed_memory: false``).

    Returns:
        ``True`` if both ``mallopt`` calls succeeded, ``False`` if disabled or not glibc.
    """
    libc = _libc() if enable else None
    mallopt = getattr(libc, "mallopt", None)  # musl and others have no mallopt
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM))
    logger.debug("retain_freed_memory: mallopt %s", "applied" if ok else "refused")
    return ok


def malloc_trim() -> None:
    """Hand freed heap memory back to the OS (glibc ``malloc_trim(0)``); a no-op elsewhere."""
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is not None:
        trim.argtypes = [ctypes.c_size_t]
        trim(0)


def _status_kib(key: str) -> int | None:
    """A ``/proc/self/status`` field in KiB (``VmRSS``, ``VmHWM``), or None where /proc is absent."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _ru_maxrss() -> int:
    """``getrusage``'s peak RSS of this process in bytes (KiB on Linux, bytes on macOS)."""
    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return value if sys.platform == "darwin" else value * 1024


def current_rss() -> int | None:
    """Resident set size of this process in bytes (``VmRSS``), or None where /proc is absent."""
    kib = _status_kib("VmRSS")
    return None if kib is None else kib * 1024


def peak_rss() -> int:
    """Peak RSS in bytes since the last :func:`reset_peak_rss` (``VmHWM``), else the process-wide
    ``ru_maxrss``."""
    kib = _status_kib("VmHWM")
    return kib * 1024 if kib is not None else _ru_maxrss()


_PROCESS_PEAK = 0  #: highest peak seen before a reset (a reset also lowers ``ru_maxrss``)


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux >= 4.0); False where not possible.

    The peak before the reset is kept for :func:`process_peak_rss`.
    """
    global _PROCESS_PEAK
    _PROCESS_PEAK = max(_PROCESS_PEAK, peak_rss())
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def process_peak_rss() -> int:
    """Peak RSS of the whole process so far in bytes, across :func:`reset_peak_rss` calls."""
    return max(_PROCESS_PEAK, peak_rss(), _ru_maxrss())
