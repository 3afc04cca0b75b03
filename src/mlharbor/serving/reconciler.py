"""Converge the running server on the registry: endpoints, aliases and versions.

Each pass reads the endpoint specs (or uses the fixed ones of ``mlharbor serve REF``),
resolves each reference to a version, loads and warms up versions the pool lacks, then installs
new plans in one assignment. Traffic moves to a version only after it is warm; a version that
fails to load never gets traffic. A registry outage only delays convergence: the installed
plans keep answering.

When a pass runs: on PostgreSQL, at once when the registry notifies a change
(:mod:`mlharbor.registry.notify`: LISTEN/NOTIFY, delivered at commit), and every
``poll_interval_s`` in any case; on SQLite, every ``poll_interval_s``. So a replica starts
converging within a notification's delivery (milliseconds) of an alias or endpoint change, or
within one poll interval while its listening connection is down (it reconnects by itself), and
has converged once the new version is loaded and warm. Notifications that arrive during a pass
trigger one more pass right after it, never one per notification.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from mlharbor.registry.endpoints import PREVIOUS, EndpointService, EndpointSpec
from mlharbor.serving.routing import EndpointPlan, build_plan, resolved_fallbacks

if TYPE_CHECKING:
    from mlharbor.core.records import ModelVersion
    from mlharbor.registry.notify import ChangeListener
    from mlharbor.registry.service import Registry
    from mlharbor.serving.core import DataPlane
    from mlharbor.serving.pool import ModelPool
    from mlharbor.serving.routing import BatcherFactory
    from mlharbor.settings import ServingSettings

log = logging.getLogger("mlharbor.serving.reconciler")


class Reconciler:
    def __init__(
        self, plane: DataPlane, pool: ModelPool, registry: Registry, settings: ServingSettings,
        make_batcher: BatcherFactory, *, fixed: list[EndpointSpec] | None = None,
    ) -> None:
        self.plane = plane
        self.pool = pool
        self.registry = registry
        self.settings = settings
        self.make_batcher = make_batcher
        self.fixed = fixed
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self.listener: ChangeListener | None = None

    def start(self) -> None:
        """Poll, and on PostgreSQL also listen for change notifications."""
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run())
        from mlharbor.registry.notify import ChangeListener

        def woken() -> None:  # called from the listener's thread
            with contextlib.suppress(RuntimeError):  # the loop closed: the server stopped
                loop.call_soon_threadsafe(self._wake.set)

        self.listener = ChangeListener.for_database(self.registry.store.db, woken)
        if self.listener is not None:
            self.listener.start()

    async def stop(self) -> None:
        if self.listener is not None:
            await asyncio.to_thread(self.listener.stop)
            self.listener = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            self._wake.clear()  # a change notified during this pass wakes the next at once
            try:
                await self.sync()
            except Exception as exc:
                self.plane.sync_error = f"{type(exc).__name__}: {exc}"[:500]
                log.warning("sync with the registry failed: %s", self.plane.sync_error,
                            extra={"event": "serving.sync_failed"})
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.poll_interval_s):
                    await self._wake.wait()

    async def sync(self) -> None:
        """One pass: read desired state, load what is missing, install the new plans."""
        async with self._lock:
            specs = await asyncio.to_thread(self._desired)
            resolved = {s.name: await asyncio.to_thread(self._resolve, s) for s, _rev in specs}
            wanted: dict[tuple[str, int], ModelVersion] = {}
            for values in resolved.values():
                for mv in values.values():
                    if not isinstance(mv, Exception | str) and mv is not None:
                        wanted[(mv.name, mv.version)] = mv
            self.plane.metrics.set_known({s.name for s, _ in specs},
                                         {name for name, _v in wanted})
            await self.pool.converge(wanted.values())  # loads, or (a budget) loads lazily
            old = self.plane.plans
            plans: dict[str, EndpointPlan] = {}
            for spec, revision in specs:
                plans[spec.name] = build_plan(
                    spec, revision, self.settings, resolved=resolved[spec.name], pool=self.pool,
                    previous=old.get(spec.name), make_batcher=self.make_batcher)
            self.plane.install(plans)
            self.plane.sync_error = None
            in_use = {(t.model.name, t.model.version) for p in plans.values()
                      for t in (*p.targets, *p.fallbacks, *((p.shadow,) if p.shadow else ()))}
            self.pool.prune(in_use | set(wanted))

    def _desired(self) -> list[tuple[EndpointSpec, int]]:
        if self.fixed is not None:
            return [(spec, 0) for spec in self.fixed]
        return [(e.spec, e.revision) for e in EndpointService(self.registry).list_endpoints()]

    def _resolve(self, spec: EndpointSpec) -> dict[str, Any]:
        """Each reference of ``spec`` -> its version now (or the error that prevents it)."""
        out: dict[str, Any] = {}
        for ref in spec.model_refs():
            try:
                mv = self.registry.get_version(ref)
                if mv.status.value != "ready":
                    raise RuntimeError(f"{mv.ref} is {mv.status.value}")
                out[ref] = mv
            except Exception as exc:
                out[ref] = exc
        if PREVIOUS in spec.fallback:
            previous = self._previous(spec, out)
            if previous is not None:
                out[PREVIOUS] = previous
                with contextlib.suppress(Exception):
                    out[previous] = self.registry.get_version(previous)
        for ref in resolved_fallbacks(spec, out):
            out.setdefault(ref, Exception(f"{ref} is not resolved"))
        return out

    def _previous(self, spec: EndpointSpec, resolved: dict[str, Any]) -> str | None:
        """The version the first route served before its current one."""
        from mlharbor.core.refs import ModelRef

        ref = ModelRef.parse(spec.routes[0].ref)
        current = resolved.get(spec.routes[0].ref)
        if current is None or isinstance(current, Exception):
            return None
        if ref.kind == "alias" and ref.alias is not None:
            for move in reversed(self.registry.alias_history(ref.name, ref.alias)):
                if move.to_version == current.version and move.from_version:
                    return f"{ref.name}:{move.from_version}"
            return None
        for mv in self.registry.list_versions(ref.name, status="ready",
                                              include_archived=False).items:
            if mv.version < current.version:
                return mv.ref
        return None
