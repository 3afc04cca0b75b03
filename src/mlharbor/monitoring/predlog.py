"""The prediction log: records from serving, journaled durably, stored as Parquet segments.

Path of a record::

    emit(record)  -- deque.append, a few hundred nanoseconds, never blocks (serving's thread)
      -> flusher thread, every flush_interval / 5: one entry per record (inputs as received,
         or redacted columns; outputs as arrays) -> one fsync'd journal frame
      -> compactor thread, every segment_interval: sealed journal, in pieces of PIECE_BYTES
         -> rows expanded column-wise -> a row group of the endpoint's Parquet segment
         (local folder or S3, sealed when a key is set; published once the file is done)
         -> journal file removed (in the compactor child process when serving)

A crash loses at most what was emitted in the last flush interval; a restart turns every
journal left behind into segments (:meth:`PredictionLog.start`, in the background: a store that
is down at start delays that, never serving). A segment's name is derived from its journal's
sequence number, so a crash between writing a segment and removing its journal rewrites the
same segment instead of duplicating rows. A slow or failing store only grows the journal
(bounded; the backlog is exported as a metric); serving never waits.

Every accepted record is stored or counted as dropped, by reason (metric
``mlharbor_prediction_log_dropped_records{reason}`` and an error log line):
``buffer_full`` (too many records waiting for the flusher), ``journal_full`` (the journal
reached ``max_buffer_bytes``), ``write_failed`` (a journal write raised -- full disk, KMS
error -- and the records did not fit in the ``max_unwritten_bytes`` kept in memory for the next
flush), ``unencodable`` (a record that cannot be turned into bytes), ``torn`` (a half-written
frame found at compaction; the rest of its file is compacted).

Segments are named ``endpoint=<name>/<first_at>-<last_at>-<writer>-<seq>.parquet`` (times in
epoch microseconds; the writer is a random id kept in the journal folder), so time-range
queries skip whole files before reading a byte of them.
"""

from __future__ import annotations

import collections
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from mlharbor.core.clock import epoch_micros, utcnow
from mlharbor.core.errors import CompactorUnavailable
from mlharbor.core.records import PredictionRecord
from mlharbor.monitoring.journal import Frame, Journal, payload_size
from mlharbor.monitoring.logframes import (
    binary_ok,
    block_entries,
    blocks_table,
    encode_parts,
    split_records,
    with_inputs,
    without_inputs,
)
from mlharbor.monitoring.logrows import (
    ENTRY_FORMAT,
    Redaction,
    column_array,
    entries_columns,
    entry_default,
    matrix_table,
    matrix_to_cols,
    record_entry,
)
from mlharbor.monitoring.segmentwriter import WRITE_OPTIONS, dictionary_columns

if TYPE_CHECKING:
    import pyarrow as pa

    from mlharbor.monitoring.compactor import CompactorProcess
    from mlharbor.monitoring.segments import Sealer, SegmentStore

log = logging.getLogger("mlharbor.monitoring.predlog")

# Frames read and written at a time when a journal file is compacted: what bounds the
# compactor's working memory (the piece's rows and Arrow table, about 3x its frames, plus the
# Parquet writer's row group), whatever the file's size. At 64 rows a request it is ~370
# requests, ~25k rows: a row group large enough that Parquet's per-group costs stay small.
PIECE_BYTES = 4 << 20
# Times a journal file is started over in pieces with a wider schema before it is compacted
# whole (see PredictionLog._compact_file).
SCHEMA_RESTARTS = 3

DROP_REASONS = ("buffer_full", "journal_full", "write_failed", "unencodable", "torn")


