"""How much memory a loaded version takes, how much its load needs at its peak, and what the
whole process holds above its baseline.

A version's memory is measured as the growth of the process's resident memory (RSS) while it
loads and warms up. That covers what a Python-level tracer misses (ONNX Runtime's sessions,
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
which counts an allocation whatever memory it reuses, and the size is the larger of the two
growths: the heap's covers reuse, RSS covers what bypasses malloc (Python's small-object
arenas, mmapped files).

A load also needs working memory beyond what stays: the bundle's bytes, the deserialiser's
copies, the runtime's graph before it is optimised. Measured here: a 0.9 MiB scikit-learn tree
(skops) peaks at 3.6 MiB above where it started, a 10 MiB ONNX forest at 19.5 MiB. So the
kernel's peak-RSS mark (``VmHWM``) is reset just before a load (``/proc/self/clear_refs``, "5")
and read after it: the load's *peak* is that mark above the trimmed RSS it started from.
(Resetting the mark is why a serving process with a model memory budget reports a VmHWM of
its last load, not of its whole life; without a budget no peak is measured.)

What is left: allocations other threads make during the load (requests in flight, which are
small and short-lived; they can only make a peak look larger). Loads that share a process are
measured one at a time (the pool serialises them when a budget is set), since two at once
would each count part of the other.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
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


# glibc's mallopt parameters (malloc.h) and the values a serving process with a budget uses.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
TRIM_THRESHOLD = 1 << 20  # free memory at the top of any arena past this goes back at once
MMAP_THRESHOLD = 256 << 10  # blocks this large get pages of their own, returned on free


def bound_heap() -> bool:
    """Fix glibc's trim and mmap thresholds for a process that must stay within a budget
    (False: not glibc).

    By default glibc raises both as large blocks are freed (the mmap threshold up to 32 MiB,
    the trim threshold to twice that), and ``malloc_trim`` never shrinks the top of a thread's
    own arena: so each thread that loaded or ran a model could keep up to 64 MiB of freed
    memory resident, out of reach of the trim the measurements rely on (measured: a 10 MiB
    ONNX forest's load then peaked anywhere between 19 and 31 MiB above the trimmed RSS, and
    the budget was passed by up to 9 MiB). Fixed, a model's large arrays get pages of their
    own that leave with it, and free memory at the top of every arena goes back when freed.
    Process-wide: called once, by a model pool with a memory budget."""
    libc = _libc()
    func = getattr(libc, "mallopt", None) if libc is not None else None
    if func is None:
        return False
    func.argtypes = [ctypes.c_int, ctypes.c_int]
    func.restype = ctypes.c_int
    return bool(func(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) and func(_M_MMAP_THRESHOLD,
                                                                 MMAP_THRESHOLD))


def release_free_memory() -> None:
    """Hand the heap's free pages back to the kernel, so resident memory counts only what is
    in use (an unloaded version's memory leaves RSS here)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def trimmed_resident_bytes() -> int | None:
    """Resident memory once the heap's free pages are handed back: what is really held."""
    release_free_memory()
    return resident_bytes()


def reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark of this process to its RSS now (Linux >= 4.0);
    False where that is not allowed (then no peak is measured)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_resident_bytes() -> int | None:
    """The kernel's peak-RSS mark of this process (``VmHWM``; None where unknown)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


@dataclasses.dataclass(frozen=True, slots=True)
class LoadMemory:
    """What one load took: ``size`` stays (the larger of RSS and heap growth), ``peak`` is the
    most resident memory grew while it ran, ``resident_after`` the trimmed RSS once done;
    None where unknown."""

    size: int | None
    peak: int | None = None
    resident_after: int | None = None


def measured(load: Callable[[], T], *, peak: bool = False) -> tuple[T, LoadMemory]:
    """``load()`` and what it took (see :class:`LoadMemory` and the module doc); its peak only
    when asked (``peak``: it resets the process's peak-RSS mark)."""
    release_free_memory()
    rss, heap = resident_bytes(), heap_bytes()
    peaked = peak and rss is not None and reset_peak()
    value = load()
    high = peak_resident_bytes() if peaked else None
    release_free_memory()
    rss_after, heap_after = resident_bytes(), heap_bytes()
    growths = [after - before for before, after in ((rss, rss_after), (heap, heap_after))
               if before is not None and after is not None]
    size = max(0, *growths) if growths else None
    rise = None if high is None or rss is None else max(high - rss, size or 0)
    return value, LoadMemory(size, rise, rss_after)
