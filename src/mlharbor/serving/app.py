"""The serving app factory: every protocol on one predictor core, nothing built at import time.

``create_serving_app(settings, registry)`` serves every endpoint stored in the registry;
``create_serving_app(settings, registry, ref="churn@champion")`` serves one model without any
setup, as an endpoint named after the model (so Open Inference and KServe clients call it
``churn``). The app polls the registry and swaps versions in after they are warm; on shutdown
(SIGTERM, once uvicorn has drained in-flight requests) it stops polling and flushes the sink.

Layers, outermost first: the transport guard (Host allowlist, as on the control plane), the
security middleware (API keys, the policy table), then the lean HTTP layer, where every route,
GraphQL included, sits behind the same body limit, content-type check and load shedding.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from mlharbor.core.heap import freeze_startup_objects
from mlharbor.serving.batching import MicroBatcher, inline_max_for
from mlharbor.serving.core import DataPlane
from mlharbor.serving.http import JSON_ONLY, HttpApp, Request, Response, Route, Router, asgi_handler
from mlharbor.serving.pool import ModelPool
from mlharbor.serving.reconciler import Reconciler
from mlharbor.serving.sink import (
    DirectDispatcher,
    EmittingSink,
    NullSink,
    PredictionSink,
    SinkDispatcher,
)

if TYPE_CHECKING:
    from mlharbor.registry.endpoints import EndpointSpec
    from mlharbor.registry.service import Registry
    from mlharbor.security.identities import IdentityStore
    from mlharbor.serving.loader import ModelLoader
    from mlharbor.serving.model import ServedModel
    from mlharbor.serving.protocols.native import FeedbackWriter
    from mlharbor.settings import Settings
    from mlharbor.telemetry.metrics import ServingMetrics, SharedMetrics

log = logging.getLogger("mlharbor.serving")
SHADOW_THREADS = 1  # threads running shadow models, apart from the primaries' threads
QUIET_S = 0.5  # no request for this long after a busy spell: free heap pages are released


class ServingApp:
    """The ASGI app (transport guard and auth in front of the lean HTTP layer), with handles
    on its parts."""

    def __init__(self, asgi: Any, http: HttpApp, plane: DataPlane, pool: ModelPool,
                 reconciler: Reconciler, dispatcher: SinkDispatcher | DirectDispatcher
                 ) -> None:
        self.asgi = asgi
        self.http = http
        self.plane = plane
        self.pool = pool
        self.reconciler = reconciler
        self.dispatcher = dispatcher
        self.guard_for: Callable[[str], Any] | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await self.asgi(scope, receive, send)

    def listening_on(self, host: str) -> None:
        """Hold the Host allowlist to the address the server really binds (``serve --host``
        may differ from ``server.host``, which the allowlist was built from)."""
        if self.guard_for is not None:
            self.asgi = self.guard_for(host)

    def share_metrics(self, directory: Path) -> None:
        """Merge ``/metrics`` with the other workers of this server that share ``directory``
        (the runner calls it in each worker of ``serve --workers N``); the snapshot is
        written while the app runs (see mlharbor.telemetry.metrics)."""
        self.http.metrics.share(directory)


async def _write_snapshots(shared: SharedMetrics) -> None:
    """Write this worker's metrics snapshot every ``SNAPSHOT_INTERVAL_S`` until cancelled."""
    from mlharbor.telemetry.metrics import SNAPSHOT_INTERVAL_S

    while True:
        with contextlib.suppress(OSError):  # the folder went away: the server is stopping
            await asyncio.to_thread(shared.write)
        await asyncio.sleep(SNAPSHOT_INTERVAL_S)


async def _release_memory_when_quiet(http: HttpApp) -> None:
    """Once requests stop for ``QUIET_S`` after a busy spell, hand the C heap's free pages back
    to the kernel (until cancelled). Under load at 64 connections the heap and the threads'
    arenas grow by tens of MB of request bodies, parsed JSON and batches that glibc keeps after
    they are freed; resident memory would stay at that peak. Never during load: the pages
    would be faulted straight back in."""
    from mlharbor.serving.memory import release_free_memory

    seen, busy = http.handled, False
    while True:
        await asyncio.sleep(QUIET_S)
        if http.handled != seen:
            seen, busy = http.handled, True
        elif busy:
            busy = False
            release_free_memory()


