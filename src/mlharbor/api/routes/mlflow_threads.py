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

The pools stop with the app (:func:`lifespan`, merged into the app's own by the tracking
router): their idle threads end at shutdown instead of lingering for :data:`IDLE_S`, holding
the app, once per app a process builds and stops.

Why not ``anyio.to_thread.run_sync``: a training loop logging one metric per call pays the
hand-over to a thread and back on every call. Measured here (loaded 2-core machine, a no-op
call): anyio's ~80 us of CPU (~150 us wall), ``loop.run_in_executor`` ~50 us, a C
``SimpleQueue`` read by waiting threads that post the result back with
``call_soon_threadsafe`` ~27 us (~50 us wall). :class:`WorkerPool` is that queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import queue
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal, TypeVar

from fastapi import Request
from starlette.responses import Response

from mlharbor.api.mlflow_protocol import body_of
from mlharbor.api.responses import JsonResponse

T = TypeVar("T")
Kind = Literal["read", "write"]
Work = Callable[[Request, dict[str, Any]], Any]
Endpoint = Callable[[Request], Awaitable[Response]]
_Job = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[[], Any]]

#: Threads the MLflow routes of one app use at most for writes and for reads. SQLite writes
#: one transaction at a time and the GIL runs one thread's Python at a time: more would queue.
WRITE_THREADS = 8
READ_THREADS = 4
#: An idle thread ends after this long (a new one starts with the next call).
IDLE_S = 60.0


class WorkerPool:
    """Up to ``size`` daemon threads running calls for event loops, started on demand and
    ended when idle for :data:`IDLE_S` or by :meth:`close`; calls past ``size`` wait in the
    queue, in order."""

    def __init__(self, size: int, name: str) -> None:
        self.size = size
        self.name = name
        self.busy = 0  # calls running now (read by tests and for diagnostics)
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0
        self._queued = 0

    async def run(self, call: Callable[[], T]) -> T:
        """``call()`` on one of the pool's threads (in the caller's context variables); its
        result or its exception. Cancelling the caller does not stop a call once started."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        context = contextvars.copy_context()
        with self._lock:
            self._queued += 1
            start = self._queued > self._idle and self._threads < self.size
            if start:
                self._threads += 1
                name = f"{self.name}-{self._threads}"
        self._jobs.put((loop, future, lambda: context.run(call)))
        if start:
            threading.Thread(target=self._work, name=name, daemon=True).start()
        return await future

    def close(self) -> None:
        """End the pool's threads once the calls queued before this one are done (without
        waiting for them). A call made later still runs: it starts a thread again."""
        with self._lock:
            threads = self._threads
        for _ in range(threads):
            self._jobs.put(None)  # the thread taking it ends (unless a call needs it)

    def _work(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            try:
                job = self._jobs.get(timeout=IDLE_S)
            except queue.Empty:
                job = None
            if job is None:  # idle for IDLE_S, or closed
                with self._lock:
                    self._idle -= 1
                    # A call queued meanwhile that no other waiting thread will take (run()
                    # counted this one as idle and started none): stay and take it.
                    if self._queued <= self._idle:
                        self._threads -= 1
                        return
                continue
            loop, future, call = job
            with self._lock:
                self._idle -= 1
                self._queued -= 1
                self.busy += 1
            try:
                result, error = call(), None
            except BaseException as exc:  # handed to the awaiting request, re-raised there
                result, error = None, exc
            finally:
                with self._lock:
                    self.busy -= 1
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting
                loop.call_soon_threadsafe(_settle, future, result, error)
            del job, loop, future, call, result, error


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # the request was cancelled (the client went away)
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


@contextlib.asynccontextmanager
async def lifespan(app: Any) -> AsyncIterator[None]:
    """Closes the app's pools at shutdown (and forgets them: a restarted app makes new ones).
    The tracking router carries it, and FastAPI merges it into the app's lifespan."""
    try:
        yield
    finally:
        for kind in ("read", "write"):
            pool: WorkerPool | None = getattr(app.state, f"mlflow_{kind}_threads", None)
            if pool is not None:
                setattr(app.state, f"mlflow_{kind}_threads", None)
                pool.close()


def pool_of(request: Request, kind: Kind) -> WorkerPool:
    """The app's own pool for ``kind`` work (made on first use, on the app's event loop,
    where nothing else runs between the look-up and the assignment)."""
    state = request.app.state
    name = f"mlflow_{kind}_threads"
    pool: WorkerPool | None = getattr(state, name, None)
    if pool is None:
        pool = WorkerPool(WRITE_THREADS if kind == "write" else READ_THREADS, name)
        setattr(state, name, pool)
    return pool


async def off_loop(request: Request, call: Callable[[], T], *, kind: Kind = "write") -> T:
    """``call()`` on one of the app's ``kind`` threads; its result or its exception."""
    return await pool_of(request, kind).run(call)


def reading(work: Work) -> Endpoint:
    """:func:`in_thread` for a route that only reads."""
    return in_thread(work, "read")


def writing(work: Work) -> Endpoint:
    """:func:`in_thread` for a route that writes."""
    return in_thread(work, "write")


def writing_unless(now: Work) -> Callable[[Work], Endpoint]:
    """:func:`writing`, unless ``now(request, fields)``, tried first on the event loop,
    answers: what it returns, unless None. For work that never waits for a lock or the
    network and is small: the metric writes of :mod:`mlharbor.tracking.quick`, which spare a
    one-point ``log_metric`` the two hand-overs to a thread and back."""
    return lambda work: in_thread(work, "write", now=now)


def in_thread(work: Work, kind: Kind, *, now: Work | None = None) -> Endpoint:
    """An endpoint that reads the request's fields (:func:`body_of`) on the event loop, then
    runs ``work(request, fields)`` and renders its answer on one of the ``kind`` threads
    (unless ``now``, given, answers first on the loop: :func:`writing_unless`).

    ``work`` returns what the endpoint answers (a dict, rendered as JSON, or a Response);
    its errors reach the route (or :class:`~mlharbor.api.routes.mlflow_lane.MlflowLane`),
    which answers them in MLflow's shape. The endpoint takes only the request, as the lane
    requires; its name and docstring are ``work``'s (FastAPI's operation ids and docs).
    """

    async def endpoint(request: Request) -> Response:
        fields = await body_of(request)
        if now is not None:
            done = now(request, fields)
            if done is not None:
                return _answer(done)
        return await pool_of(request, kind).run(lambda: _answer(work(request, fields)))

    endpoint.__name__ = work.__name__
    endpoint.__qualname__ = work.__qualname__
    endpoint.__doc__ = work.__doc__
    endpoint.__module__ = work.__module__
    return endpoint


def _answer(result: Any) -> Response:
    return result if isinstance(result, Response) else JsonResponse(result)
