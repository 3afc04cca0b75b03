"""Loading on demand: a request that picks a version not in memory waits for it, bounded.

With a model memory budget the pool is lazy (:mod:`mlharbor.serving.pool`) and plans hold
*pending* targets for versions that are not loaded (:mod:`mlharbor.serving.routing`). When the
data plane picks one, :meth:`OnDemand.ready` asks the pool to load it (requests for a version
already loading join that load), waits at most ``serving.model_load_wait_s`` and returns the
plan rebuilt around the loaded version. Past the wait the request gets a 503 with Retry-After
(:class:`~mlharbor.core.errors.ModelLoadingError`), never an indefinite hang; a version bigger
than the whole budget gets :class:`~mlharbor.core.errors.ModelTooLargeError` naming both sizes.
Waiting is also what a fresh replica does for its first requests (scale from zero): they are
held while the model loads instead of being refused.

:meth:`OnDemand.changed` is the pool's ``on_change``: after a version loads, is refused or is
unloaded, the plans naming it are rebuilt and installed, so traffic reaches a loaded version at
once and an unloaded one is no longer referenced by any plan.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from mlharbor.core.errors import ModelLoadingError, ModelTooLargeError, UnavailableError
from mlharbor.serving.routing import EndpointPlan, Target, build_plan

if TYPE_CHECKING:
    from mlharbor.serving.core import DataPlane
    from mlharbor.serving.pool import Key, ModelPool, PoolEntry
    from mlharbor.serving.routing import BatcherFactory
    from mlharbor.settings import ServingSettings


class OnDemand:
    """Loads the versions requests pick, and keeps the plans in step with the pool."""

    def __init__(self, plane: DataPlane, pool: ModelPool, settings: ServingSettings,
                 make_batcher: BatcherFactory) -> None:
        self.plane = plane
        self.pool = pool
        self.settings = settings
        self.make_batcher = make_batcher

    def rebuild(self, plan: EndpointPlan) -> EndpointPlan:
        return build_plan(plan.spec, plan.revision, self.settings, resolved=plan.resolved,
                          pool=self.pool, previous=plan, make_batcher=self.make_batcher)

    def changed(self, keys: set[Key]) -> None:
        """Rebuild and install the plans that name any of ``keys``."""
        plans = self.plane.plans
        rebuilt = {name: self.rebuild(plan) for name, plan in plans.items()
                   if any((getattr(mv, "name", None), getattr(mv, "version", None)) in keys
                          for mv in plan.resolved.values())}
        if rebuilt and self.plane.synced:
            self.plane.install({**plans, **rebuilt})

    async def ready(self, plan: EndpointPlan, target: Target) -> tuple[EndpointPlan, Target]:
        """``plan`` and ``target`` with the target's version loaded (see the module doc)."""
        loop = asyncio.get_running_loop()
        wait = self.settings.model_load_wait_s
        deadline = loop.time() + wait
        key = (target.model.name, target.model.version)
        while True:
            mv = self.pool.versions.get(key)
            if mv is None:
                raise UnavailableError(f"{target.model.ref} is no longer served here.",
                                       hint="Retry: the endpoint has moved on.")
            entry: PoolEntry | None = None
            remaining = deadline - loop.time()
            if remaining > 0:
                try:
                    async with asyncio.timeout(remaining):
                        entry = await self.pool.ensure(mv)
                except TimeoutError:
                    entry = None
            if entry is None:
                known = self.pool.get(*key)
                seconds = known.load_seconds if known and known.load_seconds else 1.0
                raise ModelLoadingError(
                    f"{mv.ref} is still loading after {wait:g}s "
                    f"(serving.model_load_wait_s); the request was not run.",
                    hint="Retry after the Retry-After seconds.", retry_after=seconds,
                    model=mv.ref)
            if entry.state == "refused":
                raise ModelTooLargeError(
                    f"{entry.reason}.", hint="Raise serving.model_memory_budget, or serve "
                    "this model from a server with more memory.", model=mv.ref,
                    memory_bytes=entry.memory_bytes, budget_bytes=self.pool.memory_budget)
            if entry.state == "failed":
                raise UnavailableError(f"{mv.ref} failed to load: {entry.reason}.",
                                       hint="Check `mlharbor endpoints show` for the load "
                                       "status; it is tried again later.")
            current = self.plane.plans.get(plan.name, plan)
            if entry.state == "ready" and _loaded(current, target.ref, key) is None:
                current = self.rebuild(current)
                if self.plane.synced:
                    self.plane.install({**self.plane.plans, plan.name: current})
            same = next((t for t in (*current.targets, *current.fallbacks)
                         if t.ref == target.ref), None)
            if same is None:
                raise UnavailableError(f"{target.ref} is no longer routed by {plan.name!r}.",
                                       hint="Retry: the endpoint has moved on.")
            if not same.pending:
                return current, same
            # Unloaded again before this request could use it (a tiny budget), or the route
            # now names another version: load that one, within the same wait.
            target, key = same, (same.model.name, same.model.version)
            await asyncio.sleep(0)


def _loaded(plan: EndpointPlan, ref: str, key: Key) -> Target | None:
    for target in (*plan.targets, *plan.fallbacks):
        if (target.ref == ref and not target.pending
                and (target.model.name, target.model.version) == key):
            return target
    return None