def single_model_spec(ref: str, *, explain: bool = False) -> EndpointSpec:
    """The implicit endpoint of ``mlharbor serve REF``: named after the model, one route
    (``explain``: with the explain routes on, ``serve REF --explain``)."""
    from mlharbor.core.refs import ModelRef
    from mlharbor.registry.endpoints import EndpointSpec

    parsed = ModelRef.parse(ref)
    return EndpointSpec.model_validate({"name": parsed.name, "routes": [{"ref": str(parsed)}],
                                        "explain": explain})


def create_serving_app(
    settings: Settings, registry: Registry, *, ref: str | None = None,
    endpoints: list[EndpointSpec] | None = None,
    sink: PredictionSink | EmittingSink | None = None, loader: ModelLoader | None = None,
    auth: bool = True, identities: IdentityStore | None = None,
    metrics: ServingMetrics | None = None, feedback: FeedbackWriter | None = None,
    explain: bool = False,
) -> ServingApp:
    """Build the serving app for ``settings`` (see the module docstring for ``ref``).

    ``endpoints`` serves fixed specs instead of the stored ones; ``sink`` receives the
    prediction records (monitoring: a sink with ``emit`` is called directly, others in
    batches from a background thread; none when ``monitoring.log_predictions`` is off);
    ``loader`` replaces how versions are loaded (tests);
    ``auth`` puts the security middleware (API keys, the policy table) in front, checking keys
    against ``identities`` (default: the registry database's); the transport guard (Host
    allowlist) is always in front; ``metrics`` lets the caller
    register more collectors (the prediction log's backlog); ``feedback`` stores ground truth
    posted to ``/v1/endpoints/{name}/feedback`` (monitoring's label store); ``explain``
    turns the explain routes on for the endpoint of ``ref`` (stored endpoints say it in
    their spec; see :mod:`mlharbor.serving.explaining`).
    """
    from mlharbor.core.errors import InvalidInputError
    from mlharbor.core.status import status_for
    from mlharbor.serving.loader import registry_loader
    from mlharbor.serving.protocols import kserve, mlflow, native, open_inference
    from mlharbor.serving.protocols.errors import error_body, error_for
    from mlharbor.serving.protocols.payload import parse_json
    from mlharbor.telemetry.metrics import CONTENT_TYPE, ServingMetrics

    serving = settings.serving
    metrics = metrics or ServingMetrics()
    if not settings.monitoring.log_predictions:
        sink = feedback = None  # labels could never be joined with a prediction
    dispatcher: Any
    if sink is not None and hasattr(sink, "emit"):
        dispatcher = DirectDispatcher(cast("EmittingSink", sink))
    else:
        dispatcher = SinkDispatcher(sink or NullSink(), on_drop=metrics.records_dropped.inc,
                                    max_bytes=settings.monitoring.pending_max_bytes)
    plane = DataPlane(metrics=metrics, sink=dispatcher,
                      default_endpoint=serving.default_endpoint)
    inference = ThreadPoolExecutor(serving.inference_threads, "mlharbor-infer")
    # Shadows run on a thread of their own: a slow shadow can only fill its own queue (the
    # data plane drops copies past its capacity), never hold the primaries' threads.
    shadows = ThreadPoolExecutor(SHADOW_THREADS, "mlharbor-shadow")
    loads = ThreadPoolExecutor(2, "mlharbor-load")
    pool = ModelPool(loader or registry_loader(registry, settings), metrics=metrics,
                     load_executor=loads, memory_budget=serving.model_memory_budget,
                     max_loaded=serving.max_loaded_models)

    inline_max_s = inline_max_for(serving.inline_max_us / 1e6)

    def make_batcher(model: ServedModel, spec: EndpointSpec, *,
                     shadow: bool = False) -> MicroBatcher:
        b = spec.batching
        name = spec.name
        return MicroBatcher(
            model, shadows if shadow else inference,
            enabled=serving.batching if b.enabled is None else b.enabled,
            max_batch_size=b.max_batch_size or serving.max_batch_size,
            max_wait_s=(serving.max_batch_wait_ms if b.max_wait_ms is None
                        else b.max_wait_ms) / 1000.0,
            on_batch=lambda rows: metrics.observe_batch(name, rows),
            inline_max_s=inline_max_s, max_queue_bytes=serving.max_queue_bytes,
        )

    fixed = endpoints if endpoints is not None else (
        [single_model_spec(ref, explain=explain)] if ref is not None else None)
    reconciler = Reconciler(plane, pool, registry, serving, make_batcher, fixed=fixed)
    if pool.lazy:  # models load on first request and leave memory when the budget is full
        from mlharbor.serving.demand import OnDemand

        plane.demand = OnDemand(plane, pool, serving, make_batcher)
        pool.on_change = plane.demand.changed

    router = Router()
    for route in (*native.routes(plane, pool, feedback), *open_inference.routes(plane),
                  *mlflow.routes(plane), *kserve.routes(plane)):
        router.add(route)
    from mlharbor.serving.explaining import ExplainerCache, registry_explainer_builder
    from mlharbor.serving.protocols import explain as explain_routes

    explainers = ExplainerCache(registry_explainer_builder(registry, settings), pool)
    for route in explain_routes.routes(plane, explainers):
        router.add(route)

    async def metrics_route(request: Request) -> Response:
        return Response(metrics.exposition(), content_type=CONTENT_TYPE.encode())

    async def openapi_route(request: Request) -> Response:
        from mlharbor.serving.openapi import openapi_document

        return Response(openapi_document())

    router.add(Route("GET", "/metrics", metrics_route, "metrics", native.render_error))
    router.add(Route("GET", "/openapi.json", openapi_route, "native", native.render_error))
    # GraphQL is a route like the others: its body is read under the body limit, and since a
    # query may predict, it counts against the concurrency limit (shed like predictions).
    # Strawberry is built on the first GraphQL request, not at start-up: importing it is most
    # of a serving process's import time, and most servers never get a GraphQL query.
    graphql_app: list[Any] = []

    def build_graphql() -> Any:
        from mlharbor.serving.graphql import create_graphql_app

        return asgi_handler(create_graphql_app(plane, registry, status_for))

    async def run_graphql(request: Request) -> Response:
        if not graphql_app:  # built off the loop: predictions go on meanwhile
            built = await asyncio.get_running_loop().run_in_executor(loads, build_graphql)
            if not graphql_app:
                graphql_app.append(built)
        return await cast("Any", graphql_app[0])(request)  # type: ignore[no-any-return]

    async def graphql(request: Request) -> Response:
        # A clear 400 for what Strawberry would fail on with a 500 (bytes that are not JSON,
        # JSON that is not an object).
        if not isinstance(parse_json(request.body, what="GraphQL request"), dict):
            raise InvalidInputError(
                "A GraphQL request is a JSON object: {\"query\": ..., \"variables\": ...}.",
                field="body", expected="object")
        return await run_graphql(request)

    router.add(Route("POST", "/graphql", graphql, "graphql", native.render_error,
                     predict=True, accepts=JSON_ONLY))

    background: list[asyncio.Task[None]] = []

    async def lifespan(phase: str) -> None:
        if phase == "startup":
            if metrics.shared is not None:
                background.append(asyncio.get_running_loop().create_task(
                    _write_snapshots(metrics.shared)))
            dispatcher.start()
            background.append(asyncio.get_running_loop().create_task(
                _release_memory_when_quiet(http)))
            try:
                await reconciler.sync()
            except Exception as exc:  # the poller retries; readiness stays false meanwhile
                plane.sync_error = f"{type(exc).__name__}: {exc}"[:500]
                log.warning("first sync failed: %s", plane.sync_error)
            freeze_startup_objects()
            reconciler.start()
        elif phase == "shutdown":
            for task in background:
                task.cancel()
            if metrics.shared is not None:
                await asyncio.to_thread(metrics.shared.write)  # the final counts
            await reconciler.stop()
            dispatcher.stop()
            inference.shutdown(wait=False, cancel_futures=True)
            shadows.shutdown(wait=False, cancel_futures=True)
            loads.shutdown(wait=False, cancel_futures=True)
            explainers.close()

    http = HttpApp(
        router, metrics=metrics, status_for=status_for,
        max_body_bytes=settings.server.max_body_bytes,
        max_concurrency=serving.max_concurrency, debug=settings.server.debug,
        error_for=error_for, access_log=serving.access_log, lifespan=lifespan,
    )
    asgi: Any = http
    if auth:
        from mlharbor.security.identities import IdentityStore as _Identities
        from mlharbor.serving.auth import with_auth

        store = identities or _Identities(registry.store.db.engine,
                                          audit=registry.store.record)
        asgi = with_auth(http, registry, settings, store, error_body=error_body)
    from mlharbor.security.middleware import guard_transport

    inner = asgi

    def guard_for(host: str) -> Any:
        # The HTTP layer enforces the body limit on every route itself, so the guard checks
        # the Host only: one header scan per request.
        bound = settings.model_copy(update={
            "server": settings.server.model_copy(update={"host": host})})
        return guard_transport(inner, bound, body_limit=False, error_body=error_body)

    app = ServingApp(guard_for(settings.server.host), http, plane, pool, reconciler,
                     dispatcher)
    app.guard_for = guard_for
    return app
