"""Asynchronous metric logging: a bounded queue drained in batches by one background thread.

A training loop's ``log_metric`` puts a point on the queue and returns; the flusher writes
what has gathered (up to :data:`BATCH` points per run per transaction) through
``TrackingStore.log_batch``. Nothing is lost: a full queue makes the caller wait (back
pressure, never a drop), :meth:`MetricFlusher.flush` returns once every point queued before
it is stored, and a run's end and the interpreter's exit flush. A batch the store refuses is
kept as the error :meth:`flush` raises, so a bad point is reported, not swallowed.
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
import weakref
from collections import defaultdict
from collections.abc import Callable, Iterable

from mlharbor.core.errors import MlharborError, UnavailableError
from mlharbor.core.runs import MetricPoint

log = logging.getLogger(__name__)
BATCH = 1000
Writer = Callable[[str, list[MetricPoint]], None]
_STOP = ("", MetricPoint("", 0.0, 0, 0))


class MetricFlusher:
    """Queue metric points; a daemon thread writes them in batches."""

    def __init__(self, write: Writer, *, max_queued: int = 100_000) -> None:
        self._write = write
        self._queue: queue.Queue[tuple[str, MetricPoint]] = queue.Queue(maxsize=max_queued)
        self._errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        atexit.register(_close_at_exit, weakref.ref(self))

    def put(self, run_id: str, points: Iterable[MetricPoint]) -> None:
        """Queue ``points`` for ``run_id`` (waits while the queue is full)."""
        if self._closed:
            raise UnavailableError("The metric flusher is closed; no more points can be "
                                   "logged in this process.")
        self._start()
        for point in points:
            self._queue.put((run_id, point))

    def flush(self) -> None:
        """Wait until every point queued so far is stored; raise the first refused batch."""
        if self._thread is not None:
            self._queue.join()
        with self._lock:
            errors, self._errors = self._errors, []
        if errors:
            raise errors[0]

    def close(self) -> None:
        """Flush, then stop the thread (at interpreter exit, say)."""
        if self._closed:
            return
        try:
            self.flush()
        except MlharborError as exc:
            log.error("metric points could not be stored: %s", exc)
        finally:
            self._closed = True
            if self._thread is not None:
                self._queue.put(_STOP)
                self._thread.join(10)

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name="mlharbor-metric-flusher")
                self._thread.start()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            taken = [first]
            while len(taken) < BATCH * 10:
                try:
                    taken.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = any(item is _STOP for item in taken)
            by_run: dict[str, list[MetricPoint]] = defaultdict(list)
            for run_id, point in taken:
                if run_id:
                    by_run[run_id].append(point)
            try:
                for run_id, points in by_run.items():
                    for i in range(0, len(points), BATCH):
                        self._write_one(run_id, points[i:i + BATCH])
            finally:
                for _ in taken:
                    self._queue.task_done()
            if stop:
                return

    def _write_one(self, run_id: str, points: list[MetricPoint]) -> None:
        try:
            self._write(run_id, points)
        except Exception as exc:  # kept for flush(): the caller learns which batch failed
            with self._lock:
                self._errors.append(exc)


def _close_at_exit(ref: weakref.ref[MetricFlusher]) -> None:
    flusher = ref()
    if flusher is not None:
        flusher.close()
