"""The memory budget of a batch-scoring process: what it covers, how batches are sized to it,
and how the process keeps to it.

**What it covers.** ``--memory-budget`` is the peak resident memory (RSS) of the process that
scores: ``mlharbor predict`` itself with the local engine (what ``/usr/bin/time -v``, ``ps`` or a
container's memory limit see), each worker process with the Dask engine. Everything counts: the
interpreter and its libraries, the loaded model, the reader's pages, every batch in flight, the
output writer. It is not "data above a baseline": a user who sets 500MB expects the process to
stay under 500MB.

**How it holds.**

1. Arrow allocates from a pool that hands freed memory back at once (jemalloc with a decay of 0,
   else the system allocator). Arrow's default, mimalloc, keeps freed pages resident: reading a
   few row groups left it holding several times what was in use.
2. Parquet is read through a small buffered stream per column with pre-buffering off, so a row
   group is never read whole: the reader holds about one page per column (see
   :mod:`~mlharbor.pipelines.batchinputs`).
3. A probe: before the first part, a few of its rows are read, validated, scored and encoded in
   memory (nothing is written). That imports and allocates everything a batch needs. Then the
   heap is trimmed and RSS measured: the *floor*. The Arrow pool's bytes while the probe's
   reader is open, less the batch, are the reader's pages: the *reader cost* of a batch slot.
4. Rows per batch: ``((budget - margin - floor) / slots - reader) / (COPIES * row_bytes)``,
   at most :data:`DEFAULT_BATCH_ROWS`. ``row_bytes`` is the larger of the plan's estimate and the
   probe's decoded bytes per row (a dictionary-encoded column decodes far larger than it is
   stored). A budget that leaves fewer than :data:`MIN_BATCH_ROWS` rows per batch is refused
   with the smallest budget that works.
5. While scoring, RSS is read after every batch; past the high-water mark (``budget -
   margin / 2``) the pool releases what it keeps and the next part's batches are half as big.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlharbor.core.errors import InvalidInputError

DEFAULT_BATCH_ROWS = 65_536
MIN_BATCH_ROWS = 256
PROBE_ROWS = 512
# Bytes held per decoded input byte while a batch is scored: the Arrow batch, the NumPy columns
# (a copy when a column has nulls or is converted from text), the model's input matrix, the
# validator's finiteness mask, the outputs and their encoded Parquet row group. Measured at
# about 2.5 on the bench forest; 4 leaves room for the allocator's rounding.
COPIES = 4.0
MARGIN_BYTES = 16 << 20  # plus MARGIN_SHARE of the budget: pages the heap has not trimmed yet
MARGIN_SHARE = 0.03
READ_BUFFER = 128 << 10  # bytes read at a time per Parquet column (the buffered stream)
# Arrow's streaming CSV reader reads up to 32 blocks ahead on a background thread; measured
# here, its resident memory grows by about 12 MiB plus 45 times the block size.
CSV_READER_BYTES = 16 << 20
CSV_READAHEAD = 48
CSV_MIN_BLOCK = 64 << 10
CSV_MAX_BLOCK = 4 << 20  # also without a budget: 32 blocks of 64 MB would be gigabytes


@dataclass(frozen=True, slots=True)
class Sizing:
    """What the probe measured in the scoring process, and the batch size it gives."""

    budget: int
    floor: int  # RSS after the probe, heap trimmed
    reader_bytes: int  # what the reader holds while a part is open (pages, CSV read-ahead)
    row_bytes: float  # decoded input bytes per row
    slots: int  # batches in flight in this process (threads)
    batch_rows: int
    csv_block: int | None = None  # CSV block size (bytes) that keeps the read-ahead in budget

    @property
    def high_water(self) -> int:
        return self.budget - margin(self.budget) // 2


def margin(budget: int) -> int:
    return MARGIN_BYTES + int(budget * MARGIN_SHARE)


def use_returning_pool() -> str:
    """Make Arrow allocate from a pool that returns freed memory to the system at once; the
    backend's name. Buffers already allocated keep their own pool."""
    import pyarrow as pa

    try:
        pool = pa.jemalloc_memory_pool()
        pa.jemalloc_set_decay_ms(0)
    except NotImplementedError:  # a pyarrow built without jemalloc
        pool = pa.system_memory_pool()
    pa.set_memory_pool(pool)
    return str(pool.backend_name)


def size_batches(budget: int, *, floor: int, reader_bytes: int, row_bytes: float,
                 slots: int, csv: bool = False) -> Sizing:
    """Rows per batch that keep ``slots`` batches in flight under ``budget``; a budget that
    cannot hold :data:`MIN_BATCH_ROWS` rows per batch raises :class:`InvalidInputError` naming
    the smallest budget that can (found with this same rule). ``csv``: the reader is Arrow's
    streaming CSV reader, whose read-ahead is sized here too (blocks of up to half of what a
    slot has left, over the blocks it reads ahead)."""
    row_bytes, slots = max(1.0, row_bytes), max(1, slots)
    sizing = _plan(budget, floor, reader_bytes, row_bytes, slots, csv)
    if sizing is not None:
        return sizing
    low, high = budget, max(budget, floor) + (1 << 20)
    while _plan(high, floor, reader_bytes, row_bytes, slots, csv) is None:
        low, high = high, high * 2
    while high - low > (1 << 20):  # the smallest that works, to a MiB
        mid = (low + high) // 2
        low, high = (low, mid) if _plan(mid, floor, reader_bytes, row_bytes, slots,
                                        csv) else (mid, high)
    reader = _reader_bytes(budget, floor, reader_bytes, slots, csv)[0]
    raise InvalidInputError(
        f"--memory-budget {_mb(budget)} cannot hold the model and one batch: this process "
        f"already holds {_mb(floor)} with the model loaded, and each of its {slots} "
        f"batch(es) in flight needs {_mb(reader)} for its reader plus "
        f"{COPIES * row_bytes:,.0f} bytes per row (at least {MIN_BATCH_ROWS} rows)",
        hint=f"Give --memory-budget {_mb(high, up=True)} or more"
        + (" (or fewer --workers)." if slots > 1 else "."),
        field="memory_budget", budget=budget, floor=floor, needed=high)


def _reader_bytes(budget: int, floor: int, measured: int, slots: int, csv: bool
                  ) -> tuple[int, int | None]:
    """(bytes a slot's reader holds, the CSV block size) under ``budget``."""
    if not csv:
        return measured, None
    room = (budget - margin(budget) - floor) / slots - CSV_READER_BYTES
    block = int(min(CSV_MAX_BLOCK, max(CSV_MIN_BLOCK, room / (2 * CSV_READAHEAD))))
    return max(measured, CSV_READER_BYTES + CSV_READAHEAD * block), block


def _plan(budget: int, floor: int, measured: int, row_bytes: float, slots: int, csv: bool
          ) -> Sizing | None:
    reader, block = _reader_bytes(budget, floor, measured, slots, csv)
    per_slot = (budget - margin(budget) - floor) / slots - reader
    rows = int(per_slot / (COPIES * row_bytes))
    if rows < MIN_BATCH_ROWS:
        return None
    return Sizing(budget, floor, reader, row_bytes, slots, min(DEFAULT_BATCH_ROWS, rows),
                  block)


def _mb(value: float, *, up: bool = False) -> str:
    mib = value / (1 << 20)
    return f"{int(mib) + (1 if up and mib != int(mib) else 0)}MiB" if up else f"{mib:,.0f}MiB"
