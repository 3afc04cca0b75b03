"""Records that carry their inputs as a float64 matrix travel through the journal as binary
frames and give the same log rows as the JSON entries of the same records."""

from __future__ import annotations

import base64
import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlharbor.core.records import PredictionRecord
from mlharbor.monitoring.journal import HEADER_SIZE, Journal
from mlharbor.monitoring.logframes import decode, encode, is_frame, split_records
from mlharbor.monitoring.logrows import Redaction
from mlharbor.monitoring.predlog import PredictionLog
from mlharbor.monitoring.segments import LocalSegments, Sealer, sealer_from_settings
from mlharbor.serving.model import Outputs, numeric_matrix
from mlharbor.settings import Settings

AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
NAMES = ("a", "b", "c")


def rows(n: int, seed: int) -> list[dict[str, float]]:
    rng = np.random.default_rng(seed)
    return [{k: float(v) for k, v in zip(NAMES, r, strict=True)} for r in rng.normal(size=(n, 3))]


OUTPUTS: dict[str, Any] = {
    "binary": lambda n: Outputs(np.arange(n) % 2, np.linspace(0, 1, 2 * n).reshape(n, 2)),
    "string labels": lambda n: Outputs(np.array(["no", "yes"] * n)[:n],
                                       np.linspace(0, 1, 3 * n).reshape(n, 3)),
    "regression": lambda n: Outputs(np.linspace(-1, 1, n), None),
    "bools": lambda n: Outputs(np.arange(n) % 3 == 0, None),
    "fewer predictions": lambda n: Outputs(np.arange(max(n - 1, 0)), None),
}


def record(data: Any, outputs: Any, i: int, *, endpoint: str = "churn",
           with_matrix: bool = True) -> PredictionRecord:
    matrix = numeric_matrix(data, NAMES) if with_matrix else None
    return PredictionRecord(f"r{i:03d}", endpoint, "churn@champion", 2, data, outputs,
                            0.001 * i, AT + timedelta(milliseconds=i), shadow=i % 5 == 4,
                            fallback="churn:1" if i % 7 == 6 else None, matrix=matrix,
                            columns=NAMES if matrix is not None else None)


def logged(tmp_path: Path, name: str, records: list[PredictionRecord], *,
           sealer: Sealer | None = None, redaction: Redaction | None = None,
           endpoint: str = "churn") -> Any:
    log = PredictionLog(tmp_path / name / "journal", LocalSegments(tmp_path / name / "seg"),
                        sealer=sealer, redaction=redaction)
    for r in records:
        log.emit(r)
    log.flush()
    log.compact()
    table = log.scan(endpoint)
    return table.sort_by([("request_id", "ascending"), ("row", "ascending")])


def assert_same(binary: Any, json: Any) -> None:
    assert sorted(binary.schema.names) == sorted(json.schema.names)
    binary = binary.select(json.schema.names)
    assert [str(t) for t in binary.schema.types] == [str(t) for t in json.schema.types]
    assert binary.to_pylist() == json.to_pylist()


@pytest.mark.parametrize("outputs", list(OUTPUTS), ids=list(OUTPUTS))
def test_binary_frames_give_the_rows_json_entries_give(tmp_path: Path, outputs: str) -> None:
    sizes = [1, 64, 3, 1, 17, 2, 5, 1]
    records = [record(rows(n, i) if n > 1 else rows(1, i)[0], OUTPUTS[outputs](n), i)
               for i, n in enumerate(sizes)]
    plain = [dataclasses.replace(r, matrix=None, columns=None) for r in records]
    assert all(r.matrix is not None for r in records)
    binary, json = logged(tmp_path, "bin", records), logged(tmp_path, "json", plain)
    assert binary.num_rows == sum(sizes)
    assert_same(binary, json)


def test_mixed_frames_records_and_endpoints_in_one_journal(tmp_path: Path) -> None:
    records = [record(rows(4, 0), OUTPUTS["binary"](4), 0),
               record([{"a": 1.0, "b": "text", "c": 2.0}], OUTPUTS["binary"](1), 1),
               record(rows(3, 2), OUTPUTS["regression"](3), 2, endpoint="price"),
               record(rows(4, 3), OUTPUTS["string labels"](4), 3),
               record(rows(2, 4), OUTPUTS["binary"](2), 4)]
    assert records[1].matrix is None  # a string: the JSON path
    plain = [dataclasses.replace(r, matrix=None, columns=None) for r in records]
    for endpoint in ("churn", "price"):
        assert_same(logged(tmp_path, f"bin-{endpoint}", records, endpoint=endpoint),
                    logged(tmp_path, f"json-{endpoint}", plain, endpoint=endpoint))


def test_integer_inputs_are_logged_as_the_float64_values_the_model_saw(tmp_path: Path) -> None:
    data = [{"a": 1, "b": 2, "c": 3}, {"a": 4, "b": 5.5, "c": 6}]
    table = logged(tmp_path, "ints", [record(data, OUTPUTS["binary"](2), 0)])
    assert str(table.schema.field("in.a").type) == "double"
    assert table.column("in.b").to_pylist() == [2.0, 5.5]


