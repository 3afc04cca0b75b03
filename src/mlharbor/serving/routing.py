"""Routing: an endpoint's desired state, resolved against the pool, becomes an immutable plan.

A plan lists the targets that may answer (only ready, warmed-up versions), their weights, the
shadow and the fallback chain. Requests read the current plan once and use it to the end, so a
swap (the reconciler replaces the plan object) never mixes two states in one request: each
request is answered by the old plan or the new one.

A route whose desired version is not ready yet, or failed to load, keeps the version it served
before (while the pool still holds it); the route's status tells which version serves, which
one is wanted and why they differ.

With a model memory budget (a lazy pool, see :mod:`mlharbor.serving.pool`) a version that is not
loaded still gets a *pending* target: its stand-in model knows the signature
(:mod:`mlharbor.serving.pending`), and the data plane loads the version (bounded wait) when a
request picks it. Loaded targets count their requests in flight on the pool entry
(:class:`CountedBatcher`), so the pool never unloads a version that is answering.

When no route has a version to answer (each failed to load, or was refused), each failed route
gets a *stand-in* target that refuses with its load failure: requests walk the endpoint's
fallback chain (then its default answer) instead of getting a 503, or get the failure itself
(``model_too_large`` for a refused version), the same with or without a memory budget.
Stand-ins never make an endpoint ready.
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import random
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from mlharbor.serving.batching import MicroBatcher
from mlharbor.serving.model import Outputs, ServedModel
from mlharbor.serving.pool import ModelPool, PoolEntry

if TYPE_CHECKING:
    from mlharbor.registry.endpoints import DefaultAnswer, EndpointSpec
    from mlharbor.settings import ServingSettings



class BatcherFactory(Protocol):
    """Makes the batcher of one version for one endpoint; ``shadow=True`` for the shadow's,
    which must run on capacity of its own so that it can never slow the primary."""

    def __call__(self, model: ServedModel, spec: EndpointSpec, *,
                 shadow: bool = False) -> MicroBatcher: ...


class Batcher(Protocol):
    """What a target submits prepared requests to (a :class:`MicroBatcher`, or one wrapped)."""

    model: ServedModel

    def run_now(self, x: Any, rows: int) -> Outputs | None: ...

    async def submit(self, x: Any, rows: int, deadline: float | None = None) -> Outputs: ...


class CountedBatcher:
    """A batcher that counts its requests in flight on the pool entry and marks the entry
    used, so the pool's LRU never unloads a version that is answering (lazy pools only)."""

    __slots__ = ("entry", "inner", "model")

    def __init__(self, inner: MicroBatcher, entry: PoolEntry) -> None:
        self.inner = inner
        self.entry = entry
        self.model = inner.model

    def run_now(self, x: Any, rows: int) -> Outputs | None:
        entry = self.entry
        entry.in_flight += 1
        entry.last_used = time.monotonic()
        try:
            return self.inner.run_now(x, rows)
        finally:
            entry.in_flight -= 1

    async def submit(self, x: Any, rows: int, deadline: float | None = None) -> Outputs:
        entry = self.entry
        entry.in_flight += 1
        entry.last_used = time.monotonic()
        try:
            return await self.inner.submit(x, rows, deadline)
        finally:
            entry.in_flight -= 1


class PendingBatcher:
    """The batcher of a version not loaded: its stand-in model refuses to run."""

    __slots__ = ("model",)

    def __init__(self, model: ServedModel) -> None:
        self.model = model

    def run_now(self, x: Any, rows: int) -> Outputs | None:
        return None  # submit refuses, with the stand-in's error

    async def submit(self, x: Any, rows: int, deadline: float | None = None) -> Outputs:
        return self.model.run(x)


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    """One version that may answer for an endpoint, with the batcher that runs it.

    ``pending``: the version is not loaded (lazy pools); the data plane loads it first.
    ``standin``: the version failed to load; the target only refuses (see the module doc)."""

    ref: str
    entry: PoolEntry
    model: ServedModel
    batcher: Batcher
    standin: bool = False

    @property
    def pending(self) -> bool:
        return self.entry.state != "ready"


