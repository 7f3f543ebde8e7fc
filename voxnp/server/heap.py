"""The C heap of a long-running server: give freed memory back to the system.

Uploads and large websocket frames allocate tens of MB at a time. glibc raises its
mmap threshold to the largest block freed so far (up to 32 MiB), after which such
blocks come from the heap arenas, where freed space is kept: the resident memory of
a busy server then creeps up instead of returning to idle. A fixed threshold sends
blocks of MMAP_THRESHOLD and more back to the system when freed, and trim() (called
by the engine every few seconds) returns the free pages of the arenas. Elsewhere
than glibc both do nothing.
"""
from __future__ import annotations

import ctypes

M_MMAP_THRESHOLD = -3           # glibc's mallopt parameter
MMAP_THRESHOLD = 4 * 1024 * 1024


def _libc():
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt, libc.malloc_trim      # noqa: B018 -- both exist (glibc)
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _libc()


def limit_heap_growth() -> None:
    """Fix glibc's mmap threshold (no dynamic raise): large blocks are returned when freed."""
    if _LIBC is not None:
        _LIBC.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)


def trim() -> None:
    """Return the free pages of every malloc arena to the system."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
