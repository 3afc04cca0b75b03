"""One part of a batch-scoring job, scored where the engine runs it: read, validate, predict,
write, in record batches of bounded size.

:class:`PartScorer` is the task function the compute engine maps over the parts (picklable: a
Dask worker receives it once and loads the model once). Every batch goes through the same
:class:`~mlharbor.formats.predictor.Predictor` serving uses, so the signature's validation and
the model's own ``predict`` decide every answer. A batch the signature refuses is split in
halves until the refused rows stand alone; they go to the part's errors file (row, column,
reason) or stop the job (``on_error="stop"``), never silently dropped.

Files are written under a temporary dot-name, fsync'd and renamed, so a part's output exists
whole or not at all (readers of the folder, Arrow's and Spark's, skip dot- and
underscore-names):

    OUTPUT/part-00003.parquet     id column, prediction, probability_<class>..., model_version
    OUTPUT/_errors/part-00003.csv file, row, id, column, reason       (only if a row was refused)
    OUTPUT/_log/part-00003.parquet  the scored rows' inputs, for --log (removed once logged)
"""

from __future__ import annotations

import contextlib
import csv
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlharbor.core.errors import SchemaError
from mlharbor.pipelines.batcharrays import (
    column_values,
    constant_text,
    input_matrix,
    inputs_table,
    tensor_dtype,
    to_arrow,
)
from mlharbor.pipelines.batchinputs import InputPart, Storage, read_batches
from mlharbor.pipelines.batchmemory import (
    CSV_MIN_BLOCK,
    MIN_BATCH_ROWS,
    PROBE_ROWS,
    Sizing,
    size_batches,
    use_returning_pool,
)

if TYPE_CHECKING:
    import pyarrow as pa

    from mlharbor.core.signature import ColumnSpec
    from mlharbor.formats.predictor import Outputs, Predictor

ERRORS_DIR = "_errors"
LOG_DIR = "_log"
ERROR_FIELDS = ("file", "row", "id", "column", "reason")


class BadRowError(SchemaError):
    """A row the signature refuses, with ``on_error="stop"``: the job stops on it."""

    code = "bad_row"


@dataclass(frozen=True, slots=True)
class PartResult:
    """What scoring one part did (sent back from the worker; small)."""

    index: int
    rows: int
    scored: int
    errors: int
    output: str | None
    errors_file: str | None
    log_file: str | None


def part_name(index: int) -> str:
    return f"part-{index:05d}"


@dataclass(frozen=True)
class ModelSource:
    """A verified bundle to load: a local folder (local engine) or its files' bytes (shipped
    once to each Dask worker), with the registry's manifest every byte is checked against."""

    ref: str
    manifest: dict[str, Any]
    trusted_types: tuple[str, ...]
    root: str | None = None
    files: dict[str, bytes] | None = None

    def load(self) -> Predictor:
        from mlharbor.formats.base import TrustOptions
        from mlharbor.formats.predictor import load_bundle

        trust = TrustOptions(skops_trusted_types=self.trusted_types)
        if self.root is not None:
            return load_bundle(Path(self.root), expected_manifest=self.manifest, trust=trust)
        folder = Path(tempfile.mkdtemp(prefix="mlharbor-bundle-"))
        try:
            for name, blob in (self.files or {}).items():
                target = folder / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(blob)
            return load_bundle(folder, expected_manifest=self.manifest, trust=trust)
        finally:  # the runtime is built from the verified bytes; the copy is not needed after
            shutil.rmtree(folder, ignore_errors=True)


