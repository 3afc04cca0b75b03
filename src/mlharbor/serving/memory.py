"""How much memory a loaded version takes: resident-memory growth over a trimmed heap.

A version's memory is measured as the growth of the process's resident memory (RSS) while it
loads and warms up. That covers what a Python-level tracer misses (ONNX Runtime's arenas,
LightGBM and XGBoost boosters, numpy buffers), but plain RSS growth undercounts in a pool that
unloads: memory freed by an unloaded version stays resident in the C heap and the next version
reuses it, so its growth reads as almost nothing and the pool's sum drifts below what the
process really holds. So the heap is collected and trimmed (``gc.collect()`` then glibc's
``malloc_trim(0)``, which returns free pages to the kernel) just before each measurement: freed
memory is no longer resident, and a new version has to fault in pages of its own.

What is left: pages of Python's small-object arenas that another object still pins, and
allocations other threads make during the load (requests in flight, which are small and
short-lived). Loads that share a process are measured one at a time (the pool serialises them
when a budget is set), since two at once would each count part of the other.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
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


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim`` (None with another C library: then nothing is trimmed)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        func = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_size_t]
    func.restype = ctypes.c_int
    trim: Callable[[int], int] = func
    return trim


def release_free_memory() -> None:
    """Collect garbage and hand the heap's free pages back to the kernel, so resident memory
    counts only what is in use (an unloaded version's memory leaves RSS here)."""
    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def measured(load: Callable[[], T]) -> tuple[T, int | None]:
    """``load()`` and the growth of resident memory it caused (None: unknown here)."""
    release_free_memory()
    before = resident_bytes()
    value = load()
    release_free_memory()
    after = resident_bytes()
    if before is None or after is None:
        return value, None
    return value, max(0, after - before)
