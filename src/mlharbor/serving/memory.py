"""How much memory a loaded version takes: the larger of two growths, taken over a trimmed heap.

A version's memory is measured as the growth of the process's resident memory (RSS) while it
loads and warms up. That covers what a Python-level tracer misses (ONNX Runtime's arenas,
LightGBM and XGBoost boosters, numpy buffers), but plain RSS growth undercounts in a pool that
unloads: memory freed by an unloaded version stays resident in the C heap and the next version
reuses it, so its growth reads as almost nothing and the pool's sum drifts below what the
process really holds. So the heap is trimmed (glibc's ``malloc_trim(0)``, which returns free
pages to the kernel; a few milliseconds) just before each measurement: freed memory is no
longer resident, and a new version has to fault in pages of its own. (No ``gc.collect()``: a
full collection costs half a second once scikit-learn and pandas are imported, and models are
freed by reference counting when the pool and the plans let go of them.)

RSS still misses memory reused *within* pages the heap kept (and glibc moves its mmap threshold
up after a large block is freed, so the next large arrays land in the heap). So the C heap's
bytes in use are measured too (glibc's ``mallinfo2``: every arena, mmapped chunks included),
which counts an allocation whatever memory it reuses, and the estimate is the larger of the two
growths: the heap's covers reuse, RSS covers what bypasses malloc (Python's small-object
arenas, mmapped files).

What is left: allocations
other threads make during the load (requests in flight, which are small and
short-lived). Loads that share a process are measured one at a time (the pool serialises them
when a budget is set), since two at once would each count part of the other.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def resident_bytes() -> int | None:
    """This process's resident memory now (Linux /proc; None elsewhere)."""
    try:
        pages = Path("/proc/self/statm").read_bytes().split()[1]
        return int(pages) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


@functools.cache
def _mallinfo2() -> Callable[[], _MallInfo2] | None:
    libc = _libc()
    func = getattr(libc, "mallinfo2", None) if libc is not None else None  # glibc >= 2.33
    if func is None:
        return None
    func.argtypes = []
    func.restype = _MallInfo2
    info: Callable[[], _MallInfo2] = func
    return info


def heap_bytes() -> int | None:
    """Bytes in use in the C heap (all arenas, mmapped chunks included); None off glibc."""
    info = _mallinfo2()
    if info is None:
        return None
    now = info()
    return int(now.uordblks + now.hblkhd)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim`` (None with another C library: then nothing is trimmed)."""
    libc = _libc()
    func = getattr(libc, "malloc_trim", None) if libc is not None else None
    if func is None:
        return None
    func.argtypes = [ctypes.c_size_t]
    func.restype = ctypes.c_int
    trim: Callable[[int], int] = func
    return trim


def release_free_memory() -> None:
    """Hand the heap's free pages back to the kernel, so resident memory counts only what is
    in use (an unloaded version's memory leaves RSS here)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def measured(load: Callable[[], T]) -> tuple[T, int | None]:
    """``load()`` and the memory it took: the larger of the growths of resident memory and of
    the heap's bytes in use (None: neither is known here)."""
    release_free_memory()
    rss, heap = resident_bytes(), heap_bytes()
    value = load()
    release_free_memory()
    rss_after, heap_after = resident_bytes(), heap_bytes()
    growths = [after - before for before, after in ((rss, rss_after), (heap, heap_after))
               if before is not None and after is not None]
    return value, (max(0, *growths) if growths else None)
