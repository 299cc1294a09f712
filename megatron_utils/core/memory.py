"""Process memory: resident size from /proc, and glibc heap settings for long-lived threaded processes.

A threaded server under glibc keeps freed memory in per-thread malloc arenas, so its resident size creeps up
with every new thread that allocates, without any leak. `limit_malloc_arenas` caps the arenas and
`trim_heap` returns free pages to the system; both are no-ops where glibc is absent (macOS, musl).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from pathlib import Path

M_ARENA_MAX = -8  # glibc's mallopt parameter number (malloc.h)


def rss_mb(pid: int | str = "self", field: str = "VmRSS") -> float:
    """Resident memory of a process (this one by default), in MiB, from /proc. `field` "RssAnon" counts
    only the process's own memory, not the pages of files it maps (which the kernel reclaims at will)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for process {pid}")


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    libc = ctypes.CDLL(name)
    return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None


def limit_malloc_arenas(arenas: int) -> bool:
    """Let at most `arenas` malloc arenas serve all threads (as MALLOC_ARENA_MAX does); True if applied."""
    libc = _glibc()
    return bool(libc and libc.mallopt(M_ARENA_MAX, arenas))


def trim_heap() -> bool:
    """Give the heap's free pages back to the system; True if glibc released any."""
    libc = _glibc()
    return bool(libc and libc.malloc_trim(0))