@dataclasses.dataclass(frozen=True, slots=True)
class RouteState:
    """What a route wants and what it serves, for status pages."""

    ref: str
    weight: float
    desired_version: int | None
    serving_version: int | None
    state: str
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


class EndpointPlan:
    """The routing of one endpoint at one moment; never mutated once installed."""

    def __init__(
        self, spec: EndpointSpec, revision: int, settings: ServingSettings, *,
        targets: Sequence[tuple[Target, float]], shadow: Target | None,
        fallbacks: Sequence[Target], routes: Sequence[RouteState],
        route_targets: Sequence[Target | None] | None = None,
        resolved: dict[str, Any] | None = None, lazy: bool = False,
    ) -> None:
        self.name = spec.name
        self.resolved = resolved or {}  # what build_plan saw, to rebuild it after a load
        self.lazy = lazy
        self.spec = spec
        self.revision = revision
        self.targets = tuple(t for t, _w in targets)
        total = sum(w for _t, w in targets)
        running = 0.0
        self._cumulative: list[float] = []
        for _t, w in targets:
            running += w / total
            self._cumulative.append(running)
        self.shadow = shadow
        self.fallbacks = tuple(fallbacks)
        self.default_answer: DefaultAnswer | None = spec.default_answer
        self.routes = tuple(routes)
        self.route_targets: tuple[Target | None, ...] = tuple(route_targets or ())
        limits = spec.limits
        self.timeout_s = (limits.timeout_ms / 1000.0 if limits.timeout_ms
                          else settings.request_timeout_s)
        self.max_rows = limits.max_rows or settings.max_rows
        self.sticky_header = (spec.sticky_header or settings.sticky_header).lower().encode()

    @property
    def servable(self) -> bool:
        return bool(self.targets)

    @property
    def answerable(self) -> bool:
        """Has a loaded version, or (lazy pools) one that loads on the first request."""
        return any(not t.pending for t in self.targets) or (
            self.lazy and any(not t.standin for t in self.targets))

    @property
    def converged(self) -> bool:
        """Every route serves the version it wants."""
        return all(r.state == "ready" for r in self.routes)

    def pick(self, sticky: bytes | None = None) -> Target:
        """A target by weight; the same sticky key always gets the same target."""
        targets = self.targets
        if len(targets) == 1:
            return targets[0]
        if sticky:
            digest = hashlib.blake2b(sticky, digest_size=8).digest()
            point = int.from_bytes(digest, "big") / 2**64
        else:
            point = random.random()
        index = bisect.bisect_right(self._cumulative, point)
        return targets[min(index, len(targets) - 1)]

    def find_version(self, name: str, version: int) -> Target | None:
        for target in (*self.targets, *self.fallbacks):
            if target.model.name == name and target.model.version == version:
                return target
        return None

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "name": self.name, "revision": self.revision, "ready": self.answerable,
            "converged": self.converged, "routes": [r.to_dict() for r in self.routes],
            "fallback": [t.model.ref for t in self.fallbacks],
        }
        if self.shadow is not None:
            body["shadow"] = self.shadow.model.ref
        if self.default_answer is not None:
            body["default_answer"] = self.default_answer.model_dump()
        return body


