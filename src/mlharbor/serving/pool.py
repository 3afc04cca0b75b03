"""The model pool: versions loaded and warmed up once, shared by every endpoint that routes there.

Loading (download, verify, deserialize, warm up with the input example) runs in a thread and
never blocks requests. A version is handed to routing only once it is ready. A version that
fails to load is remembered with its reason (shown in status and counted in metrics) and tried
again only after ``retry_after_s``, so a broken version costs nothing while the old one serves.

Each ready version's memory is estimated as the growth of the process's resident memory (RSS)
while it loaded and warmed up, exported as ``mlharbor_model_memory_bytes{model,version}``: an
estimate (memory freed earlier and reused reads as less; two versions loading at once may each
count some of the other's), but one that covers native runtimes (ONNX Runtime, LightGBM) that a
Python-level tracer would miss.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from concurrent.futures import Executor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlharbor.serving.model import ServedModel

if TYPE_CHECKING:
    from mlharbor.core.records import ModelVersion
    from mlharbor.serving.loader import ModelLoader
    from mlharbor.telemetry.metrics import ServingMetrics

log = logging.getLogger("mlharbor.serving.pool")
Key = tuple[str, int]


@dataclasses.dataclass(slots=True)
class PoolEntry:
    """One version in the pool: loading, ready (with its batcher) or failed (with why)."""

    name: str
    version: int
    state: str = "loading"
    reason: str | None = None
    model: ServedModel | None = None
    load_seconds: float | None = None
    memory_bytes: int | None = None
    failed_at: float | None = None
    last_used: float = dataclasses.field(default_factory=time.monotonic)

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
        return body


def resident_bytes() -> int | None:
    """This process's resident memory now (Linux /proc; None elsewhere)."""
    try:
        pages = Path("/proc/self/statm").read_bytes().split()[1]
        return int(pages) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _measured(loader: ModelLoader, mv: ModelVersion) -> tuple[ServedModel, int | None]:
    """Load ``mv`` and the growth of resident memory while it loaded (None: unknown)."""
    before = resident_bytes()
    model = loader(mv)
    after = resident_bytes()
    return model, (max(0, after - before) if before is not None and after is not None
                   else None)



class ModelPool:
    def __init__(
        self, loader: ModelLoader, *,
        metrics: ServingMetrics | None = None, retry_after_s: float = 60.0, keep_idle: int = 2,
        load_executor: Executor | None = None,
    ) -> None:
        self.loader = loader
        self.metrics = metrics
        self.retry_after_s = retry_after_s
        self.keep_idle = keep_idle
        self.load_executor = load_executor
        self.entries: dict[Key, PoolEntry] = {}
        self._loading: dict[Key, asyncio.Task[PoolEntry]] = {}

    def get(self, name: str, version: int) -> PoolEntry | None:
        return self.entries.get((name, version))

    async def ensure(self, mv: ModelVersion) -> PoolEntry:
        """The pool entry of ``mv``, loading it first if needed (failed entries retry later)."""
        key = (mv.name, mv.version)
        entry = self.entries.get(key)
        if entry is not None and (entry.state == "ready" or (
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
        entry = self.entries.get(key) or PoolEntry(mv.name, mv.version)
        entry.state, entry.reason = "loading", None
        self.entries[key] = entry
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        try:
            model, memory = await loop.run_in_executor(self.load_executor, _measured,
                                                       self.loader, mv)
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
        finally:
            self._loading.pop(key, None)
        entry.load_seconds = time.perf_counter() - started
        entry.model = model
        entry.memory_bytes = memory
        entry.state = "ready"
        log.info("loaded %s (%s) in %.3fs", mv.ref, model.runtime, entry.load_seconds,
                 extra={"event": "model.loaded", "model": mv.name, "version": mv.version})
        if self.metrics is not None:
            self.metrics.model_loaded(mv.name, entry.load_seconds)
            if memory is not None:
                self.metrics.model_memory_set(mv.name, mv.version, memory)
        return entry

    def prune(self, in_use: set[Key]) -> None:
        """Forget ready versions no plan uses, keeping the ``keep_idle`` most recent warm."""
        now = time.monotonic()
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
