"""The MLflow routes' blocking work (SQL, files) on worker threads, never on the event loop.

The control plane's event loop serves every request: authentication, the dashboard, health
probes, the registry. SQLite lets one writer in at a time and makes the others wait (up to
the busy timeout, a minute), PostgreSQL may wait on a row lock: run on the loop, one tracking
write waiting on a lock would stall all of them. So each MLflow endpoint reads its request on
the loop, then hands the store calls *and* the rendering of its JSON answer (a search page
of 1,000 runs is ~1 MB) to a worker thread.

The threads come from pools of their own, per app: :data:`WRITE_THREADS` for routes that
write and :data:`READ_THREADS` for routes that only read. A burst of writes queued on a lock
takes at most the write threads: reads (which neither SQLite in WAL mode nor PostgreSQL makes
wait for a writer) keep their own, and anyio's shared pool, which runs every synchronous
route (``/livez``, ``/readyz``, the native API), stays free.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypeVar

import anyio
import anyio.to_thread
from fastapi import Request
from starlette.responses import Response

from mlharbor.api.mlflow_protocol import body_of
from mlharbor.api.responses import JsonResponse

T = TypeVar("T")
Kind = Literal["read", "write"]
Work = Callable[[Request, dict[str, Any]], Any]
Endpoint = Callable[[Request], Awaitable[Response]]

#: Threads the MLflow routes of one app use at most for writes and for reads. SQLite writes
#: one transaction at a time and the GIL runs one thread's Python at a time: more would queue.
WRITE_THREADS = 8
READ_THREADS = 4
_SIZES = {"read": READ_THREADS, "write": WRITE_THREADS}


def limiter_of(request: Request, kind: Kind) -> anyio.CapacityLimiter:
    """The app's own thread limiter for ``kind`` work (made on first use, on the app's
    event loop, where nothing else runs between the look-up and the assignment)."""
    state = request.app.state
    name = f"mlflow_{kind}_threads"
    limiter: anyio.CapacityLimiter | None = getattr(state, name, None)
    if limiter is None:
        limiter = anyio.CapacityLimiter(_SIZES[kind])
        setattr(state, name, limiter)
    return limiter


async def off_loop(request: Request, call: Callable[[], T], *, kind: Kind = "write") -> T:
    """``call()`` on one of the app's ``kind`` threads; its result or its exception."""
    return await anyio.to_thread.run_sync(call, limiter=limiter_of(request, kind))


def reading(work: Work) -> Endpoint:
    """:func:`in_thread` for a route that only reads."""
    return in_thread(work, "read")


def writing(work: Work) -> Endpoint:
    """:func:`in_thread` for a route that writes."""
    return in_thread(work, "write")


def in_thread(work: Work, kind: Kind) -> Endpoint:
    """An endpoint that reads the request's fields (:func:`body_of`) on the event loop, then
    runs ``work(request, fields)`` and renders its answer on one of the ``kind`` threads.

    ``work`` returns what the endpoint answers (a dict, rendered as JSON, or a Response);
    its errors reach the route (or :class:`~mlharbor.api.routes.mlflow_lane.MlflowLane`),
    which answers them in MLflow's shape. The endpoint takes only the request, as the lane
    requires; its name and docstring are ``work``'s (FastAPI's operation ids and docs).
    """

    async def endpoint(request: Request) -> Response:
        fields = await body_of(request)
        return await anyio.to_thread.run_sync(_answer, work, request, fields,
                                              limiter=limiter_of(request, kind))

    endpoint.__name__ = work.__name__
    endpoint.__qualname__ = work.__qualname__
    endpoint.__doc__ = work.__doc__
    endpoint.__module__ = work.__module__
    return endpoint


def _answer(work: Work, request: Request, fields: dict[str, Any]) -> Response:
    result = work(request, fields)
    return result if isinstance(result, Response) else JsonResponse(result)
