"""The journal writes a payload given in parts (a binary frame's header and arrays) exactly as
it writes the joined bytes, and reads files back through a mapping whose arrays stay valid
after the file is gone."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from mlharbor.core.records import PredictionRecord
from mlharbor.monitoring.journal import Journal, frame_bytes, frame_parts
from mlharbor.monitoring.logframes import encode, encode_parts
from mlharbor.monitoring.predlog import PredictionLog
from mlharbor.monitoring.segments import LocalSegments
from mlharbor.serving.model import Outputs

COLUMNS = ("a", "b", "c")


def record(i: int, rows: int) -> PredictionRecord:
    matrix = np.arange(rows * 3, dtype=np.float64).reshape(rows, 3) + i
    return PredictionRecord(
        f"r{i:04d}", "churn", "churn@champion", 1, None,
        Outputs(np.arange(rows) % 2, np.full((rows, 2), 0.5)), 0.001,
        datetime(2026, 1, 1, tzinfo=UTC), matrix=matrix, columns=COLUMNS)


def test_a_payload_in_parts_is_the_frame_of_its_joined_bytes() -> None:
    records = [record(i, n) for i, n in enumerate((1, 64, 0, 7))]
    parts = encode_parts(records)
    assert len(parts) > 2  # the header and the arrays, not one joined buffer
    assert b"".join(parts) == encode(records)
    whole = frame_bytes(encode(records), len(records))
    assert frame_bytes(parts, len(records)) == whole
    buffers, size = frame_parts(parts, len(records))
    assert size == len(whole) == sum(memoryview(b).nbytes for b in buffers)


def test_frames_in_parts_and_in_bytes_read_back_alike(tmp_path: Path) -> None:
    records = [record(i, n) for i, n in enumerate((3, 64, 1))]
    journal = Journal(tmp_path / "j", max_bytes=1 << 30)
    assert journal.append_frames([(encode_parts(records[:2]), 2), (encode(records[2:]), 1),
                                  (b'{"v": 2, "ep": "churn"}', 1)])
    journal.rotate()
    (path,) = journal.sealed()
    items = journal.contents(path).rows
    assert [len(item["block"]["n"]) for item in items[:2]] == [2, 1]
    assert items[2] == {"v": 2, "ep": "churn"}
    assert np.array_equal(items[0]["block"]["m"][:, :3], records[0].matrix.T)


def test_mapped_arrays_outlive_the_journal_file(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j", max_bytes=1 << 30)
    rec = record(5, 64)
    assert journal.append_frames([(encode_parts([rec]), 1)])
    journal.rotate()
    (path,) = journal.sealed()
    items = journal.contents(path).rows
    journal.remove(path)
    assert not path.exists()
    assert np.array_equal(items[0]["block"]["m"], rec.matrix.T)


def test_an_empty_journal_file_holds_nothing(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j", max_bytes=1 << 30)
    empty = tmp_path / "j" / "journal-0000000001.log"
    empty.touch()
    contents = journal.contents(empty)
    assert contents.rows == [] and contents.torn_records == contents.torn_frames == 0


def test_parts_through_the_log_store_every_row(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path / "journal", LocalSegments(tmp_path / "segments"))
    records = [record(i, n) for i, n in enumerate((64, 1, 5))]
    for r in records:
        log.emit(r)
    assert log.flush() == 3
    assert log.pending_bytes == 0
    log.compact()
    table = log.scan("churn").sort_by([("request_id", "ascending"), ("row", "ascending")])
    assert table.num_rows == 70
    expected = np.concatenate([r.matrix[:, 1] for r in records])
    assert np.array_equal(table["in.b"].to_numpy(), expected)
    plain = [dataclasses.replace(r, matrix=None, columns=None, inputs=[
        dict(zip(COLUMNS, row, strict=True)) for row in r.matrix.tolist()]) for r in records]
    other = PredictionLog(tmp_path / "journal2", LocalSegments(tmp_path / "segments2"))
    for r in plain:
        other.emit(r)
    other.close()
    json_table = other.scan("churn").sort_by([("request_id", "ascending"),
                                               ("row", "ascending")])
    assert json_table["in.b"].to_pylist() == table["in.b"].to_pylist()
    log.close()


def test_the_log_keeps_no_parsed_inputs_for_records_its_matrix_carries(tmp_path: Path) -> None:
    from mlharbor.monitoring.logrows import Redaction

    rows = [dict(zip(COLUMNS, row, strict=True)) for row in record(0, 4).matrix.tolist()]
    binary = dataclasses.replace(record(1, 4), inputs=rows)
    log = PredictionLog(tmp_path / "journal", LocalSegments(tmp_path / "segments"),
                        redaction=Redaction({"other": {"a": "drop"}}))
    log.emit(binary)
    log.emit(dataclasses.replace(binary, request_id="r-other", endpoint="other"))
    kept = [r for r, _size in log._pending]
    assert kept[0].inputs is None and kept[0].matrix is binary.matrix
    assert kept[1].inputs is rows  # a redacted endpoint needs the values as received
    assert log.pending_bytes < binary.nbytes() * 2
    log.close()
    assert log.scan("churn").num_rows == 4
    assert "in.a" not in log.scan("other").column_names


def test_without_inputs_keeps_every_other_field() -> None:
    from mlharbor.monitoring.logframes import without_inputs

    full = PredictionRecord("id", "ep", "ep@champion", 3, [1], "outputs", 0.5,
                            datetime(2026, 1, 1, tzinfo=UTC), shadow=True, fallback="ep:2",
                            matrix="matrix", columns=("a",), error="ValueError")
    assert without_inputs(full) == dataclasses.replace(full, inputs=None)


def test_records_without_inputs_take_the_json_path_with_their_matrix_as_inputs(
        tmp_path: Path, monkeypatch: Any) -> None:
    import mlharbor.monitoring.predlog as predlog

    def refuse(records: Any) -> Any:
        raise ValueError("a frame that cannot be encoded")

    monkeypatch.setattr(predlog, "encode_parts", refuse)
    log = PredictionLog(tmp_path / "journal", LocalSegments(tmp_path / "segments"))
    rec = record(2, 9)
    log.emit(dataclasses.replace(rec, inputs=[{"a": 0}]))  # dropped: the matrix is the inputs
    log.close()
    table = log.scan("churn").sort_by([("row", "ascending")])
    assert table.num_rows == 9
    assert table["in.c"].to_pylist() == rec.matrix[:, 2].tolist()


def test_segments_with_nullable_and_required_input_columns_scan_together(
        tmp_path: Path) -> None:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    log = PredictionLog(tmp_path / "journal", LocalSegments(tmp_path / "segments"))
    rec = record(3, 5)
    log.emit(rec)
    log.flush()
    log.compact()
    (new,) = log.segment_names("churn")
    written = pq.read_table(io.BytesIO(log.segments.get(new)))
    assert not written.schema.field("in.a").nullable  # the matrix never holds a null
    # A segment an older version wrote: every column nullable, a null input included.
    old = written.slice(0, 2).cast(pa.schema([f.with_nullable(True) for f in written.schema]))
    old = old.set_column(old.schema.get_field_index("in.a"), "in.a", pa.array([None, 1.5]))
    old = old.set_column(old.schema.get_field_index("request_id"), "request_id",
                         pa.array(["old-0", "old-1"]))
    sink = io.BytesIO()
    pq.write_table(old, sink)
    at = written["at"][0].as_py()
    log.segments.put(f"endpoint=churn/{at}-{at}-old-0000000001.parquet", sink.getvalue())
    table = log.scan("churn").sort_by([("request_id", "ascending"), ("row", "ascending")])
    assert table.num_rows == 7 and table.schema.field("in.a").nullable
    assert table["in.a"].to_pylist()[:2] == [None, 1.5]
    assert table["in.a"].to_pylist()[2:] == rec.matrix[:, 0].tolist()
    log.close()
