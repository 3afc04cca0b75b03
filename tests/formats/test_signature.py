"""The signature: inference, JSON round trip, and every kind of bad input named precisely."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mlharbor.core.errors import SchemaError
from mlharbor.core.signature import ColumnSpec, OutputSpec, Signature, infer_signature


@pytest.fixture
def frame() -> pd.DataFrame:
    return pd.DataFrame({
        "age": [31.0, 45.5, np.nan], "visits": [1, 4, 2], "plan": ["basic", "pro", "basic"],
        "active": [True, False, True],
    })


@pytest.fixture
def signature(frame: pd.DataFrame) -> Signature:
    return infer_signature(frame, categories={"plan": ["basic", "plus", "pro"]},
                           outputs=OutputSpec("classification", (0, 1)))


def test_inference_from_dataframe(signature: Signature) -> None:
    specs = {c.name: c for c in signature.inputs}
    assert specs["age"] == ColumnSpec("age", "float64", nullable=True)
    assert specs["visits"] == ColumnSpec("visits", "int64")
    assert specs["plan"] == ColumnSpec("plan", "string", categories=("basic", "plus", "pro"))
    assert specs["active"] == ColumnSpec("active", "bool")
    assert signature.input_kind == "frame"


def test_inference_from_array_and_records() -> None:
    sig = infer_signature(np.zeros((3, 4), dtype=np.float32))
    assert sig.names == ("x0", "x1", "x2", "x3") and sig.input_kind == "array"
    assert {c.dtype for c in sig.inputs} == {"float32"}
    sig = infer_signature([{"a": 1, "b": "x"}, {"a": 2.5, "b": None}])
    assert [(c.name, c.dtype, c.nullable) for c in sig.inputs] == [
        ("a", "float64", False), ("b", "string", True)]


def test_mixed_column_cannot_be_inferred() -> None:
    with pytest.raises(SchemaError, match="'a' mixes value types"):
        infer_signature([{"a": 1}, {"a": "x"}])


def test_json_round_trip(signature: Signature) -> None:
    again = Signature.from_dict(signature.to_dict())
    assert again == signature
    assert Signature.from_dict(signature.with_policy(extra_columns="ignore").to_dict()) \
        .extra_columns == "ignore"


def test_malformed_document_is_refused() -> None:
    with pytest.raises(SchemaError, match="malformed"):
        Signature.from_dict({"inputs": [{"dtype": "float64"}]})
    with pytest.raises(SchemaError, match="dtype of column 'a'"):
        Signature.from_dict({"inputs": [{"name": "a", "dtype": "complex"}]})
    with pytest.raises(SchemaError, match="extra_columns"):
        Signature.from_dict({"inputs": [], "extra_columns": "drop"})


ROW: dict[str, Any] = {"age": 30.0, "visits": 3, "plan": "pro", "active": True}


@pytest.mark.parametrize("data", [
    ROW, [ROW, ROW], {k: [v, v] for k, v in ROW.items()}, pd.DataFrame([ROW]),
    np.array([[30.0, 3, "pro", True]], dtype=object),
])
def test_accepted_inputs_coerce(signature: Signature, data: Any) -> None:
    cols = signature.validator().columns(data)
    assert cols["age"].dtype == np.float64 and cols["visits"].dtype == np.int64
    assert cols["plan"].dtype == object and cols["active"].dtype == np.bool_
    assert cols["plan"][0] == "pro"
    frame = signature.validator().frame(data)
    assert list(frame.columns) == ["age", "visits", "plan", "active"]


@pytest.mark.parametrize(("change", "pattern", "column"), [
    ({"drop": "visits"}, r"missing column\(s\) 'visits'", "visits"),
    ({"extra": 1}, r"column\(s\) 'extra' the model does not take", "extra"),
    ({"visits": "three"}, r"Column 'visits' expects int64 but received str 'three'", "visits"),
    ({"visits": 2.5}, r"Column 'visits' expects int64 but received the non-integer 2.5",
     "visits"),
    ({"age": "old"}, r"Column 'age' expects float64 \(nullable\) but received str 'old'", "age"),
    ({"plan": 7}, r"Column 'plan' expects string but received int 7", "plan"),
    ({"plan": "gold"}, r"Column 'plan' received the unseen category 'gold'", "plan"),
    ({"plan": None}, r"Column 'plan' expects string but received a missing value", "plan"),
    ({"visits": None}, r"Column 'visits' expects int64 but received a missing value", "visits"),
    ({"active": "yes"}, r"Column 'active' expects bool but received str 'yes'", "active"),
])
def test_bad_input_names_column_expected_and_received(
    signature: Signature, change: dict[str, Any], pattern: str, column: str
) -> None:
    row = dict(ROW)
    if "drop" in change:
        del row[change.pop("drop")]
    row.update(change)
    with pytest.raises(SchemaError, match=pattern) as info:
        signature.validator().columns(row)
    assert info.value.details["column"] == column
    assert "expected" in info.value.details and "received" in info.value.details
    assert info.value.hint


def test_policies_allow_extra_columns_and_unseen_categories(signature: Signature) -> None:
    relaxed = signature.with_policy(extra_columns="ignore", unseen_categories="allow")
    cols = relaxed.validator().columns(dict(ROW, plan="gold", extra=1))
    assert "extra" not in cols and cols["plan"][0] == "gold"


def test_nullable_float_accepts_missing(signature: Signature) -> None:
    cols = signature.validator().columns([dict(ROW, age=None), dict(ROW, age=math.nan)])
    assert np.isnan(cols["age"]).all()


@pytest.fixture
def numeric() -> Signature:
    return Signature(tuple(ColumnSpec(f"f{i}", "float64") for i in range(3)), "array")


@pytest.mark.parametrize("data", [
    np.array([1.0, 2.0, 3.0]), np.array([[1, 2, 3]]), {"f0": 1, "f1": 2.0, "f2": 3},
    pd.DataFrame({"f2": [3.0], "f0": [1.0], "f1": [2.0]}), [[1.0, 2.0, 3.0]],
    {"f0": [1.0], "f1": [2.0], "f2": [3.0]},
])
def test_matrix_fast_paths(numeric: Signature, data: Any) -> None:
    x = numeric.validator().matrix(data, np.float32)
    assert x.dtype == np.float32 and x.flags.c_contiguous
    np.testing.assert_array_equal(x, [[1.0, 2.0, 3.0]])


@pytest.mark.parametrize(("data", "pattern"), [
    (np.array([[1.0, np.nan, 3.0]]), r"Column 'f1' expects float64 but received a missing"),
    ({"f0": 1.0, "f1": None, "f2": 3.0}, r"Column 'f1' .* missing value"),
    ({"f0": 1.0, "f1": "2", "f2": 3.0}, r"Column 'f1' expects float64 but received str '2'"),
    ({"f0": 1.0, "f2": 3.0}, r"missing column\(s\) 'f1'"),
    ({"f0": 1.0, "f1": 2.0, "f2": 3.0, "f3": 4.0}, r"'f3' the model does not take"),
    (np.zeros((1, 4)), r"shape \(1, 4\); the model expects rows of 3"),
    (pd.DataFrame({"f0": [1.0], "f1": ["a"], "f2": [3.0]}), r"Column 'f1' expects float64"),
    ("a string", r"Unsupported input of type str"),
])
def test_matrix_errors(numeric: Signature, data: Any, pattern: str) -> None:
    with pytest.raises(SchemaError, match=pattern):
        numeric.validator().matrix(data, np.float32)


def test_pandas_nullable_dtypes_are_understood() -> None:
    sig = Signature((ColumnSpec("n", "int64", nullable=True), ColumnSpec("s", "string", True)))
    frame = pd.DataFrame({"n": pd.array([1, None], dtype="Int64"),
                          "s": pd.array(["a", None], dtype="string")})
    cols = sig.validator().columns(frame)
    assert cols["n"][0] == 1 and np.isnan(cols["n"][1])
    strict = Signature((ColumnSpec("n", "int64"),))
    with pytest.raises(SchemaError, match="Column 'n' expects int64 but received a missing"):
        strict.validator().columns(frame[["n"]])


@pytest.mark.parametrize(("data", "pattern"), [
    ({"f0": 1.0, "f1": math.inf, "f2": 3.0}, r"Column 'f1' .* infinite value"),
    ({"f0": 1.0, "f1": 1e300, "f2": 3.0}, r"Column 'f1' .* too large for float32"),
    ({"f0": 1.0, "f1": 10**400, "f2": 3.0}, r"Column 'f1' .* too large to represent"),
    ([{"f0": 1.0, "f1": [1, 2], "f2": 3.0}], r"Column 'f1' expects float64 but received list"),
    ({"f0": 1.0, "f1": 2.0, "f2": 3.0, 7: 1}, r"column\(s\) '7' the model does not take"),
])
def test_hostile_values_are_schema_errors(numeric: Signature, data: Any, pattern: str) -> None:
    with pytest.raises(SchemaError, match=pattern):
        numeric.validator().matrix(data, np.float32)


def test_integers_out_of_range_are_refused() -> None:
    sig = Signature((ColumnSpec("n", "int64"),))
    with pytest.raises(SchemaError, match="out of int64 range"):
        sig.validator().columns({"n": 10**30})
