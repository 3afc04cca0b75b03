"""Where serving hands its :class:`PredictionRecord`s, without ever waiting for them.

A :class:`PredictionSink` (monitoring implements one) receives records in batches on a
background thread. The request path only appends to a bounded in-memory buffer: when the sink is
slow or down and the buffer is full, records are dropped and counted, and requests go on.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Protocol

from mlharbor.core.records import PredictionRecord

log = logging.getLogger("mlharbor.serving.sink")


class PredictionSink(Protocol):
    """Receives answered predictions; called from a background thread, never on a request.

    A sink may also define ``wants_inputs(endpoint) -> bool``: False when the float64 matrix
    of a model of numbers (``PredictionRecord.matrix``) is all it needs of the inputs, so the
    data plane hands it that matrix as the inputs (``NumericRows``) and frees the parsed
    request at once (see :meth:`~mlharbor.serving.core.DataPlane.predict`). Without it, the
    inputs come as received.
    """

    def write(self, records: Sequence[PredictionRecord]) -> None: ...


class NullSink:
    """Discards records (the default when no monitoring is configured)."""

    def write(self, records: Sequence[PredictionRecord]) -> None:
        return None


class MemorySink:
    """Keeps records in a list (tests, and a quick look in a notebook)."""

    def __init__(self) -> None:
        self.records: list[PredictionRecord] = []
        self._lock = threading.Lock()

    def write(self, records: Sequence[PredictionRecord]) -> None:
        with self._lock:
            self.records.extend(records)


class SinkDispatcher:
    """A buffer drained to the sink by one daemon thread, bounded in records (``capacity``)
    and in bytes (``max_bytes``, each record's :meth:`~PredictionRecord.nbytes`).

    The byte count is two running totals, each written by one thread only (``offer`` adds on
    the event loop, the drain adds what it took), so it needs no lock.
    """

    def __init__(
        self, sink: PredictionSink, *, capacity: int = 100_000, batch: int = 1000,
        on_drop: Callable[[int], None] | None = None, max_bytes: int = 64 << 20,
    ) -> None:
        self.sink = sink
        self.capacity = capacity
        self.batch = batch
        self.on_drop = on_drop
        self.max_bytes = max_bytes
        self._buffer: collections.deque[tuple[PredictionRecord, int]] = collections.deque()
        self._offered_bytes = 0  # written by offer() only
        self._taken_bytes = 0  # written by the drain only
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.dropped = 0
        # A NullSink gets no drain thread (start); buffering for it kept up to ``capacity``
        # records (their inputs and outputs) alive forever in a server without monitoring.
        self._discard = isinstance(sink, NullSink)

    @property
    def buffered_bytes(self) -> int:
        return self._offered_bytes - self._taken_bytes

    def wants_inputs(self, endpoint: str) -> bool:
        """Whether records of ``endpoint`` must carry the inputs as received (see
        :class:`PredictionSink`)."""
        wants = getattr(self.sink, "wants_inputs", None)
        return True if wants is None else bool(wants(endpoint))

    def offer(self, record: PredictionRecord) -> None:
        """O(1), never blocks: buffer the record or drop it (counted) when the buffer is full
        in records or in bytes."""
        if self._discard:  # nothing would ever drain the buffer: it only pinned memory
            return
        size = record.nbytes()
        if (len(self._buffer) >= self.capacity
                or self._offered_bytes - self._taken_bytes + size > self.max_bytes):
            self.dropped += 1
            if self.on_drop is not None:
                self.on_drop(1)
            return
        self._offered_bytes += size
        self._buffer.append((record, size))
        if len(self._buffer) >= self.batch:
            self._wake.set()

    def start(self) -> None:
        if self._thread is None and not isinstance(self.sink, NullSink):
            self._thread = threading.Thread(target=self._loop, name="mlharbor-sink",
                                            daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Flush what is buffered (within ``timeout``) and stop the thread."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def flush(self) -> None:
        while self._buffer:
            chunk: list[PredictionRecord] = []
            taken = 0
            while self._buffer and len(chunk) < self.batch:
                record, size = self._buffer.popleft()
                chunk.append(record)
                taken += size
            self._taken_bytes += taken
            try:
                self.sink.write(chunk)
            except Exception:
                # Counted like a full buffer (metric and all): a lost record is never silent.
                self.dropped += len(chunk)
                if self.on_drop is not None:
                    self.on_drop(len(chunk))
                log.exception("prediction sink failed; %d record(s) dropped (%d since start)",
                              len(chunk), self.dropped)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(0.2)
            self._wake.clear()
            self.flush()
        self.flush()


class EmittingSink(Protocol):
    """A sink whose ``emit`` is itself a non-blocking append of a few microseconds (it may
    define ``wants_inputs`` too, see :class:`PredictionSink`)."""

    def emit(self, record: PredictionRecord) -> None: ...


class DirectDispatcher:
    """Hands each record straight to an :class:`EmittingSink` (monitoring's prediction log).

    That sink buffers on disk itself, so an extra in-memory hop would only widen the window a
    crash can lose records in.
    """

    def __init__(self, sink: EmittingSink) -> None:
        self.sink = sink
        self.dropped = 0

    def wants_inputs(self, endpoint: str) -> bool:
        wants = getattr(self.sink, "wants_inputs", None)
        return True if wants is None else bool(wants(endpoint))

    def offer(self, record: PredictionRecord) -> None:
        self.sink.emit(record)

    def start(self) -> None:
        return None

    def stop(self, timeout: float = 5.0) -> None:
        return None

    def flush(self) -> None:
        return None