def build_plan(
    spec: EndpointSpec, revision: int, settings: ServingSettings, *,
    resolved: dict[str, Any], pool: ModelPool,
    previous: EndpointPlan | None, make_batcher: BatcherFactory,
) -> EndpointPlan:
    """Turn ``spec`` into a plan from ready pool entries, keeping old targets where needed."""
    old: dict[str, Target] = {}
    # (name, version, shadow) -> batcher: a shadow's batcher runs on the shadow's own
    # executor, so it is never shared with a primary or a fallback of the same version.
    batchers: dict[tuple[str, int, bool], Batcher] = {}
    if previous is not None:
        for prior, kept_target in zip(previous.routes, previous.route_targets, strict=False):
            # Only while the pool still holds it: an unloaded version must leave the plans.
            if kept_target is not None and not kept_target.pending and pool.get(
                    kept_target.model.name, kept_target.model.version) is kept_target.entry:
                old[prior.ref] = kept_target
        if previous.spec.batching == spec.batching:
            for t in (*previous.targets, *previous.fallbacks):
                batchers[(t.model.name, t.model.version, False)] = t.batcher
            if previous.shadow is not None:
                t = previous.shadow
                batchers[(t.model.name, t.model.version, True)] = t.batcher

    def target_for(ref: str, *, shadow: bool = False
                   ) -> tuple[Target | None, str, str | None, int | None]:
        mv = resolved.get(ref)
        if isinstance(mv, Exception) or mv is None:
            reason = f"{type(mv).__name__}: {mv}" if mv is not None else "not resolved yet"
            return None, "failed", reason, None
        entry = pool.get(mv.name, mv.version)
        if entry is None or entry.state != "ready" or entry.model is None:
            state = "loading" if entry is None else entry.state
            why = None if entry is None else entry.reason
            if entry is not None and pool.loadable(entry):
                return _pending(ref, entry, mv), state, why, mv.version
            return None, state, why, mv.version
        key = (mv.name, mv.version, shadow)
        batcher = batchers.get(key)
        if batcher is None or batcher.model is not entry.model or (
                isinstance(batcher, CountedBatcher) and batcher.entry is not entry):
            made = make_batcher(entry.model, spec, shadow=shadow)
            batcher = CountedBatcher(made, entry) if pool.lazy else made
            batchers[key] = batcher
        return Target(ref, entry, entry.model, batcher), "ready", None, mv.version

    def _pending(ref: str, entry: PoolEntry, mv: Any) -> Target | None:
        if entry.pending is None:
            from mlharbor.serving.pending import pending_model

            try:
                entry.pending = pending_model(mv, wake=lambda: pool.request(mv))
            except Exception:  # a manifest without a signature: the load will say why
                return None
        return Target(ref, entry, entry.pending, PendingBatcher(entry.pending))

    targets: list[tuple[Target, float]] = []
    states: list[RouteState] = []
    kept: list[Target | None] = []
    for route in spec.routes:
        target, state, reason, desired = target_for(route.ref)
        if target is None and route.ref in old:
            target = old[route.ref]
        serving = None if target is None or target.pending else target.model.version
        states.append(RouteState(route.ref, route.weight, desired, serving, state, reason))
        kept.append(target)
        if target is not None:
            targets.append((target, route.weight))
    fallbacks = [t for t in (target_for(ref)[0] for ref in resolved_fallbacks(spec, resolved))
                 if t is not None]
    if not targets:
        for index, route in enumerate(spec.routes):
            standin = _standin(route.ref, resolved.get(route.ref), pool)
            if standin is not None:
                kept[index] = standin
                targets.append((standin, route.weight))
    shadow = target_for(spec.shadow, shadow=True)[0] if spec.shadow else None
    return EndpointPlan(spec, revision, settings, targets=targets, shadow=shadow,
                        fallbacks=fallbacks, routes=states, route_targets=kept,
                        resolved=resolved, lazy=pool.lazy)


def _standin(ref: str, mv: Any, pool: ModelPool) -> Target | None:
    """A target that refuses with why ``mv`` failed to load (None: it did not fail)."""
    entry = None if mv is None or isinstance(mv, Exception) else pool.get(mv.name, mv.version)
    if entry is None or entry.state not in ("failed", "refused"):
        return None
    from mlharbor.serving.pending import pending_model

    try:
        model = pending_model(mv, wake=lambda: pool.request(mv), reason=entry.reason)
    except Exception:  # a manifest without a signature: nothing can stand in
        return None
    return Target(ref, entry, model, PendingBatcher(model), standin=True)


def resolved_fallbacks(spec: EndpointSpec, resolved: dict[str, Any]) -> list[str]:
    """The fallback references, with ``previous`` replaced by what the reconciler found."""
    refs = []
    for ref in spec.fallback:
        if ref == "previous":
            concrete = resolved.get("previous")
            if isinstance(concrete, str):
                refs.append(concrete)
        else:
            refs.append(ref)
    return refs
