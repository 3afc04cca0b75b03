"""The model pool: versions loaded and warmed up once, shared by every endpoint that routes there.

Loading (download, verify, deserialize, warm up with the input example) runs in a thread and
never blocks requests. A version is handed to routing only once it is ready. A version that
fails to load is remembered with its reason (shown in status and counted in metrics) and tried
again only after ``retry_after_s``, so a broken version costs nothing while the old one serves.

Each ready version's memory is measured while it loads (:mod:`mlharbor.serving.memory`: the
growth of resident memory over a trimmed heap, which covers native runtimes a Python tracer
would miss) and exported as ``mlharbor_model_memory_bytes{model,version}``.

Bounded memory (``serving.model_memory_budget`` bytes, ``serving.max_loaded_models``): the pool
is *lazy*. Versions are known (state ``unloaded``) but load on the first request that needs
them; loads run one at a time, so each is measured alone. Before a load, least recently used
versions are unloaded until the load fits, after it until the loaded ones fit: in the
estimates, and in what the process really holds above its baseline, the load's peak included
(:mod:`mlharbor.serving.budget`).

A version with requests in flight is never unloaded (the budget may then be passed until they
finish, and is restored at the next load). A version whose model file, or measured size, is
bigger than the whole budget is refused (state ``refused``; the reason gives both sizes) and
never loaded again by this process. Unloading drops every reference the pool and the plans
hold (``on_change`` rebuilds the plans), so the model, its runtime session and its batchers are
freed as soon as the requests still using them finish.

States of an entry, as data: ``unloaded -> loading -> ready | failed | refused``;
``ready -> unloaded`` (made room, or no longer wanted); ``failed -> loading`` after
``retry_after_s``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any

from mlharbor.serving.budget import (
    ResidentMemory,
    expected_bytes,
    expected_peak,
    lru_victims,
    victims_covering,
)
from mlharbor.serving.memory import LoadMemory, bound_heap, measured
from mlharbor.serving.memory import resident_bytes as resident_bytes
from mlharbor.serving.model import ServedModel

if TYPE_CHECKING:
    from mlharbor.core.records import ModelVersion
    from mlharbor.serving.loader import ModelLoader
    from mlharbor.telemetry.metrics import ServingMetrics

log = logging.getLogger("mlharbor.serving.pool")
Key = tuple[str, int]


@dataclasses.dataclass(slots=True)
class PoolEntry:
    """One version in the pool: unloaded, loading, ready (with its model), failed or refused
    (with why)."""

    name: str
    version: int
    state: str = "loading"
    reason: str | None = None
    model: ServedModel | None = None
    load_seconds: float | None = None
    memory_bytes: int | None = None
    peak_bytes: int | None = None  # the most resident memory rose while it loaded
    failed_at: float | None = None
    last_used: float = dataclasses.field(default_factory=time.monotonic)
    in_flight: int = 0
    pending: ServedModel | None = None  # the signature-only stand-in of an unloaded version

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.name, "version": self.version, "state": self.state}
        if self.reason:
            body["reason"] = self.reason
        if self.model is not None:
            body["runtime"] = self.model.runtime
        if self.load_seconds is not None:
            body["load_seconds"] = round(self.load_seconds, 4)
        if self.memory_bytes is not None:
            body["memory_bytes"] = self.memory_bytes
        if self.peak_bytes is not None:
            body["load_peak_bytes"] = self.peak_bytes
        return body


def _measured(loader: ModelLoader, mv: ModelVersion, peak: bool
              ) -> tuple[ServedModel, LoadMemory]:
    """Load ``mv``, and the memory it took and (``peak``) needed (see serving.memory)."""
    return measured(lambda: loader(mv), peak=peak)


def model_file_bytes(mv: ModelVersion) -> int | None:
    """The size of the file the version's runtime loads (its ONNX file when ONNX Runtime
    serves it, else the native model file): memory it needs at the least. None: unknown."""
    manifest = mv.manifest or {}
    wanted = (manifest.get("onnx_path") if manifest.get("default_runtime") == "onnx"
              else manifest.get("model_path"))
    for item in manifest.get("files") or ():
        if isinstance(item, dict) and item.get("path") == wanted:
            size = item.get("size")
            return size if isinstance(size, int) else None
    return None


class ModelPool:
    def __init__(
        self, loader: ModelLoader, *,
        metrics: ServingMetrics | None = None, retry_after_s: float = 60.0, keep_idle: int = 2,
        load_executor: Executor | None = None, memory_budget: int = 0, max_loaded: int = 0,
    ) -> None:
        self.loader = loader
        self.metrics = metrics
        self.retry_after_s = retry_after_s
        self.keep_idle = keep_idle
        self.load_executor = load_executor
        self.memory_budget = memory_budget
        self.max_loaded = max_loaded
        self.entries: dict[Key, PoolEntry] = {}
        self.versions: dict[Key, ModelVersion] = {}
        # Called (lazy pools) with the versions just loaded, refused or unloaded, so the
        # plans naming them are rebuilt: loaded ones take traffic, unloaded ones are let go.
        self.on_change: Callable[[set[Key]], None] | None = None
        self._loading: dict[Key, asyncio.Task[PoolEntry]] = {}
        self._one_load = asyncio.Lock()
        self._primed: set[tuple[str, str]] = set()
        self._background: set[asyncio.Task[PoolEntry]] = set()
        # What the process holds above its baseline: the budget is enforced on it too.
        self.resident = ResidentMemory(load_executor)

    @property
    def lazy(self) -> bool:
        """Versions load on first request and are unloaded to stay within the limits."""
        return self.memory_budget > 0 or self.max_loaded > 0

    def get(self, name: str, version: int) -> PoolEntry | None:
        return self.entries.get((name, version))

    def loaded(self) -> list[PoolEntry]:
        return [e for e in self.entries.values() if e.state == "ready"]

    def loadable(self, entry: PoolEntry) -> bool:
        """A lazy pool may load ``entry`` on request: unloaded, loading, or failed long
        enough ago to try again."""
        if not self.lazy:
            return False
        if entry.state == "failed":
            return entry.failed_at is None or (
                time.monotonic() - entry.failed_at >= self.retry_after_s)
        return entry.state in ("unloaded", "loading")

    def used_bytes(self) -> int:
        return sum(e.memory_bytes or 0 for e in self.loaded())

    # -- desired state ----------------------------------------------------------------------

    async def converge(self, wanted: Iterable[ModelVersion]) -> None:
        """Make the versions the plans want known: loaded now (no limits), or registered as
        ``unloaded`` to load on first request (lazy). A lazy pool first primes each runtime
        once (loads one version of each format and runtime, then drops it), so the libraries
        are imported before the server takes requests and never counted as a model's memory;
        the first time, it then takes its baseline, and a runtime primed later (a new format
        registered) adds what its libraries hold to the baseline."""
        versions = list(wanted)
        if not self.lazy:
            await asyncio.gather(*(self.ensure(mv) for mv in versions))
            return
        for mv in versions:
            key = (mv.name, mv.version)
            self.versions[key] = mv
            if key not in self.entries:
                self.entries[key] = PoolEntry(mv.name, mv.version, state="unloaded")
        first: dict[tuple[str, str], ModelVersion] = {}
        for mv in versions:
            manifest = mv.manifest or {}
            kind = (str(manifest.get("model_format")), str(manifest.get("default_runtime")))
            if kind not in self._primed:
                first.setdefault(kind, mv)
        resident = self.resident
        if not first and (resident.settled or not self.memory_budget):
            return
        if not self.memory_budget:  # max_loaded_models alone: nothing to measure
            async with self._one_load:
                for kind, mv in first.items():
                    self._primed.add(kind)
                    await self._prime(mv)
            return
        if not resident.settled:
            bound_heap()
        async with self._one_load:  # measured alone, like every load
            before = await resident.measure() if resident.settled else None
            for kind, mv in first.items():
                self._primed.add(kind)
                await self._prime(mv)
            after = await resident.measure(collect=not resident.settled)
            if not resident.settled:
                resident.settle(None if self.loaded() else after)
            elif resident.baseline is not None and before is not None and after is not None:
                resident.baseline += max(0, after - before)

    async def _prime(self, mv: ModelVersion) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self.load_executor, self.loader, mv)
        except Exception as exc:  # its own load reports the error when a request needs it
            log.info("priming the runtime with %s failed: %s", mv.ref, type(exc).__name__)

    # -- loading ----------------------------------------------------------------------------

    def request(self, mv: ModelVersion) -> None:
        """Load ``mv`` in the background (a fallback or shadow asked for while unloaded)."""
        key = (mv.name, mv.version)
        entry = self.entries.get(key)
        if key in self._loading or entry is None or not self.loadable(entry):
            return
        task = asyncio.get_running_loop().create_task(self.ensure(mv))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def ensure(self, mv: ModelVersion) -> PoolEntry:
        """The pool entry of ``mv``, loading it first if needed (failed entries retry later;
        refused ones never)."""
        key = (mv.name, mv.version)
        self.versions[key] = mv
        entry = self.entries.get(key)
        if entry is not None and (entry.state in ("ready", "refused") or (
                entry.state == "failed" and entry.failed_at is not None
                and time.monotonic() - entry.failed_at < self.retry_after_s)):
            return entry
        task = self._loading.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._load(mv))
            self._loading[key] = task
        return await asyncio.shield(task)

    async def _load(self, mv: ModelVersion) -> PoolEntry:
        key = (mv.name, mv.version)
        try:
            if not self.lazy:
                return await self._load_measured(mv)
            async with self._one_load:
                entry = self._refuse_early(mv)
                if entry is None:
                    await self._make_room(key)
                    entry = await self._load_measured(mv)
                    if entry.state == "ready":
                        self._fit(entry)
            self._changed({key})
            return entry
        finally:
            self._loading.pop(key, None)

    async def _load_measured(self, mv: ModelVersion) -> PoolEntry:
        key = (mv.name, mv.version)
        entry = self.entries.get(key) or PoolEntry(mv.name, mv.version)
        entry.state, entry.reason = "loading", None
        self.entries[key] = entry
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        try:
            model, took = await loop.run_in_executor(self.load_executor, _measured,
                                                     self.loader, mv, bool(self.memory_budget))
        except Exception as exc:
            entry.state = "failed"
            entry.reason = f"{type(exc).__name__}: {exc}"[:500]
            entry.failed_at = time.monotonic()
            log.error("loading %s failed: %s", mv.ref, entry.reason,
                      extra={"event": "model.load_failed", "model": mv.name,
                             "version": mv.version})
            if self.metrics is not None:
                self.metrics.model_load_failed(mv.name)
            return entry
        entry.load_seconds = time.perf_counter() - started
        memory = entry.memory_bytes = took.size
        # The highest peak seen: a load's peak includes what requests allocated meanwhile.
        entry.peak_bytes = max(filter(None, (took.peak, entry.peak_bytes)), default=None)
        self.resident.after_load = took.resident_after
        entry.last_used = time.monotonic()
        if self.memory_budget and memory is not None and memory > self.memory_budget:
            return self._refuse(entry, memory, "measured while it loaded")
        entry.model = model
        entry.state = "ready"
        log.info("loaded %s (%s) in %.3fs", mv.ref, model.runtime, entry.load_seconds,
                 extra={"event": "model.loaded", "model": mv.name, "version": mv.version,
                        "memory_bytes": memory, "load_peak_bytes": took.peak})
        if self.metrics is not None:
            self.metrics.model_loaded(mv.name, entry.load_seconds)
            if memory is not None:
                self.metrics.model_memory_set(mv.name, mv.version, memory)
        return entry

    # -- the budget -------------------------------------------------------------------------

    def _refuse_early(self, mv: ModelVersion) -> PoolEntry | None:
        """Refuse without loading a version whose model file alone passes the budget."""
        size = model_file_bytes(mv)
        if not self.memory_budget or size is None or size <= self.memory_budget:
            return None
        key = (mv.name, mv.version)
        entry = self.entries.get(key) or PoolEntry(mv.name, mv.version)
        self.entries[key] = entry
        return self._refuse(entry, size, "its model file")

    def _refuse(self, entry: PoolEntry, size: int, how: str) -> PoolEntry:
        entry.state, entry.model, entry.memory_bytes = "refused", None, size
        entry.reason = (f"{entry.ref} needs {size} bytes ({how}), more than the whole model "
                        f"memory budget of {self.memory_budget} bytes")
        log.error("refused %s: %s", entry.ref, entry.reason,
                  extra={"event": "model.refused", "model": entry.name,
                         "version": entry.version})
        if self.metrics is not None:
            self.metrics.model_load_failed(entry.name)
        return entry

    async def _make_room(self, key: Key) -> None:
        """Unload least recently used versions until ``key`` fits: its expected size and a
        slot in the estimates, then its load's expected peak above what the process holds."""
        entry = self.entries.get(key)
        incoming = expected_bytes(entry, self.loaded())
        self._unload_all(lru_victims(self.loaded(), lambda used, count: (
            (not self.memory_budget or used + incoming <= self.memory_budget)
            and (not self.max_loaded or count + 1 <= self.max_loaded)), keep=key))
        if not self.memory_budget or self.resident.baseline is None:
            return
        need = expected_peak(entry, self.loaded())
        while True:  # each round unloads at least one version, or stops
            resident = await self.resident.measure()
            if resident is None:
                return
            over = self.resident.over(resident, need, self.memory_budget)
            victims = victims_covering(self.loaded(), over, keep=key) if over > 0 else []
            if not victims:
                if over > 0:
                    self.resident.crowded(key, self.memory_budget, resident,
                                          self.used_bytes(), need)
                return
            self._unload_all(victims)

    def _fit(self, entry: PoolEntry) -> None:
        """After ``entry`` loaded: unload others until the loaded ones fit the limits, in the
        estimates and in the trimmed RSS the load left."""
        key = (entry.name, entry.version)
        self._unload_all(lru_victims(self.loaded(), lambda used, count: (
            (not self.memory_budget or used <= self.memory_budget)
            and (not self.max_loaded or count <= self.max_loaded)), keep=key))
        after = self.resident.after_load
        if self.memory_budget and self.resident.baseline is not None and after is not None:
            over = self.resident.over(after, 0, self.memory_budget)
            if over > 0:
                self._unload_all(victims_covering(self.loaded(), over, keep=key))

    def _unload_all(self, victims: list[PoolEntry]) -> None:
        for victim in victims:
            self._unload(victim)
        self._changed({(v.name, v.version) for v in victims})

    def _unload(self, entry: PoolEntry) -> None:
        """Forget ``entry``'s model: a fresh ``unloaded`` entry takes its place, so plans still
        holding the old one see it is gone (they load the version again if asked)."""
        key = (entry.name, entry.version)
        entry.state, entry.model = "unloaded", None
        fresh = PoolEntry(entry.name, entry.version, state="unloaded",
                          memory_bytes=entry.memory_bytes, peak_bytes=entry.peak_bytes,
                          pending=entry.pending)
        self.entries[key] = fresh
        log.info("unloaded %s", entry.ref, extra={"event": "model.unloaded",
                                                  "model": entry.name,
                                                  "version": entry.version})
        if self.metrics is not None:
            self.metrics.model_memory_set(entry.name, entry.version, None)
            self.metrics.model_unloaded()

    def _changed(self, keys: set[Key]) -> None:
        if keys and self.on_change is not None:
            self.on_change(keys)

    def prune(self, in_use: set[Key]) -> None:
        """Forget versions no plan uses. Eager: keep the ``keep_idle`` most recent ready ones
        warm. Lazy: unload them (unless requests are in flight) and forget the unloaded."""
        now = time.monotonic()
        if self.lazy:
            gone: set[Key] = set()
            for key, entry in list(self.entries.items()):
                if key in in_use or key in self._loading or entry.in_flight:
                    continue
                if entry.state == "ready":
                    self._unload(entry)
                    gone.add(key)
                self.entries.pop(key, None)
                self.versions.pop(key, None)
            self._changed(gone)
            return
        for key in in_use:
            if key in self.entries:
                self.entries[key].last_used = now
        idle = sorted((e for k, e in self.entries.items()
                       if k not in in_use and e.state == "ready"),
                      key=lambda e: e.last_used, reverse=True)
        for entry in idle[self.keep_idle:]:
            # In-flight requests still hold the entry; it is freed when they finish.
            self.entries.pop((entry.name, entry.version), None)
            if self.metrics is not None:
                self.metrics.model_memory_set(entry.name, entry.version, None)

    def status(self) -> list[dict[str, Any]]:
        return [e.status() for e in sorted(self.entries.values(),
                                           key=lambda e: (e.name, e.version))]