class PredictionLog:
    """A :class:`~mlharbor.serving.sink.PredictionSink` (``write``) with a non-blocking
    ``emit``, and the column-wise reader of what was logged."""

    def __init__(self, journal_dir: Path, segments: SegmentStore, *,
                 redaction: Redaction | None = None, sealer: Sealer | None = None,
                 flush_interval_s: float = 1.0, segment_interval_s: float = 5.0,
                 max_buffer_bytes: int = 1 << 30, max_pending: int = 1_000_000,
                 max_unwritten_bytes: int = 64 << 20, max_pending_bytes: int = 64 << 20,
                 retention: timedelta | None = None, metrics_registry: Any = None,
                 journal_lock: Any = None, compactor: CompactorProcess | None = None) -> None:
        self.segments = segments
        # Compacts in a child process when set (serving); in this one otherwise.
        self.compactor = compactor
        # An open file holding an exclusive flock on the journal folder (see service.py);
        # released by close() so the folder can be claimed again.
        self._journal_lock = journal_lock
        self.sealer = sealer
        self.redaction = redaction
        self.flush_interval_s = flush_interval_s
        self.segment_interval_s = segment_interval_s
        self.max_pending = max_pending
        self.max_pending_bytes = max_pending_bytes
        self._emitted_bytes = 0  # written by emit() only
        self._flushed_bytes = 0  # written by flush() only (under its lock)
        self.retention = retention
        self._retained_at = 0.0
        self.journal = Journal(journal_dir, max_bytes=max_buffer_bytes, sealer=sealer)
        # In segment names: processes sharing a store (workers, replicas) each journal in
        # their own folder, with their own sequence numbers.
        self._slot = _writer_name(journal_dir)
        # Each record with its nbytes(), so the flusher need not ask it again.
        self._pending: collections.deque[tuple[PredictionRecord, int]] = collections.deque()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._compact_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        # Frames a journal write failed to take, oldest first, for the next flush (bounded).
        self.max_unwritten_bytes = max_unwritten_bytes
        self._unwritten: list[_Batch] = []
        self.drops = dict.fromkeys(DROP_REASONS, 0)
        # Damaged stretches of journal whose record count is unknown (old-format journals,
        # torn frame headers): counted apart, since they cannot be counted in records.
        self.torn_frames = 0
        self.store_failures = 0
        self._metrics = _LogMetrics(self, metrics_registry) if metrics_registry else None

    # -- the sink ------------------------------------------------------------------------

    def emit(self, record: PredictionRecord) -> None:
        """Accept one record: O(1), no lock, no I/O. Past ``max_pending`` records or
        ``max_pending_bytes`` (:meth:`PredictionRecord.nbytes`) waiting, it is dropped and
        counted (``buffer_full``). The byte count is two running totals, each written by one
        thread (this one adds, the flusher adds what it took), so it needs no lock.

        A record whose matrix carries its inputs (it will be journaled in a binary frame) is
        kept without the inputs as received: the parsed JSON (64 dicts of numbers at 64 rows)
        is freed now, on the caller's thread, as a server without a log would free it. Kept
        until the flusher ran, a flush's worth of it was freed in one go while the interpreter
        lock was held (several ms), and the C heap handed its pages back and faulted in new
        ones for the next requests: ~40 us of the flusher's CPU per 64-row request."""
        if record.inputs is not None and binary_ok(record, self.redaction):
            record = without_inputs(record)
        size = record.nbytes()
        if (len(self._pending) >= self.max_pending
                or self._emitted_bytes - self._flushed_bytes + size > self.max_pending_bytes):
            self.drops["buffer_full"] += 1
            return
        self._emitted_bytes += size
        self._pending.append((record, size))

    def wants_inputs(self, endpoint: str) -> bool:
        """Whether records of ``endpoint`` must carry their inputs as received: only where
        redaction rules apply (they work on the values as sent). Elsewhere a model of
        numbers' float64 matrix is what the log stores, and serving may free the parsed
        request at once (see serving's ``PredictionSink``)."""
        return self.redaction is not None and bool(self.redaction.rules_for(endpoint))

    @property
    def pending_bytes(self) -> int:
        """Estimated bytes of the records waiting for the flusher."""
        return self._emitted_bytes - self._flushed_bytes

    def write(self, records: Sequence[PredictionRecord]) -> None:
        """Serving's ``PredictionSink`` protocol: accept a batch (same cost as ``emit``)."""
        for record in records:
            self.emit(record)

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def dropped(self) -> int:
        """Records accepted but never stored, since this log was opened (every reason)."""
        return sum(self.drops.values())

    @property
    def unwritten_records(self) -> int:
        """Records whose journal write failed, kept in memory for the next flush."""
        return sum(b.records for b in self._unwritten)

    def start(self) -> PredictionLog:
        """Start the threads. The compactor's first round recovers what an earlier process
        left in the journal: in the background, so a store that is down does not keep serving
        from starting (the journal keeps the rows until the store is back)."""
        for target, name in ((self._flush_loop, "flusher"), (self._compact_loop, "compactor")):
            thread = threading.Thread(target=target, name=f"mlharbor-log-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def close(self, timeout: float = 30.0) -> None:
        """Stop: everything accepted so far is journaled and turned into segments."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)
        self._threads.clear()
        self.flush()
        if self._unwritten:  # the journal still refuses them and this process is ending
            with self._flush_lock:
                lost, self._unwritten = sum(b.records for b in self._unwritten), []
            self._drop("write_failed", lost, "the journal could not be written at shutdown")
        try:
            self.compact()
        except Exception:  # the store is down: the journal keeps the rows for the next start
            log.exception("prediction log store unavailable at shutdown; rows kept in journal")
        if self.compactor is not None:
            self.compactor.close()
        if self._journal_lock is not None:
            self._journal_lock.close()
            self._journal_lock = None

    def __enter__(self) -> PredictionLog:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- work ----------------------------------------------------------------------------

    def flush(self) -> int:
        """Journal every pending record, and any a failed write left over, with one fsync;
        returns the records written.

        A write that raises (full disk, KMS error) loses nothing: its frames are kept in
        memory, up to ``max_unwritten_bytes``, and go first in the next flush; what does not
        fit is dropped and counted.
        """
        with self._flush_lock:
            taken = []
            pending = self._pending
            while True:
                try:
                    taken.append(pending.popleft())
                except IndexError:
                    break
            records = [record for record, _size in taken]
            self._flushed_bytes += sum(size for _record, size in taken)
            del taken
            batches = list(self._unwritten)
            if records:
                try:
                    batches.append(self._encode(records))
                except Exception:
                    log.exception("prediction records could not be encoded")
                    self._drop("unencodable", len(records), "they could not be encoded")
            if not batches:
                return 0
            count = sum(b.records for b in batches)
            try:
                written = self.journal.append_frames(
                    [f for b in batches for f in b.frames])
            except Exception as exc:
                self._keep_unwritten(batches, exc)
                return 0
            self._unwritten = []
            if not written:
                self._drop("journal_full", count,
                           f"the journal is full ({self.journal.backlog_bytes} bytes)")
                return 0
            return count

    def _encode(self, records: list[PredictionRecord]) -> _Batch:
        # Records carrying their inputs as a matrix of numbers go as one binary frame (their
        # bytes as they are); the others as one JSON entry per record (not per row): orjson
        # turns the inputs as received and the output arrays into bytes in one C call. Rows
        # are expanded at compaction.
        redaction = self.redaction
        binary, records = split_records(records, redaction)
        frames: list[Frame] = []
        if binary:
            try:
                frames.append((encode_parts(binary), len(binary)))
            except (TypeError, ValueError):  # an output orjson refuses: the JSON path copes
                log.warning("binary journal frame failed; journaling %d record(s) as JSON",
                            len(binary), exc_info=True)
                records, binary = [*map(with_inputs, binary), *records], []
        option = orjson.OPT_SERIALIZE_NUMPY
        entries = []
        for record in records:
            entry = record_entry(record, redaction)
            try:
                entries.append(orjson.dumps(entry, option=option, default=entry_default))
            except TypeError:
                # orjson refuses integers wider than 64 bits; keep the record, with the
                # offending values as strings, rather than losing the whole batch.
                entries.append(_dumps_leniently(entry))
        if entries:
            frames.append((b"\n".join(entries), len(entries)))
        return _Batch(frames, len(entries) + len(binary))

    def _keep_unwritten(self, batches: list[_Batch], exc: Exception) -> None:
        """After a failed write: keep the oldest batches that fit in memory, drop the rest."""
        kept: list[_Batch] = []
        size = lost = 0
        for batch in batches:
            if size + batch.size <= self.max_unwritten_bytes:
                kept.append(batch)
                size += batch.size
            else:
                lost += batch.records
        self._unwritten = kept
        reason = f"{type(exc).__name__}: {exc}"
        if lost:
            self._drop("write_failed", lost, f"the journal write failed ({reason}) and "
                       f"{self.max_unwritten_bytes} bytes are already waiting")
        log.warning("prediction journal write failed (%s); %d record(s) kept in memory for "
                    "the next flush", reason, sum(b.records for b in kept))

    def _drop(self, reason: str, count: int, why: str) -> None:
        if count <= 0:
            return
        self.drops[reason] += count
        log.error("prediction log: %d record(s) dropped (%s): %s; %d dropped since start",
                  count, reason, why, self.dropped)

    def compact(self, *, pace: bool = False) -> int:
        """Turn sealed journal files into segments; returns the segments written.

        With a compactor (see :mod:`.compactor`) the work runs in its child process; when the
        child cannot run, here. ``pace``: the child spreads its work out unless the backlog
        is large (:class:`~.compactor.Pacer`); the background loop asks for it, an explicit
        call (shutdown, tests, tools) gets the work done at once.
        """
        with self._compact_lock:
            self.journal.rotate()
            compactor = self.compactor
            if compactor is not None and not self.journal.sealed():
                # Nothing to compact: the child is not started for nothing (at start-up it
                # would compete with loading the models for the first answer).
                return 0
            if compactor is not None:
                try:
                    return compactor.compact(self.journal.active_seq, self._count_torn,
                                             pace=pace)
                except CompactorUnavailable as exc:
                    if compactor.disabled:
                        self.compactor = None
                        log.warning("%s The log compacts in the serving process from now on.",
                                    exc)
                    else:
                        log.warning("%s Compacting in the serving process this time.", exc)
                finally:
                    self.journal.recount()
            return self.compact_files(self.journal.sealed(),
                                      self._thread_pacer() if pace else None)

    def _thread_pacer(self) -> Callable[[], None]:
        """Pacing for compaction in this process: the compacting thread's own CPU counts (the
        process's would count serving's), and it sleeps without the interpreter lock."""
        import time as clock

        from mlharbor.monitoring.compactor import Pacer, pace_below

        return Pacer(self.journal.bytes_on_disk, cpu=clock.thread_time,
                     below_bytes=pace_below(self.journal.max_bytes))

    def compact_files(self, paths: Sequence[Path],
                      pace: Callable[[], None] | None = None) -> int:
        """Turn these journal files into segments and remove them; returns segments written.
        A file gone meanwhile was compacted by another process (an orphaned compactor).

        Each file is read and written in pieces of at most :data:`PIECE_BYTES` of frames
        (see :mod:`.segmentwriter`), and ``pace`` (when given) is called before each piece
        but the first: a :class:`~.compactor.Pacer` sleeps there to spread the work out."""
        written = 0
        for number, path in enumerate(paths):
            try:
                segments, rows, torn_records, torn_frames = self._compact_file(
                    path, pace, paced_first=number > 0)
            except FileNotFoundError:
                continue
            written += segments
            self.journal.remove(path)
            # Counted once the file is gone: a store failure above retries the file later.
            if torn_records or torn_frames:
                self._count_torn(torn_records, torn_frames, path.name, rows)
        return written

    def _compact_file(self, path: Path, pace: Callable[[], None] | None, *,
                      paced_first: bool = False) -> tuple[int, int, int, int]:
        """One journal file as segments, all or nothing: every endpoint's segment is a draft
        until the file's last piece is written, and a failure discards them all (the file
        stays, to be compacted again). Returns (segments, rows, torn records, torn frames).

        A segment's schema is its first piece's; a later piece that does not fit it (a column
        all null so far that now holds text, an error column) starts the file over with the
        two schemas joined, up to :data:`SCHEMA_RESTARTS` times; past that, or when they do
        not join, the file is compacted whole (all of it in memory, as before pieces)."""
        from mlharbor.monitoring.segmentwriter import SchemaChanged, widened

        seq = self.journal.seq_of(path)
        schemas: dict[str, pa.Schema] = {}
        for _attempt in range(SCHEMA_RESTARTS + 1):
            try:
                return self._compact_pieces(path, seq, schemas, pace, paced_first)
            except SchemaChanged as exc:
                wider = (widened(exc.schema, exc.piece)
                         if exc.schema is not None and exc.piece is not None else None)
                if wider is None or exc.endpoint is None:
                    log.info("journal %s: %s; compacting it whole", path.name, exc)
                    break
                log.info("journal %s: %s; compacting it again with the columns joined",
                         path.name, exc)
                schemas[exc.endpoint] = wider
                paced_first = True
        contents = self.journal.contents(path)
        return (self._write_segments(contents.rows, seq), len(contents.rows),
                contents.torn_records, contents.torn_frames)

    def _compact_pieces(self, path: Path, seq: int, schemas: dict[str, pa.Schema],
                        pace: Callable[[], None] | None, paced_first: bool
                        ) -> tuple[int, int, int, int]:
        """:meth:`_compact_file`'s pass over the pieces, with ``schemas`` given per endpoint
        (others take their first piece's)."""
        from mlharbor.monitoring.segments import draft_segment
        from mlharbor.monitoring.segmentwriter import SchemaChanged, SegmentWriter

        writers: dict[str, SegmentWriter] = {}
        rows = torn_records = torn_frames = 0
        try:
            for number, piece in enumerate(self.journal.pieces(path, PIECE_BYTES)):
                if pace is not None and (number or paced_first):
                    pace()
                rows += len(piece.rows)
                torn_records += piece.torn_records
                torn_frames += piece.torn_frames
                for endpoint, table in _endpoint_tables(piece.rows):
                    writer = writers.get(endpoint)
                    if writer is None:
                        writer = writers[endpoint] = SegmentWriter(
                            draft_segment(self.segments, self.sealer),
                            schemas.get(endpoint, table.schema))
                    try:
                        writer.write(table)
                    except SchemaChanged as exc:
                        exc.endpoint = endpoint
                        raise
                del piece
            for endpoint, writer in writers.items():
                writer.publish(functools.partial(self._segment_name, endpoint, seq))
        except BaseException:
            for writer in writers.values():
                writer.discard()
            raise
        return len(writers), rows, torn_records, torn_frames

    def _segment_name(self, endpoint: str, seq: int, first: int, last: int) -> str:
        """Derived from the journal file, so a file compacted twice writes the same names."""
        name = f"endpoint={endpoint}/{first}-{last}-{self._slot}-{seq:010d}.parquet"
        return name + ".sealed" if self.sealer is not None else name

    def _count_torn(self, records: int, frames: int, where: str = "the journal",
                    kept: int | None = None) -> None:
        """Torn journal data skipped at compaction (here or in the compactor process)."""
        if frames:
            self.torn_frames += frames
            log.error("prediction log: %d damaged stretch(es) of %s skipped (record count "
                      "unknown)", frames, where)
        if records:
            rest = "" if kept is None else f"; its {kept} readable entries were stored"
            self._drop("torn", records, f"half-written frames in {where}{rest}")

    def _write_segments(self, items: list[dict[str, Any]], seq: int) -> int:
        """A journal file's entries as segments, whole (the file's entries all in memory)."""
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        written = 0
        for endpoint, table in _endpoint_tables(items):
            span = pc.min_max(table["at"])
            name = self._segment_name(endpoint, seq, span["min"].as_py(), span["max"].as_py())
            # Arrow's own growing buffer, handed over without a copy (a BytesIO grew by
            # reallocating and getvalue() copied the whole segment once more).
            sink = pa.BufferOutputStream()
            pq.write_table(table, sink, **WRITE_OPTIONS,
                           use_dictionary=dictionary_columns(table.schema))
            data: bytes | memoryview = memoryview(sink.getvalue())
            if self.sealer is not None:
                data = self.sealer.seal(bytes(data), name)
            self.segments.put(name, data)
            written += 1
        return written

    def _flush_loop(self) -> None:
        # A fifth of the interval, so a record is durable within one interval even when the
        # write or a busy machine delays a round or two.
        warm = self.compactor is not None
        while not self._stop.wait(self.flush_interval_s / 5):
            try:
                written = self.flush()
            except Exception:
                log.exception("prediction journal write failed")
                continue
            compactor = self.compactor
            if warm and written and compactor is not None:
                # The child will be needed for the first sealed file: start it now, while
                # serving is quiet, rather than under the load that fills that file.
                warm = False
                try:
                    compactor.start()
                except Exception:  # the first compaction tries again; journaling goes on
                    log.exception("the log compactor could not start")

    def _compact_loop(self) -> None:
        delay = 0.0  # the first round at once: it recovers what an earlier process left
        failing = False
        while not self._stop.wait(delay):
            try:
                self.compact(pace=True)
                delay = self.segment_interval_s
                if failing:
                    failing = False
                    log.warning("prediction log store is back; the journal is compacted")
                if self.retention is not None and time.monotonic() - self._retained_at > 3600:
                    self._retained_at = time.monotonic()
                    self.apply_retention(self.retention)
            except Exception as exc:  # store down: keep journaling, retry with backoff
                self.store_failures += 1
                failing = True
                delay = min(max(delay * 2, self.segment_interval_s), 60.0)
                log.warning("prediction log store failed (%s: %s); %d journal bytes wait; "
                            "retrying in %.1fs", type(exc).__name__, exc,
                            self.journal.backlog_bytes, delay)

    # -- reading -------------------------------------------------------------------------

    def backlog(self) -> dict[str, int]:
        return {"pending_records": len(self._pending),
                "unwritten_records": self.unwritten_records,
                "journal_bytes": self.journal.backlog_bytes, "dropped_records": self.dropped}

    def endpoints(self) -> list[str]:
        """Names of the endpoints the log holds predictions of (stored or served ad hoc)."""
        return sorted({name.split("/", 1)[0].removeprefix("endpoint=")
                       for name in self.segments.names() if name.startswith("endpoint=")})

    def segment_names(self, endpoint: str | None = None, start: datetime | None = None,
                      end: datetime | None = None) -> list[str]:
        lo = epoch_micros(start) if start else None
        hi = epoch_micros(end) if end else None
        out = []
        for name in self.segments.names(f"endpoint={endpoint}/" if endpoint else ""):
            first, last = _span(name)
            if (lo is None or last >= lo) and (hi is None or first < hi):
                out.append(name)
        return out

    def scan(self, endpoint: str | None = None, start: datetime | None = None,
             end: datetime | None = None, columns: Sequence[str] | None = None) -> pa.Table:
        """Rows logged in ``[start, end)``, reading only ``columns`` (all when None)."""
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        tables = []
        for name in self.segment_names(endpoint, start, end):
            data = self.segments.get(name)
            if self.sealer is not None and name.endswith(".sealed"):
                data = self.sealer.open(data, name)
            source = pa.BufferReader(data)
            wanted = None
            if columns is not None:
                names = set(pq.read_schema(source).names)
                wanted = [c for c in (*columns, "at") if c in names]
            tables.append(pq.read_table(pa.BufferReader(data), columns=wanted))
        if not tables:
            return pa.table({"at": pa.array([], pa.int64())})
        table = pa.concat_tables(tables, promote_options="permissive")
        mask = None
        if start is not None:
            mask = pc.greater_equal(table["at"], epoch_micros(start))
        if end is not None:
            upper = pc.less(table["at"], epoch_micros(end))
            mask = upper if mask is None else pc.and_(mask, upper)
        return table if mask is None else table.filter(mask)

    def apply_retention(self, max_age: timedelta, now: datetime | None = None) -> int:
        """Delete segments whose newest row is older than ``max_age``; returns how many."""
        cutoff = epoch_micros((now or utcnow()) - max_age)
        old = [n for n in self.segments.names() if _span(n)[1] < cutoff]
        for name in old:
            self.segments.delete(name)
        return len(old)


def entries_table(entries: list[dict[str, Any]]) -> pa.Table:
    """A table from format-2 journal entries: rows expanded column by column."""
    import pyarrow as pa

    if any("block" in e for e in entries):
        if all("block" in e for e in entries):
            table = blocks_table(entries)
            if table is not None:
                return table
        entries = list(chain.from_iterable(
            block_entries(e) if "block" in e else [e] for e in entries))
    matrices = [e for e in entries if "x" in e]
    if matrices and len(matrices) == len(entries) and not any("er" in e for e in entries):
        table = matrix_table(entries)
        if table is not None:
            return table
    for entry in matrices:
        matrix_to_cols(entry)
    return pa.table({name: column_array(values)
                     for name, values in entries_columns(entries).items()})


def rows_table(rows: list[dict[str, Any]]) -> pa.Table:
    """A table from log rows; a column whose values mix types is stored as text."""
    import pyarrow as pa

    keys: dict[str, None] = {}
    for row in rows:
        keys.update(dict.fromkeys(row))
    arrays = {}
    for key in keys:
        values = [row.get(key) for row in rows]
        try:
            arrays[key] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            arrays[key] = pa.array([None if v is None else str(v) for v in values], pa.string())
    return pa.table(arrays)


def _endpoint_tables(items: list[dict[str, Any]]) -> Iterator[tuple[str, pa.Table]]:
    """Journal entries as one table per endpoint, in the order endpoints first appear.

    Format-2 entries (one per record, ``"v": 2``) and, from journals an older version left
    behind, format-1 rows (one per row, never a ``"v"`` key: inputs are ``in.*``)."""
    import pyarrow as pa

    entries: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    legacy: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for item in items:
        if item.get("v") == ENTRY_FORMAT:
            entries[str(item.get("ep"))].append(item)
        else:
            legacy[str(item.get("endpoint"))].append(item)
    for endpoint in dict.fromkeys([*entries, *legacy]):
        tables = []
        if endpoint in entries:
            tables.append(entries_table(entries.pop(endpoint)))
        if endpoint in legacy:
            tables.append(rows_table(legacy.pop(endpoint)))
        yield endpoint, (tables[0] if len(tables) == 1 else pa.concat_tables(
            tables, promote_options="permissive"))


def _writer_name(journal_dir: Path) -> str:
    """A random id made once per journal folder and kept in it (``.writer``): whoever
    recovers the folder after a crash, on whatever host, rewrites the same segment names."""
    import os

    path = journal_dir / ".writer"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    temporary = journal_dir / f".writer.{os.getpid()}"
    temporary.write_text(os.urandom(8).hex())
    try:
        os.link(temporary, path)  # the first one made wins; a racing one reads it
    except FileExistsError:
        pass
    finally:
        temporary.unlink()
    return path.read_text().strip()



def _span(name: str) -> tuple[int, int]:
    first, last, _rest = name.rsplit("/", 1)[-1].split("-", 2)
    return int(first), int(last)


class _Batch:
    """The frames of one flush and how many records they hold (kept when a write fails)."""

    __slots__ = ("frames", "records", "size")

    def __init__(self, frames: list[Frame], records: int) -> None:
        self.frames = frames
        self.records = records
        self.size = sum(payload_size(p) for p, _n in frames)


class _LogMetrics:
    """Backlog and drops as Prometheus metrics, read when scraped (no cost per record)."""

    def __init__(self, owner: PredictionLog, registry: Any) -> None:
        from prometheus_client import Gauge

        backlog = Gauge("mlharbor_prediction_log_backlog_bytes",
                        "Journal bytes not yet stored as log segments.", registry=registry)
        backlog.set_function(lambda: owner.journal.backlog_bytes)
        pending = Gauge("mlharbor_prediction_log_pending_records",
                        "Records accepted but not yet journaled.", registry=registry)
        pending.set_function(lambda: len(owner._pending))
        unwritten = Gauge("mlharbor_prediction_log_unwritten_records",
                          "Records whose journal write failed, kept in memory for the next "
                          "flush.", registry=registry)
        unwritten.set_function(lambda: owner.unwritten_records)
        dropped = Gauge("mlharbor_prediction_log_dropped_records",
                        "Records accepted but never stored, by reason (since start).",
                        ["reason"], registry=registry)
        for reason in DROP_REASONS:
            dropped.labels(reason).set_function(functools.partial(owner.drops.__getitem__,
                                                                  reason))
        torn = Gauge("mlharbor_prediction_log_torn_frames",
                     "Damaged journal stretches skipped whose record count is unknown.",
                     registry=registry)
        torn.set_function(lambda: owner.torn_frames)
        failures = Gauge("mlharbor_prediction_log_store_failures",
                         "Compaction rounds that failed because the store was down.",
                         registry=registry)
        failures.set_function(lambda: owner.store_failures)


def _dumps_leniently(entry: Any) -> bytes:
    """JSON for an entry orjson refused: numbers it cannot hold become strings."""
    import json

    import numpy as np

    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {str(k): clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [clean(v) for v in value]
        if isinstance(value, np.ndarray):
            return clean(value.tolist())
        if isinstance(value, int) and not -(2**63) <= value < 2**64:
            return str(value)
        if isinstance(value, np.generic):
            return value.item()
        return value

    return json.dumps(clean(entry), default=str).encode()