def test_frames_are_sealed_and_a_torn_frame_is_skipped(tmp_path: Path) -> None:
    key = base64.b64encode(b"k" * 32).decode()
    sealer = sealer_from_settings(Settings(home=tmp_path / "home", security={"master_key": key}))
    assert sealer is not None
    records = [record(rows(8, i), OUTPUTS["binary"](8), i) for i in range(3)]
    journal = Journal(tmp_path / "j", max_bytes=1 << 30, sealer=sealer)
    assert journal.append_frames([(encode(records[:2]), 2)])
    assert journal.append_frames([(encode(records[2:]), 1)])
    journal.close()
    path = next((tmp_path / "j").glob("journal-*.log"))
    data = path.read_bytes()
    assert b"r000" not in data  # sealed: no request id in the clear
    path.write_bytes(data[:-10])  # a crash in the middle of the second frame
    contents = Journal(tmp_path / "j", max_bytes=1 << 30, sealer=sealer).contents(path)
    blocks = contents.rows
    assert [b["block"]["id"] for b in blocks] == [["r000", "r001"]]
    assert blocks[0]["block"]["m"].shape == (3, 16)
    assert (contents.torn_records, contents.torn_frames) == (1, 0)  # counted, not ignored


def test_redacted_endpoints_never_write_the_matrix(tmp_path: Path) -> None:
    redaction = Redaction({"churn": {"a": "drop", "b": "mask"}})
    records = [record(rows(4, 0), OUTPUTS["binary"](4), 0),
               record(rows(4, 1), OUTPUTS["binary"](4), 1, endpoint="open")]
    log = PredictionLog(tmp_path / "journal", LocalSegments(tmp_path / "seg"),
                        redaction=redaction)
    for r in records:
        log.emit(r)
    log.flush()
    (journal,) = (tmp_path / "journal").glob("journal-*.log")
    data = journal.read_bytes()
    frames = []
    while data:  # magic | length | records | header CRC | payload CRC | payload
        size = int.from_bytes(data[4:8], "big")
        frames.append(data[HEADER_SIZE:HEADER_SIZE + size])
        data = data[HEADER_SIZE + size:]
    # The endpoint without rules goes as a binary frame; the redacted one as JSON, without
    # the dropped column's values.
    assert [is_frame(f) for f in frames] == [True, False]
    assert b'"a"' not in frames[1] and str(records[0].matrix[0, 0]).encode() not in frames[1]
    log.compact()
    table = log.scan("churn")
    assert "in.a" not in table.column_names
    assert set(table.column("in.b").to_pylist()) == {"***"}
    assert log.scan("open").num_rows == 4


def test_a_crash_between_segment_and_journal_removal_duplicates_nothing(tmp_path: Path
                                                                        ) -> None:
    store = LocalSegments(tmp_path / "seg")
    first = PredictionLog(tmp_path / "journal", store)
    for i in range(3):
        first.emit(record(rows(4, i), OUTPUTS["binary"](4), i))
    first.flush()
    first.journal.rotate()
    (sealed,) = first.journal.sealed()
    first._write_segments(first.journal.read(sealed), first.journal.seq_of(sealed))
    # ... the process dies here, before removing the journal file; another recovers it.
    second = PredictionLog(tmp_path / "journal", store)
    second.compact()
    table = second.scan("churn")
    assert table.num_rows == 12
    assert len(set(zip(table["request_id"].to_pylist(), table["row"].to_pylist(),
                       strict=True))) == 12


def test_decode_reads_what_encode_wrote() -> None:
    records = [record(rows(5, 0), OUTPUTS["string labels"](5), 0),
               record(rows(1, 1)[0], OUTPUTS["regression"](1), 1),
               record(rows(2, 2), OUTPUTS["string labels"](2), 2)]
    payload = encode(records)
    assert is_frame(payload)
    blocks = [item["block"] for item in decode(payload)]
    # One block per endpoint, columns and output kind: records 0 and 2 share one.
    assert [b["id"] for b in blocks] == [["r000", "r002"], ["r001"]]
    assert blocks[0]["n"] == [5, 2]
    np.testing.assert_array_equal(blocks[0]["m"].T,
                                  np.concatenate([records[0].matrix, records[2].matrix]))
    assert blocks[0]["pred"] == ["no", "yes", "no", "yes", "no", "no", "yes"]
    np.testing.assert_allclose(blocks[0]["score"], np.concatenate(
        [r.outputs.probabilities.max(axis=1) for r in (records[0], records[2])]))
    assert blocks[1]["score"] is None
    assert list(blocks[1]["pred"]) == [-1.0]


def test_outputs_serving_never_gives_take_the_json_path(tmp_path: Path) -> None:
    odd = [record(rows(3, 0), Outputs(np.array(["a", 1, None], dtype=object), None), 0),
           record(rows(3, 1), [1, 0, 1], 1),
           record(rows(3, 2), Outputs(np.arange(3), np.ones((3, 2, 1))), 2),
           record(rows(3, 3), OUTPUTS["binary"](3), 3)]
    binary, other = split_records(odd, None)
    assert [r.request_id for r in binary] == ["r003"]
    assert len(other) == 3
    plain = [dataclasses.replace(r, matrix=None, columns=None) for r in odd]
    assert_same(logged(tmp_path, "bin", odd), logged(tmp_path, "json", plain))


def test_integer_categories_logged_as_floats_count_as_their_category() -> None:
    import pandas as pd
    import pyarrow as pa

    from mlharbor.monitoring.reference import Reference
    from mlharbor.monitoring.windows import _count_categorical

    reference = Reference.from_frame(pd.DataFrame({"n": [1, 2, 3, 2, 1] * 20}),
                                     kinds={"n": "categorical"})
    counts = _count_categorical(reference.features["n"], pa.array([1.0, 2.0, 2.0, 5.0]))
    assert counts.counts.tolist() == [1, 2, 0]
    assert counts.unseen_values == {"5": 1}
