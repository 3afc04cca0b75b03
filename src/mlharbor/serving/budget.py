"""The model memory budget of a lazy pool: what a load is expected to need, which versions to
unload to make room, and what the process really holds above its baseline.

The budget (``serving.model_memory_budget``) bounds the serving process's resident memory above
its *baseline*: its trimmed RSS once start-up has primed the runtimes, after a full garbage
collection, with no version loaded (:class:`ResidentMemory`). Two measures keep it:

* the estimates: each loaded version's measured size (:mod:`mlharbor.serving.memory`) adds up
  within the budget, and one more slot is kept for a load (``serving.max_loaded_models``);
* what the process holds: before a load, its trimmed RSS above the baseline plus the load's
  expected *peak* (its working memory: the bundle's bytes, the deserialiser's copies) must fit,
  measured again after each round of unloading; after the load, its trimmed RSS must fit.

The second covers what no estimate holds: Python's small-object arenas keep a few pages of the
models they held (their free blocks are reused, not returned: measured 6-8 MiB after some
hundreds of loads, then flat), the request path's threads, connections and buffers, metric
labels of the endpoints used. That memory takes room from the models instead of passing the
budget. When it alone leaves no room, the version is loaded anyway, after every other one that
is not answering was unloaded, and a warning says so (at most once a minute): a budget smaller
than what the process needs besides its models cannot be kept by unloading models.

Victims are the least recently used loaded versions, never one with requests in flight and
never the one being loaded.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import TYPE_CHECKING

from mlharbor.serving.memory import trimmed_resident_bytes

if TYPE_CHECKING:
    from mlharbor.serving.pool import PoolEntry

log = logging.getLogger("mlharbor.serving.pool")
Key = tuple[str, int]
CROWDED_LOG_S = 60.0  # at most one warning this often that memory outside models fills the budget


def expected_bytes(entry: PoolEntry | None, loaded: Sequence[PoolEntry]) -> int:
    """A version's expected size: its last measured one, else the mean of the loaded ones."""
    if entry is not None and entry.memory_bytes is not None:
        return entry.memory_bytes
    sizes = [e.memory_bytes for e in loaded if e.memory_bytes is not None]
    return sum(sizes) // len(sizes) if sizes else 0


def expected_peak(entry: PoolEntry | None, loaded: Sequence[PoolEntry]) -> int:
    """How far a load of the version is expected to raise resident memory: the highest peak
    of its own loads, else the mean of the loaded ones' (never less than its expected size)."""
    peak = entry.peak_bytes if entry is not None else None
    if peak is None:
        peaks = [e.peak_bytes for e in loaded if e.peak_bytes is not None]
        peak = sum(peaks) // len(peaks) if peaks else 0
    return max(peak, expected_bytes(entry, loaded))


def lru_victims(loaded: Sequence[PoolEntry], fits: Callable[[int, int], bool], *,
                keep: Key) -> list[PoolEntry]:
    """The least recently used of ``loaded`` to unload, in order, until ``fits(used bytes,
    count)`` of what stays (never ``keep``, never one with requests in flight)."""
    used = sum(e.memory_bytes or 0 for e in loaded)
    count = len(loaded)
    victims: list[PoolEntry] = []
    for victim in sorted(loaded, key=lambda e: e.last_used):
        if fits(used, count):
            break
        if victim.in_flight or (victim.name, victim.version) == keep:
            continue
        used -= victim.memory_bytes or 0
        count -= 1
        victims.append(victim)
    return victims


def victims_covering(loaded: Sequence[PoolEntry], amount: int, *, keep: Key) -> list[PoolEntry]:
    """The least recently used of ``loaded`` whose sizes add up to ``amount`` (at least one,
    when any can go)."""
    freed = 0
    victims: list[PoolEntry] = []
    for victim in sorted(loaded, key=lambda e: e.last_used):
        if freed >= amount:
            break
        if victim.in_flight or (victim.name, victim.version) == keep:
            continue
        freed += max(victim.memory_bytes or 0, 1)
        victims.append(victim)
    return victims


class ResidentMemory:
    """The process's trimmed RSS, measured on ``executor`` (trimming takes milliseconds), and
    the baseline the budget is enforced above (None off Linux: then only the estimates)."""

    def __init__(self, executor: Executor | None) -> None:
        self.executor = executor
        self.baseline: int | None = None
        self.settled = False  # the baseline was taken (or could not be)
        self.after_load: int | None = None  # the trimmed RSS the last load left
        self._crowded_at = -CROWDED_LOG_S

    async def measure(self, *, collect: bool = False) -> int | None:
        """Trimmed RSS now; ``collect``: after a full garbage collection (for the baseline
        only: priming leaves cyclic garbage that is freed later, so the baseline read 3.3 MiB
        high without it; a collection costs up to half a second with scikit-learn loaded)."""
        def now() -> int | None:
            if collect:
                gc.collect()
            return trimmed_resident_bytes()

        return await asyncio.get_running_loop().run_in_executor(self.executor, now)

    def settle(self, resident: int | None) -> None:
        """Take ``resident`` (measured with nothing loaded) as the baseline, once."""
        if not self.settled:
            self.settled = True
            self.baseline = resident

    def over(self, resident: int, need: int, budget: int) -> int:
        """Bytes by which ``resident`` plus ``need`` passes baseline + budget (<= 0: fits)."""
        return resident - (self.baseline or 0) + need - budget

    def crowded(self, key: Key, budget: int, resident: int, in_models: int, need: int) -> None:
        """Warn (at most once a minute) that memory outside the models leaves no room."""
        now = time.monotonic()
        if now - self._crowded_at < CROWDED_LOG_S:
            return
        self._crowded_at = now
        log.warning(
            "memory outside the loaded versions leaves no room for %s:%s within "
            "serving.model_memory_budget (%d bytes): %d bytes above the baseline, %d of them "
            "in loaded versions, and its load needs %d; loading it anyway", *key, budget,
            resident - (self.baseline or 0), in_models, need,
            extra={"event": "model.budget_crowded", "model": key[0], "version": key[1]})