@dataclass
class PartScorer:
    """Scores one :class:`InputPart` per call (the engine's task function)."""

    model: ModelSource
    storage: Storage
    output: str
    id_column: str | None
    on_error: str  # "stop" | "file"
    batch_rows: int
    log_inputs: bool = False
    memory_budget: int | None = None  # peak RSS of the scoring process (see batchmemory)
    slots: int = 1  # parts scored at once in one process (its threads)
    # Local engine only (never pickled): called with the rows of each batch as it is done.
    progress: Callable[[int], None] | None = field(default=None, repr=False)
    _predictor: Any = field(default=None, repr=False)
    _sizing: Sizing | None = field(default=None, repr=False)  # measured in this process
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.update(progress=None, _predictor=None, _sizing=None, _lock=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _lock=threading.Lock())

    def predictor(self) -> Predictor:
        """The model, loaded once per process (threads share it; ONNX Runtime and scikit-learn
        predict are thread-safe)."""
        with self._lock:
            return self.predictor_unlocked()

    def predictor_unlocked(self) -> Predictor:
        if self._predictor is None:
            self._predictor = self.model.load()
        return self._predictor  # type: ignore[no-any-return]

    def size_batches(self, part: InputPart) -> Sizing | None:
        """Under a memory budget, measure this process with the model loaded and a probe of
        ``part`` scored in memory, and size the batches (once per process; see
        :mod:`~mlharbor.pipelines.batchmemory`). Raises when the budget is too small."""
        if self.memory_budget is None:
            return None
        with self._lock:
            if self._sizing is not None:
                return self._sizing
            import pyarrow as pa
            import pyarrow.parquet as pq

            from mlharbor.serving.memory import release_free_memory, resident_bytes

            use_returning_pool()
            predictor = self.predictor_unlocked()
            specs, read, text = self._columns(predictor, part)
            pool = pa.default_memory_pool()
            reader_bytes, row_bytes = 0, part.row_bytes
            batches = read_batches(self.storage, part, read, text, PROBE_ROWS,
                                   csv_block=CSV_MIN_BLOCK)
            for batch in batches:
                reader_bytes = max(0, pool.bytes_allocated() - batch.nbytes)
                row_bytes = max(row_bytes, batch.nbytes / max(1, batch.num_rows))
                data = {s.name: column_values(batch.column(s.name), s) for s in specs}
                ids = None if not self.id_column else batch.column(self.id_column)
                kept, outputs, _ = self._score(predictor, data, batch.num_rows,
                                               tensor_dtype(predictor))
                if kept is not None and len(kept):
                    pq.write_table(self._table(predictor, outputs, ids, kept),
                                   pa.BufferOutputStream())
                del batch, data, ids, kept, outputs
                break
            del batches
            pool.release_unused()
            release_free_memory()
            floor = resident_bytes() or 0
            self._sizing = size_batches(self.memory_budget, floor=floor,
                                        reader_bytes=reader_bytes, row_bytes=row_bytes,
                                        slots=self.slots, csv=part.file.format == "csv")
            self.batch_rows = self._sizing.batch_rows
            return self._sizing

    def _columns(self, predictor: Predictor, part: InputPart
                 ) -> tuple[tuple[ColumnSpec, ...], list[str], list[str]]:
        """The signature's columns, the columns to read (the id column too), and those read as
        text (CSV)."""
        specs = tuple(predictor.signature.inputs)
        names = [s.name for s in specs]
        read = names + ([self.id_column] if self.id_column and self.id_column not in names
                        else [])
        return specs, read, names if part.file.format == "csv" else []

    def _keep_under_budget(self) -> None:
        """Past the high-water mark: give the pool's free memory back, and halve the next
        part's batches."""
        sizing = self._sizing
        if sizing is None:
            return
        from mlharbor.serving.memory import resident_bytes

        if (resident_bytes() or 0) > sizing.high_water:
            import pyarrow as pa

            pa.default_memory_pool().release_unused()
            self.batch_rows = max(MIN_BATCH_ROWS, self.batch_rows // 2)

    def __call__(self, part: InputPart) -> PartResult:
        self.size_batches(part)
        predictor = self.predictor()
        specs, read, text = self._columns(predictor, part)
        names = [s.name for s in specs]
        tensor = tensor_dtype(predictor)
        name = part_name(part.index)
        out = _AtomicParquet(Path(self.output) / f"{name}.parquet")
        log = _AtomicParquet(Path(self.output) / LOG_DIR / f"{name}.parquet") \
            if self.log_inputs else None
        errors: list[dict[str, Any]] = []
        rows = scored = 0
        try:
            block = None if self._sizing is None else self._sizing.csv_block
            for batch in read_batches(self.storage, part, read, text, self.batch_rows,
                                      csv_block=block):
                first = part.first_row + rows
                data = {s.name: column_values(batch.column(s.name), s) for s in specs}
                ids = None if not self.id_column else batch.column(self.id_column)
                kept, outputs, bad = self._score(predictor, data, batch.num_rows, tensor)
                for row, exc in bad:
                    record = _error_row(part, first + row, ids, row, exc)
                    if self.on_error == "stop":
                        raise BadRowError(
                            f"row {record['row']} of {part.file.uri} was refused: "
                            f"{record['reason']}", hint="Fix the row, or pass --on-error file "
                            "to write refused rows to an errors file and score the rest.",
                            row=record["row"], file=part.file.uri) from exc
                    errors.append(record)
                if kept is not None and len(kept):
                    out.write(self._table(predictor, outputs, ids, kept))
                    if log is not None:
                        log.write(inputs_table(data, names, kept))
                rows += batch.num_rows
                scored += 0 if kept is None else len(kept)
                if self.progress is not None:
                    self.progress(batch.num_rows)
                self._keep_under_budget()
            output = out.commit()
            log_file = log.commit() if log is not None else None
            errors_file = _write_errors(Path(self.output), name, errors) if errors else None
        finally:
            out.discard()
            if log is not None:
                log.discard()
        return PartResult(part.index, rows, scored, len(errors), output, errors_file, log_file)

    def _score(self, predictor: Predictor, data: dict[str, np.ndarray], n: int,
               tensor: Any = None
               ) -> tuple[np.ndarray | None, Outputs | None, list[tuple[int, SchemaError]]]:
        """(indices of the rows answered, their outputs, refused rows with the error). The
        whole batch in one call unless the signature refuses some row; then halves, left
        first, so refused rows come out in order (the halves go through the column path, so
        a refused row's reason is the one serving gives for that value).

        ``tensor``: the dtype of a model fed one 2-D tensor (ONNX, float columns): the batch's
        columns are written straight into that matrix, which the validator then only checks
        for finiteness (what it checks float columns for anyway), instead of coercing each
        column, stacking them in float64 and casting the stack."""
        try:
            matrix = None if tensor is None else input_matrix(data, tensor)
            return np.arange(n), predictor.outputs(data if matrix is None else matrix), []
        except SchemaError:
            if n == 0:
                raise
        from mlharbor.formats.predictor import Outputs

        good: list[tuple[int, int, Outputs]] = []
        bad: list[tuple[int, SchemaError]] = []
        stack = [(n // 2, n), (0, n // 2)]
        while stack:
            lo, hi = stack.pop()
            if lo == hi:
                continue
            try:
                good.append((lo, hi, predictor.outputs({k: v[lo:hi] for k, v in data.items()})))
            except SchemaError as exc:
                if hi - lo == 1:
                    bad.append((lo, exc))
                    if self.on_error == "stop":
                        break
                else:
                    mid = (lo + hi) // 2
                    stack += [(mid, hi), (lo, mid)]
        if not good:
            return None, None, bad
        kept = np.concatenate([np.arange(lo, hi) for lo, hi, _ in good])
        probas = [o.probabilities for _, _, o in good]
        outputs = Outputs(np.concatenate([o.predictions for _, _, o in good]),
                          None if probas[0] is None else np.concatenate(probas))  # type: ignore[arg-type]
        return kept, outputs, bad

    def _table(self, predictor: Predictor, outputs: Any, ids: Any, kept: np.ndarray
               ) -> pa.Table:
        import pyarrow as pa

        n = len(kept)
        columns: dict[str, Any] = {}
        if ids is not None:
            columns[str(self.id_column)] = ids if n == len(ids) else ids.take(to_arrow(kept))
        columns["prediction"] = to_arrow(outputs.predictions)
        if outputs.probabilities is not None:
            for i, label in enumerate(predictor.classes or range(outputs.probabilities.shape[1])):
                columns[f"probability_{label}"] = to_arrow(outputs.probabilities[:, i])
        columns["model_version"] = constant_text(self.model.ref, n)
        return pa.table(columns)


def _error_row(part: InputPart, row: int, ids: Any, at: int, exc: SchemaError) -> dict[str, Any]:
    reason = " ".join(str(exc).replace(" at row 0", "").split())
    return {"file": part.file.name, "row": row,
            "id": "" if ids is None else ids[at].as_py(),
            "column": exc.details.get("column", ""), "reason": reason}


def _write_errors(output: Path, name: str, errors: list[dict[str, Any]]) -> str:
    folder = output / ERRORS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{name}.csv"
    tmp = folder / f".{name}.{uuid.uuid4().hex}.tmp"
    with tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=ERROR_FIELDS)
        writer.writeheader()
        writer.writerows(errors)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(target)
    return str(target.relative_to(output))


class _AtomicParquet:
    """A Parquet file written under a temporary dot-name and renamed into place on commit."""

    def __init__(self, target: Path) -> None:
        self.target = target
        self.tmp = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
        self._writer: Any = None

    def write(self, table: pa.Table) -> None:
        import pyarrow.parquet as pq

        if self._writer is None:
            self.tmp.parent.mkdir(parents=True, exist_ok=True)
            self._writer = pq.ParquetWriter(str(self.tmp), table.schema)
        self._writer.write_table(table)

    def commit(self) -> str | None:
        """Rename into place; None when nothing was written (no row scored)."""
        if self._writer is None:
            return None
        self._writer.close()
        self._writer = None
        with self.tmp.open("rb") as handle:
            os.fsync(handle.fileno())
        self.tmp.replace(self.target)
        return self.target.name if self.target.parent.name not in (LOG_DIR,) else \
            f"{LOG_DIR}/{self.target.name}"

    def discard(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
            self._writer = None
        self.tmp.unlink(missing_ok=True)


def iter_log_batches(output: Path, log_file: str, result_file: str, rows: int
                     ) -> Iterator[tuple[pa.RecordBatch, pa.RecordBatch]]:
    """(inputs, outputs) record batches of a logged part, aligned row for row."""
    import pyarrow.parquet as pq

    inputs = pq.ParquetFile(str(output / log_file)).iter_batches(batch_size=rows)
    outputs = pq.ParquetFile(str(output / result_file)).iter_batches(batch_size=rows)
    yield from zip(inputs, outputs, strict=True)
