"""The predictor core every protocol calls: validate, route, batch, fall back, record.

``DataPlane.predict`` reads the endpoint's current plan once, picks a target (weights, sticky
key or a pinned version), validates the input against that version's signature *before* any
inference, submits it to the version's micro-batcher under the endpoint's timeout, and on an
error or timeout walks the fallback chain (other versions, then a fixed answer). The timeout is
one deadline for the whole request: the chain gets what the failed attempts left of it, so two
slow models answer (or fail with 504) within one timeout, not two. Each answer is offered to
the prediction sink (never awaited) and, when the endpoint has a shadow, copied to it after the
answer is on its way; a shadow copy that fails is offered too, as a record marked with the
error's class name (no outputs), so the log tells failed copies from dropped ones.

A shadow never slows the primary: its batcher runs on an executor of its own (see
``serving.app``), and at most ``shadow_capacity`` shadow copies are queued or running at once
in this process; a copy past that is dropped and counted (``mlharbor_shadow_dropped_total``),
never waited for.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from mlharbor.core.clock import utcnow
from mlharbor.core.errors import (
    InvalidInputError,
    MlharborError,
    NotFoundError,
    TimeoutError_,
    UnavailableError,
)
from mlharbor.core.records import PredictionRecord
from mlharbor.serving.http import OverloadedError
from mlharbor.serving.model import NumericRows, Outputs, ServedModel

if TYPE_CHECKING:
    from mlharbor.serving.demand import OnDemand
    from mlharbor.serving.routing import EndpointPlan, Target
    from mlharbor.serving.sink import SinkDispatcher
    from mlharbor.telemetry.metrics import ServingMetrics

log = logging.getLogger("mlharbor.serving")
SHADOW_CAPACITY = 32  # shadow copies queued or running at once, per process


@dataclasses.dataclass(slots=True)
class Answer:
    """The outcome of one prediction request."""

    endpoint: str
    model: ServedModel
    ref: str
    outputs: Outputs
    rows: int
    fallback: dict[str, Any] | None = None

    @property
    def version(self) -> int:
        return self.model.version

    @property
    def classes(self) -> list[Any] | None:
        return self.model.classes


class DataPlane:
    """Current plans, and the prediction path over them."""

    def __init__(
        self, *, metrics: ServingMetrics, sink: SinkDispatcher, default_endpoint: str | None,
        shadow_capacity: int = SHADOW_CAPACITY,
    ) -> None:
        self.metrics = metrics
        self.shadow_capacity = shadow_capacity
        self.shadow_in_flight = 0
        self.sink = sink
        self.default_endpoint = default_endpoint
        self.plans: dict[str, EndpointPlan] = {}
        self.synced = False
        self.sync_error: str | None = None
        self._background: set[asyncio.Task[None]] = set()
        self.demand: OnDemand | None = None  # loads versions on first request (lazy pools)

    # -- state ------------------------------------------------------------------------------

    def install(self, plans: dict[str, EndpointPlan]) -> None:
        """Swap in new plans at once; requests in flight finish on the plans they read."""
        self.plans = plans
        self.synced = True
        for name, plan in plans.items():
            self.metrics.versions_ready.labels(self.metrics.endpoint_label(name)).set(
                1 if plan.answerable else 0)

    @property
    def ready(self) -> bool:
        """Ready once the first sync is done and every endpoint has a warmed-up version (or,
        with a model memory budget, one that loads on its first request)."""
        return self.synced and all(p.answerable for p in self.plans.values())

    def plan(self, name: str) -> EndpointPlan:
        plan = self.plans.get(name)
        if plan is None:
            raise NotFoundError(
                f"No endpoint or model is served under the name {name!r}.",
                hint=f"Served: {', '.join(sorted(self.plans)) or 'none'}.",
                field="endpoint", expected=sorted(self.plans), received=name,
            )
        if not plan.servable:
            reasons = "; ".join(f"{r.ref}: {r.reason or r.state}" for r in plan.routes)
            raise UnavailableError(f"Endpoint {name!r} has no loaded version yet ({reasons}).",
                                   hint="Check `mlharbor endpoints show` for the load status.")
        return plan

    def default_name(self) -> str:
        """The endpoint of routes that name none (MLflow's /invocations)."""
        if self.default_endpoint:
            return self.default_endpoint
        if len(self.plans) == 1:
            return next(iter(self.plans))
        raise InvalidInputError(
            f"This server serves {len(self.plans)} endpoints; say which one.",
            hint="Send the X-Mlharbor-Endpoint header, or use /v1/endpoints/{name}/predict.",
            field="X-Mlharbor-Endpoint", expected=sorted(self.plans), received=None,
        )

    # -- predictions ------------------------------------------------------------------------

    async def predict(
        self, endpoint: str, data: Any, *, request_id: str,
        headers: Mapping[bytes, bytes] | None = None, version: int | None = None,
    ) -> Answer:
        started = time.perf_counter()
        plan = self.plan(endpoint)
        if version is not None:
            target = plan.find_version(plan.targets[0].model.name, version)
            if target is None:
                raise NotFoundError(
                    f"Version {version} is not served by {endpoint!r}.",
                    hint=f"Served: {', '.join(t.model.ref for t in plan.targets)}.",
                    field="version", received=version,
                )
        else:
            sticky = headers.get(plan.sticky_header) if headers else None
            target = plan.pick(sticky)
        load_error: UnavailableError | None = None
        prepared = None
        if target.pending and self.demand is not None:  # not in memory: load it (bounded)
            prepared = self._prepare(plan, target.model, data)  # bad input: nothing loads
            try:
                plan, target = await self.demand.ready(plan, target)
                prepared = None
            except UnavailableError as exc:  # failed, refused or still loading: fall back
                if not (plan.fallbacks or plan.default_answer):
                    raise
                load_error = exc
        x, rows, matrix = prepared or self._prepare(plan, target.model, data)
        if matrix is not None and type(data) is not NumericRows \
                and not self.sink.wants_inputs(plan.name):
            # The matrix holds the inputs (same values, in signature order): it stands for
            # them from here on (record, fallbacks, shadow), and the parsed request is freed
            # now, while its memory is still in the CPU's caches. Kept across the wait for
            # the batch, 64 requests' parsed JSON (~6 MB at 64 rows) went cold before it was
            # freed: ~55 us of allocator and dict-freeing cache misses per 64-row request.
            data = NumericRows(matrix, target.model.names)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + plan.timeout_s
        try:
            if load_error is not None:
                raise load_error
            # A request the batcher runs at once (a full batch of a cheap model) cannot
            # outlast its deadline: it needs no timer. A queued one gets a timer on its
            # future from the batcher (cheaper than a timeout context around the await).
            outputs = target.batcher.run_now(x, rows)
            if outputs is None:
                outputs = await target.batcher.submit(x, rows, deadline)
            answer = Answer(endpoint, target.model, target.ref, outputs, rows)
        except OverloadedError:
            self.metrics.shed.inc()  # the batcher's queue is full: shed (503), no fallback
            raise
        except (TimeoutError, Exception) as exc:
            answer = await self._fall_back(plan, target, data, rows, exc, request_id,
                                           deadline)
        self._record(answer, data, request_id, time.perf_counter() - started, shadow=False,
                     matrix=matrix, columns=target.model.names)
        if plan.shadow is not None:
            self._start_shadow(loop, plan, plan.shadow, data, request_id)
        return answer

    def _start_shadow(self, loop: asyncio.AbstractEventLoop, plan: EndpointPlan,
                      shadow: Target, data: Any, request_id: str) -> None:
        """Copy the request to the shadow in the background, or drop it (counted) when
        ``shadow_capacity`` copies are already queued or running."""
        if self.shadow_in_flight >= self.shadow_capacity:
            self.metrics.shadow_dropped(plan.name)
            return
        self.shadow_in_flight += 1
        task = loop.create_task(self._shadow(plan, shadow, data, request_id))
        self._background.add(task)
        task.add_done_callback(self._shadow_done)

    def _shadow_done(self, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        self.shadow_in_flight -= 1

    def _prepare(self, plan: EndpointPlan, model: ServedModel, data: Any
                 ) -> tuple[Any, int, np.ndarray | None]:
        x, rows, matrix = model.prepare(data)
        if rows < 1:
            raise InvalidInputError("The request holds no rows; send at least one.",
                                    field="rows", expected=">= 1", received=rows)
        if rows > plan.max_rows:
            raise InvalidInputError(
                f"The request holds {rows} rows; endpoint {plan.name!r} takes at most "
                f"{plan.max_rows}.", hint="Split the request.", field="rows",
                expected=f"<= {plan.max_rows}", received=rows)
        return x, rows, matrix

    async def _fall_back(
        self, plan: EndpointPlan, failed: Target, data: Any, rows: int, exc: BaseException,
        request_id: str, deadline: float,
    ) -> Answer:
        loop = asyncio.get_running_loop()
        timed_out = isinstance(exc, TimeoutError)
        reason = "timeout" if timed_out else "error"
        log.warning("%s failed on %s (%s): %s", failed.model.ref, plan.name, reason,
                    type(exc).__name__,
                    extra={"request_id": request_id, "endpoint": plan.name,
                           "event": "prediction.failed", "reason": reason})
        for fallback in plan.fallbacks:
            if fallback.model is failed.model:
                continue
            if loop.time() >= deadline:  # the request's one timeout is spent
                timed_out = True
                break
            try:
                if fallback.pending and self.demand is not None:  # load it, in the time left
                    async with asyncio.timeout_at(deadline):
                        _plan, fallback = await self.demand.ready(plan, fallback)
                x, n, _matrix = self._prepare(plan, fallback.model, data)
                async with asyncio.timeout_at(deadline):
                    outputs = await fallback.batcher.submit(x, n)
            except TimeoutError:
                timed_out = True
                break
            except Exception:
                continue
            self.metrics.fallback(plan.name, reason)
            return Answer(plan.name, fallback.model, fallback.ref, outputs, n, fallback={
                "reason": reason, "from": failed.model.ref, "to": fallback.model.ref})
        if plan.default_answer is not None:
            self.metrics.fallback(plan.name, reason)
            value = plan.default_answer.prediction
            outputs = Outputs(np.array([value] * rows, dtype=object), None)
            return Answer(plan.name, failed.model, "default", outputs, rows, fallback={
                "reason": reason, "from": failed.model.ref, "to": "default"})
        if timed_out:
            raise TimeoutError_(
                f"Endpoint {plan.name!r} did not answer within its timeout of "
                f"{plan.timeout_s:g}s ({failed.model.ref}: {reason}"
                f"{', then its fallbacks' if plan.fallbacks else ''}).",
                hint="Retry, send fewer rows, or raise limits.timeout_ms.",
            ) from exc
        if isinstance(exc, MlharborError):
            raise exc
        raise UnavailableError(
            f"{failed.model.ref} failed to predict ({type(exc).__name__}); endpoint "
            f"{plan.name!r} has no fallback that could answer.",
            hint="Add a fallback to the endpoint, or check the server log for this request id.",
        ) from exc

    async def _shadow(self, plan: EndpointPlan, shadow: Target, data: Any,
                      request_id: str) -> None:
        started = time.perf_counter()
        try:
            x, rows, matrix = shadow.model.prepare(data)
            async with asyncio.timeout(plan.timeout_s):
                outputs = await shadow.batcher.submit(x, rows)
        except (TimeoutError, Exception) as exc:
            log.info("shadow %s failed: %s", shadow.model.ref, type(exc).__name__,
                     extra={"request_id": request_id, "endpoint": plan.name,
                            "event": "shadow.failed"})
            # Logged too, so the control plane tells a failed copy from a dropped one: the
            # error's class name only (its message may quote inputs), no inputs or outputs.
            self.sink.offer(PredictionRecord(
                request_id=request_id, endpoint=plan.name, model_ref=shadow.ref,
                served_version=shadow.model.version, inputs=None, outputs=None,
                latency_s=time.perf_counter() - started, at=utcnow(), shadow=True,
                error=type(exc).__name__))
            return
        answer = Answer(plan.name, shadow.model, shadow.ref, outputs, rows)
        self._record(answer, data, request_id, time.perf_counter() - started, shadow=True,
                     matrix=matrix, columns=shadow.model.names)

    def _record(self, answer: Answer, data: Any, request_id: str, latency: float, *,
                shadow: bool, matrix: np.ndarray | None, columns: tuple[str, ...]) -> None:
        fallback = answer.fallback["to"] if answer.fallback else None
        self.sink.offer(PredictionRecord(
            request_id=request_id, endpoint=answer.endpoint, model_ref=answer.ref,
            served_version=None if fallback == "default" else answer.version, inputs=data,
            outputs=answer.outputs, latency_s=latency, at=utcnow(), shadow=shadow,
            fallback=fallback, matrix=matrix, columns=None if matrix is None else columns,
        ))
