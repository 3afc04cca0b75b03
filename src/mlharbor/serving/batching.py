"""Adaptive micro-batching: concurrent requests for one model run as one inference call.

A request never waits for company when the model is idle: the first request of a quiet period
runs at once. While a batch runs (in a worker thread, off the event loop), new requests queue;
the next batch takes them all, up to ``max_batch_size`` rows, never splitting a request. Only
under load (the previous batch held several requests) does a batch wait up to ``max_wait`` for
more. So latency stays that of one call when traffic is light, and throughput approaches that
of full batches when it is heavy.

The worker task exists only while requests are queued, so a batcher needs no shutdown.

Where a batch runs: handing it to a worker thread costs tens of microseconds of CPU (a queue
put, a thread wake-up, a future chained back to the loop), more than a cheap model's whole
inference (a linear model in ONNX Runtime answers 64 rows in a few microseconds). So every
batch's run time is measured, and while its moving average stays under ``inline_max_s`` the
next batch runs on the event loop itself; a model slower than that (or whose speed is not yet
known: the first batches) runs in the thread pool, so the loop keeps accepting requests while
it works. A process that may use one CPU only gains no parallelism from the thread, so there
the threshold is higher (:func:`inline_max_for`).

The queue is bounded in bytes (``max_queue_bytes``, the prepared inputs waiting): a request
that would pass it is shed at once with 503 (:class:`~mlharbor.serving.http.OverloadedError`)
instead of growing the process's memory while the model falls behind.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from mlharbor.serving.model import Outputs, ServedModel, input_nbytes

BatchObserver = Callable[[int], None]
INLINE_MAX_S = 0.0002  # batches faster than this on average run on the event loop
# With one usable CPU, a worker thread cannot run beside the loop: the hand-off is pure cost,
# so batches up to this long run on the loop (they hold it no longer than a thread holding
# the interpreter lock for its 5 ms switch interval would).
ONE_CPU_INLINE_MAX_S = 0.002
MAX_QUEUE_BYTES = 64 << 20  # prepared inputs waiting for one model, before requests are shed
_EWMA = 0.2  # weight of the newest batch in the run-time average


def inline_max_for(inline_max_s: float) -> float:
    """The inline threshold for this process: ``inline_max_s``, raised to
    :data:`ONE_CPU_INLINE_MAX_S` when the process may run on one CPU only (a container's
    cpuset, ``taskset``)."""
    import os

    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux: assume several
        cpus = os.cpu_count() or 2
    return max(inline_max_s, ONE_CPU_INLINE_MAX_S) if cpus == 1 else inline_max_s


class _Item:
    __slots__ = ("future", "nbytes", "rows", "x")

    def __init__(self, x: Any, rows: int, nbytes: int,
                 future: asyncio.Future[Outputs]) -> None:
        self.x = x
        self.rows = rows
        self.nbytes = nbytes
        self.future = future


class MicroBatcher:
    """Queues prepared requests for one model and runs them in batches."""

    def __init__(
        self, model: ServedModel, executor: Executor, *, enabled: bool = True,
        max_batch_size: int = 64, max_wait_s: float = 0.001,
        on_batch: BatchObserver | None = None, inline_max_s: float = INLINE_MAX_S,
        max_queue_bytes: int = MAX_QUEUE_BYTES,
    ) -> None:
        self.model = model
        self.executor = executor
        self.enabled = enabled
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.on_batch = on_batch
        self.inline_max_s = inline_max_s
        self.max_queue_bytes = max_queue_bytes
        self.queued_bytes = 0
        self.shed = 0  # requests refused because the queue was full
        # Moving average of a batch's run time; infinite until one is measured, so a model's
        # first batches run in the thread pool.
        self.run_s = float("inf")
        self._queue: deque[_Item] = deque()
        self._worker: asyncio.Task[None] | None = None
        self._last_items = 0

    async def submit(self, x: Any, rows: int, deadline: float | None = None) -> Outputs:
        """The outputs of one prepared request, computed alone or within a batch.

        ``deadline`` (the loop's clock): past it, the request fails with ``TimeoutError`` and
        its rows are left out of any batch not yet started, as under ``asyncio.timeout_at``.
        A queued request gets one timer on its future instead of a timeout context around the
        await (~1 us instead of ~3.5: no ``Timeout`` object, no task cancellation and
        uncancel bookkeeping; a 1-row request's whole platform cost is ~100 us)."""
        loop = asyncio.get_running_loop()
        if not self.enabled:
            if self.on_batch is not None:
                self.on_batch(rows)
            running = loop.run_in_executor(self.executor, self.model.run, x)
            if deadline is None:
                return await running
            async with asyncio.timeout_at(deadline):
                return await running
        now = self.run_now(x, rows)
        if now is not None:
            return now
        nbytes = input_nbytes(x)
        if self.queued_bytes + nbytes > self.max_queue_bytes and self._queue:
            self.shed += 1
            from mlharbor.serving.http import OverloadedError

            raise OverloadedError(
                f"{self.model.ref} has {self.queued_bytes} bytes of requests queued; the "
                f"limit is {self.max_queue_bytes} (serving.max_queue_bytes).",
                hint="Retry after a second, or send fewer rows per request.")
        future: asyncio.Future[Outputs] = loop.create_future()
        self._queue.append(_Item(x, rows, nbytes, future))
        self.queued_bytes += nbytes
        if self._worker is None:
            self._worker = loop.create_task(self._drain())
        if deadline is None:
            return await future
        timer = loop.call_at(deadline, _expire, future)
        try:
            return await future
        finally:
            timer.cancel()

    def run_now(self, x: Any, rows: int) -> Outputs | None:
        """The outputs of a request that fills a batch by itself (``max_batch_size`` rows or
        more), for a model fast enough to run on the loop, with nothing queued: no company
        could join it, so it runs now, without the future, the drain task and the loop turn
        a batch costs (~5 us), and its caller needs no timer for it (~5 us more). None: the
        request goes through :meth:`submit`. Smaller requests are better off waiting for
        company: at 64 rows, four requests in one ONNX Runtime call cost less CPU than four
        calls (measured in process, LR, ``max_batch_size`` 256 vs 64)."""
        if (rows < self.max_batch_size or self._queue or not self.enabled
                or self.run_s >= self.inline_max_s):
            return None
        if self.on_batch is not None:
            self.on_batch(rows)
        return self._timed(x)

    def _take(self, batch: list[_Item], rows: int) -> int:
        queue = self._queue
        while queue and (not batch or rows + queue[0].rows <= self.max_batch_size):
            item = queue.popleft()
            self.queued_bytes -= item.nbytes
            if item.future.done():  # the caller gave up (timeout); skip its rows
                continue
            batch.append(item)
            rows += item.rows
        return rows

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._queue:
                batch: list[_Item] = []
                rows = self._take(batch, 0)
                if (rows < self.max_batch_size and self.max_wait_s > 0
                        and self._last_items > 1):
                    await asyncio.sleep(self.max_wait_s)
                    rows = self._take(batch, rows)
                if not batch:
                    continue
                self._last_items = len(batch)
                if self.on_batch is not None:
                    self.on_batch(rows)
                try:
                    if self.run_s < self.inline_max_s:
                        out = self._run(batch)
                    else:
                        out = await loop.run_in_executor(self.executor, self._run, batch)
                except BaseException as exc:
                    for item in batch:
                        if item.future.done():
                            pass
                        elif isinstance(exc, Exception):
                            item.future.set_exception(exc)
                        else:
                            item.future.cancel()
                    if isinstance(exc, Exception):
                        continue
                    raise
                start = 0
                for item in batch:
                    stop = start + item.rows
                    if not item.future.done():
                        item.future.set_result(out if len(batch) == 1 else out.rows(start, stop))
                    start = stop
        except asyncio.CancelledError:
            while self._queue:
                self._queue.popleft().future.cancel()
            self.queued_bytes = 0
            raise
        finally:
            self._worker = None

    def _run(self, batch: list[_Item]) -> Outputs:
        return self._timed(self.model.concat([item.x for item in batch]))

    def _timed(self, x: Any) -> Outputs:
        """Run a batch, folding its run time into the moving average."""
        started = time.perf_counter()
        try:
            return self.model.run(x)
        finally:
            elapsed = time.perf_counter() - started
            last = self.run_s
            self.run_s = elapsed if last == float("inf") else last + _EWMA * (elapsed - last)


def _expire(future: asyncio.Future[Outputs]) -> None:
    """A queued request's deadline passed: fail it (its rows are skipped by :meth:`_take`;
    a batch already running drops its answer)."""
    if not future.done():
        future.set_exception(TimeoutError("the request's deadline passed"))
