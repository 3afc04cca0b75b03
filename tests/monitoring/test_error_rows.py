"""Records of copies that failed (``error`` set) through the prediction log: the JSON path,
next to binary frames in one journal; the ``error`` column beside segments written before it;
readers of answers leave them out."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mlharbor.core.clock import epoch_micros
from mlharbor.core.records import PredictionRecord
from mlharbor.monitoring.logframes import split_records
from mlharbor.monitoring.logrows import answers, record_entry, record_rows
from mlharbor.monitoring.predlog import PredictionLog, rows_table
from mlharbor.monitoring.segments import LocalSegments
from mlharbor.monitoring.traffic import error_rate, first_rows
from mlharbor.pipelines.rolloutsignals import LogSignals
from mlharbor.serving.model import Outputs, numeric_matrix

AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
NAMES = ("a", "b")


def answered(i: int, *, shadow: bool = False, rows: int = 2) -> PredictionRecord:
    data = [{"a": float(i + r), "b": 1.0} for r in range(rows)]
    return PredictionRecord(
        f"r{i:03d}", "churn", "churn:2" if shadow else "churn@champion", 2 if shadow else 1,
        data, Outputs(np.arange(rows) % 2, None), 0.001, AT + timedelta(milliseconds=i),
        shadow=shadow, matrix=numeric_matrix(data, NAMES), columns=NAMES)


def failed(i: int) -> PredictionRecord:
    return PredictionRecord(f"r{i:03d}", "churn", "churn:2", 2, None, None, 0.002,
                            AT + timedelta(milliseconds=i), shadow=True, error="ValueError")


def logged(tmp_path: Path, records: list[PredictionRecord]) -> PredictionLog:
    log = PredictionLog(tmp_path / "journal", LocalSegments(tmp_path / "seg"))
    for record in records:
        log.emit(record)
    log.flush()
    log.compact()
    return log


def test_a_failed_record_takes_the_json_path_and_keeps_its_error() -> None:
    binary, other = split_records([answered(0), failed(0)], None)
    assert [r.error for r in binary] == [None] and [r.error for r in other] == ["ValueError"]
    entry = record_entry(failed(0))
    assert entry["er"] == "ValueError" and entry["pred"] == [] and entry["in"] is None
    (row,) = record_rows(failed(0))
    assert row["error"] == "ValueError" and row["prediction"] is None and row["row"] == 0
    assert "error" not in record_rows(answered(0))[0]


def test_binary_frames_and_failed_copies_in_one_journal(tmp_path: Path) -> None:
    records = [answered(0), answered(0, shadow=True), answered(1), failed(1), answered(2),
               failed(2)]
    table = logged(tmp_path, records).scan("churn").sort_by(
        [("request_id", "ascending"), ("shadow", "ascending"), ("row", "ascending")])
    assert table.schema.field("error").type == pa.string()
    rows = table.to_pylist()
    errors = [(r["request_id"], r["shadow"], r["row"], r["error"]) for r in rows]
    assert [e for e in errors if e[3] is not None] == [("r001", True, 0, "ValueError"),
                                                      ("r002", True, 0, "ValueError")]
    assert len(rows) == 4 * 2 + 2  # four answered records of two rows, two failed copies
    # The answered rows are what the log held before failed copies existed.
    alone = logged(tmp_path / "alone", [r for r in records if r.error is None]).scan("churn")
    assert "error" not in alone.column_names
    kept = answers(table)
    assert "error" not in kept.column_names
    assert sorted(map(str, kept.to_pylist())) == sorted(
        map(str, alone.select(kept.column_names).to_pylist()))
    # The general (row) path types the column the same way.
    assert rows_table(record_rows(failed(3))).schema.field("error").type == pa.string()


def _old_segment(log: PredictionLog, records: list[PredictionRecord]) -> None:
    """A segment in the schema written before the ``error`` column existed."""
    rows = [row for record in records for row in record_rows(record)]
    for row in rows:
        assert "error" not in row
    table = rows_table(rows)
    sink = io.BytesIO()
    pq.write_table(table, sink)
    first, last = epoch_micros(records[0].at), epoch_micros(records[-1].at)
    log.segments.put(f"endpoint=churn/{first}-{last}-old-0000000001.parquet",
                     sink.getvalue())


def test_segments_written_before_the_error_column_still_read(tmp_path: Path) -> None:
    log = logged(tmp_path, [answered(10), failed(10), answered(11, shadow=False)])
    _old_segment(log, [answered(0), answered(0, shadow=True), answered(1),
                       answered(1, shadow=True)])
    table = log.scan("churn", columns=["request_id", "shadow", "error"])
    old = [r for r in table.to_pylist() if r["request_id"] in ("r000", "r001")]
    assert len(old) == 8 and all(r["error"] is None for r in old)
    only_old = log.scan("churn", AT, AT + timedelta(milliseconds=5))
    assert "error" not in only_old.column_names and answers(only_old) is only_old
    stats = LogSignals(log).shadow("churn", AT, AT + timedelta(seconds=1), 2)
    assert (stats.shadow_requests, stats.shadow_errors) == (2, 1)
    assert stats.primary_requests == 4  # r000, r001 (old segment), r010, r011
    copies = first_rows(log.scan("churn", columns=["row", "shadow", "error", "fallback"]),
                        shadow=True)
    assert error_rate(copies) == 1 / 3
