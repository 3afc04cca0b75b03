"""Journal entries (one per record, rows expanded column-wise at compaction) give exactly the
rows, columns and types the row-by-row path gave; journals of the older format still recover."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest

from mlharbor.core.records import PredictionRecord
from mlharbor.monitoring.journal import Journal
from mlharbor.monitoring.logrows import (
    Redaction,
    column_array,
    entry_default,
    input_columns,
    input_rows,
    record_entry,
    record_rows,
)
from mlharbor.monitoring.predlog import PredictionLog, entries_table, rows_table
from mlharbor.monitoring.segments import LocalSegments
from mlharbor.serving.model import Outputs

AT = datetime(2026, 1, 2, 3, 4, 5, 678_000, tzinfo=UTC)
PROBA2 = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6]])
PROBA3 = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.3, 0.4, 0.3]])

INPUTS: dict[str, Any] = {
    "records": [{"tenure": 1, "plan": "a"}, {"tenure": 2, "plan": "b"},
                {"tenure": 3, "plan": "c"}],
    "ragged records": [{"tenure": 1}, {"plan": "b", "tenure": 2.5}, {"extra": True}],
    "columns": {"tenure": [1, 2, 3], "plan": ["a", "b", "c"]},
    "numpy columns": {"tenure": np.array([1, 2, 3]), "score": np.array([0.5, 1.5, 2.5])},
    "wrapped": {"inputs": [{"tenure": 1}, {"tenure": 2}, {"tenure": 3}]},
    "one row": {"tenure": 7, "plan": "basic"},
    "matrix": np.arange(6, dtype=np.float32).reshape(3, 2),
    "lists": [[1, "x"], [2, "y"], [3, "z"]],
    "values": [1, 2, 3],
    "frame": pd.DataFrame({"tenure": [1, 2, 3], "plan": ["a", "b", "c"]}),
    "nested": [{"tags": ["a", "b"], "n": 1}, {"tags": [], "n": 2}, {"tags": None, "n": 3}],
    "mixed types": [{"v": 1}, {"v": "one"}, {"v": None}],
    "scalar": 42,
    "none": None,
}
OUTPUTS: dict[str, Any] = {
    "binary": Outputs(np.array([0, 1, 1]), PROBA2),
    "multiclass": Outputs(np.array(["x", "y", "z"]), PROBA3),
    "labels only": Outputs(np.array([0.5, 1.5, 2.5]), None),
    "object labels": Outputs(np.array(["yes"] * 3, dtype=object), None),
    "list": [0, 1, 1],
    "mapping": {"predictions": [1, 0, 1], "probabilities": [[0.1, 0.9], [0.6, 0.4],
                                                            [0.2, 0.8]]},
    "more rows than inputs": np.array([1, 2, 3, 4, 5]),
    "scalar": 3,
    "none": None,
}


def make(inputs: Any, outputs: Any, endpoint: str = "churn", i: int = 0) -> PredictionRecord:
    return PredictionRecord(f"r{i}", endpoint, "churn@champion", 3, inputs, outputs, 0.0125, AT,
                            fallback="default" if i % 2 else None)


def old_table(records: list[PredictionRecord], redaction: Redaction | None = None) -> Any:
    """What the row-by-row format gave: rows, JSON round trip, ``rows_table``."""
    rows = [orjson.loads(orjson.dumps(row, option=orjson.OPT_SERIALIZE_NUMPY, default=str))
            for record in records for row in record_rows(record, redaction)]
    return rows_table(rows)


def new_table(records: list[PredictionRecord], redaction: Redaction | None = None) -> Any:
    entries = [orjson.loads(orjson.dumps(record_entry(record, redaction),
                                         option=orjson.OPT_SERIALIZE_NUMPY,
                                         default=entry_default)) for record in records]
    return entries_table(entries)


def assert_same(old: Any, new: Any) -> None:
    assert new.schema.names == old.schema.names
    assert [str(t) for t in new.schema.types] == [str(t) for t in old.schema.types]
    assert new.to_pylist() == old.to_pylist()


@pytest.mark.parametrize("inputs", list(INPUTS), ids=list(INPUTS))
@pytest.mark.parametrize("outputs", list(OUTPUTS), ids=list(OUTPUTS))
def test_entries_give_the_rows_the_row_format_gave(inputs: str, outputs: str) -> None:
    records = [make(INPUTS[inputs], OUTPUTS[outputs])]
    assert_same(old_table(records), new_table(records))


def test_many_records_of_every_shape_in_one_segment() -> None:
    records = [make(value, OUTPUTS[name], i=i) for i, (value, name) in enumerate(
        zip(INPUTS.values(), [*OUTPUTS, *OUTPUTS], strict=False))]
    assert_same(old_table(records), new_table(records))


@pytest.mark.parametrize("inputs", ["records", "columns", "one row", "frame", "ragged records"])
def test_redaction_of_columns_matches_redaction_of_rows(inputs: str) -> None:
    redaction = Redaction({"churn": {"plan": "hash", "tenure": "mask", "extra": "drop"}},
                          salt="pepper")
    records = [make(INPUTS[inputs], OUTPUTS["binary"])]
    new = new_table(records, redaction)
    assert_same(old_table(records, redaction), new)
    entry = orjson.dumps(record_entry(records[0], redaction), option=orjson.OPT_SERIALIZE_NUMPY,
                         default=entry_default)
    assert b'"a"' not in entry and b'"b"' not in entry and b"extra" not in entry


def test_wildcard_redaction_and_endpoints_without_rules() -> None:
    redaction = Redaction({"*": {"plan": "drop"}})
    records = [make(INPUTS["records"], OUTPUTS["list"], endpoint=e) for e in ("a", "b")]
    assert_same(old_table(records, redaction), new_table(records, redaction))
    redaction = Redaction({"other": {"plan": "drop"}})
    assert_same(old_table(records, redaction), new_table(records, redaction))


def test_input_columns_are_input_rows_by_column() -> None:
    for name, value in INPUTS.items():
        count, columns = input_columns(value)
        rows = input_rows(value)
        assert count == len(rows), name
        for i, row in enumerate(rows):
            for key, column in columns.items():
                assert column[i] == row.get(key), (name, key)
            assert set(row) <= set(columns), name


def test_column_types_follow_arrow_inference() -> None:
    import pyarrow as pa

    cases: list[list[Any]] = [[1, None, 2], [1, 2.5], [True, None], ["a", None], [None],
                              [1, "a"], [True, 1], [[1], 2], [{"a": 1}], [2**70, 1]]
    for values in cases:
        try:
            expected = pa.array(values).type
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            expected = pa.string()
        if pa.types.is_nested(expected):
            expected = pa.string()
        assert column_array(values).type == expected, values


def test_a_journal_of_the_older_row_format_still_recovers(tmp_path: Path) -> None:
    """A journal written before entries (one JSON row per line) becomes segments on start,
    also when the same file holds both formats."""
    old = [make(INPUTS["records"], OUTPUTS["binary"], i=1)]
    new = [make(INPUTS["columns"], OUTPUTS["binary"], i=2)]
    journal = Journal(tmp_path / "journal", max_bytes=1 << 30)
    journal.append([orjson.dumps(row) for row in record_rows(old[0])])
    journal.append([orjson.dumps(record_entry(new[0]), option=orjson.OPT_SERIALIZE_NUMPY,
                                 default=entry_default)])
    journal.close()
    log = PredictionLog(tmp_path / "journal", LocalSegments(tmp_path / "segments"))
    log.start()
    log.close()
    table = log.scan("churn")
    assert table.num_rows == 6
    rows = sorted(table.to_pylist(), key=lambda r: (r["request_id"], r["row"]))
    assert [(r["request_id"], r["row"], r["in.tenure"], r["in.plan"], r["prediction"])
            for r in rows] == [("r1", 0, 1, "a", 0), ("r1", 1, 2, "b", 1), ("r1", 2, 3, "c", 1),
                               ("r2", 0, 1, "a", 0), ("r2", 1, 2, "b", 1), ("r2", 2, 3, "c", 1)]
    assert rows[0]["score"] == pytest.approx(0.1)
    assert not list((tmp_path / "journal").glob("*.log"))


def _many(n: int = 12, **extra: Any) -> list[dict[str, Any]]:
    return [{"a": float(i) / 3, "b": i, "c": i if i % 2 else i + 0.5, **extra} for i in range(n)]


MATRIX_INPUTS: dict[str, Any] = {
    "floats, ints, mixed": _many(),
    "big ints": [{"a": 2**62 + i, "b": -(2**62) - i} for i in range(10)],
    "nan": [{"a": float("nan") if i == 3 else 1.0, "b": 2.0} for i in range(10)],
    "inf": [{"a": float("inf") if i == 3 else 1.0, "b": 2.0} for i in range(10)],
    "bool": _many(flag=True),
    "text": _many(name="x"),
    "none": _many(missing=None),
    "key order differs": [*_many(4), {"c": 1, "b": 2, "a": 3}, *_many(5)],
    "extra key": [*_many(9), {"a": 1.0, "b": 2, "c": 3, "d": 4}],
    "one key": [{"a": float(i)} for i in range(10)],
}
MATRIX_OUTPUTS: dict[str, Any] = {
    "binary": lambda n: Outputs(np.arange(n) % 2, np.linspace(0, 1, 2 * n).reshape(n, 2)),
    "multiclass": lambda n: Outputs(np.array(["p"] * n), np.linspace(0, 1, 3 * n).reshape(n, 3)),
    "no scores": lambda n: Outputs(np.arange(n) * 1.5, None),
    "more rows": lambda n: Outputs(np.arange(n + 3), None),
    "fewer rows": lambda n: Outputs(np.arange(n - 1), None),
}


@pytest.mark.parametrize("inputs", list(MATRIX_INPUTS), ids=list(MATRIX_INPUTS))
@pytest.mark.parametrize("outputs", list(MATRIX_OUTPUTS), ids=list(MATRIX_OUTPUTS))
def test_numeric_records_journaled_as_a_matrix_give_the_same_rows(inputs: str,
                                                                   outputs: str) -> None:
    value = MATRIX_INPUTS[inputs]
    records = [make(value, MATRIX_OUTPUTS[outputs](len(value)), i=i) for i in range(3)]
    assert_same(old_table(records), new_table(records))


def test_matrix_entries_mixed_with_other_shapes_in_one_segment() -> None:
    n = 12
    records = [make(_many(n), MATRIX_OUTPUTS["binary"](n), i=0),
               make(INPUTS["records"], OUTPUTS["binary"], i=1),
               make(_many(n), MATRIX_OUTPUTS["no scores"](n), i=2),
               make([{"a": 1.0, "z": 2.0}] * n, MATRIX_OUTPUTS["binary"](n), i=3),
               make(_many(n), MATRIX_OUTPUTS["binary"](n), i=4)]
    assert_same(old_table(records), new_table(records))
    entry = record_entry(records[0])
    assert "x" in entry and "in" not in entry  # the fast path is the one exercised


def test_one_row_records_with_different_columns() -> None:
    records = [make({"a": 1, "b": "x"}, [1], i=0), make([{"b": "y", "c": 2.5}], [0], i=1),
               make({"a": 3}, OUTPUTS["none"], i=2), make(None, [1], i=3),
               make([{"a": 4, "b": "z"}], Outputs(np.array([1]), np.array([[0.3, 0.7]])), i=4)]
    assert_same(old_table(records), new_table(records))
