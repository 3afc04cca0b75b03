"""The numeric fast path (records or rows of plain numbers -> one float64 matrix) takes
exactly the inputs it may: every value a plain int or float, every row complete. Anything else
(a bool, a string, None, a missing or extra key, an integer too large for a float) returns
None, and the general validator, whose messages name the row and column, takes over."""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from mlharbor.serving.model import numeric_matrix, numeric_rows

NAMES = ("a", "b", "c")
values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(-(2**70), 2**70),
    st.booleans(), st.none(), st.text(max_size=3))


def plain(value: Any) -> bool:
    return type(value) in (int, float) and (type(value) is float or abs(value) < 2**1023)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(rows=st.lists(st.lists(values, min_size=3, max_size=3), min_size=1, max_size=12))
def test_records_take_the_fast_path_exactly_when_every_value_is_a_number(
        rows: list[list[Any]]) -> None:
    records = [dict(zip(NAMES, row, strict=True)) for row in rows]
    expected_plain = all(plain(v) for row in rows for v in row)
    for out in (numeric_matrix(records, NAMES), getattr(numeric_rows(rows, NAMES), "matrix",
                                                         None)):
        if not expected_plain:
            assert out is None
            continue
        assert out is not None
        assert out.dtype == np.float64 and out.shape == (len(rows), 3)
        assert out.flags.c_contiguous
        np.testing.assert_array_equal(out, np.array(rows, dtype=np.float64))


def test_incomplete_or_extra_keys_and_ragged_rows_leave_the_fast_path() -> None:
    assert numeric_matrix([{"a": 1.0, "b": 2.0}], NAMES) is None
    assert numeric_matrix([{"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0}], NAMES) is None
    assert numeric_matrix([{"a": 1.0, "b": 2.0, "c": 3.0}, {"a": 1.0}], NAMES) is None
    assert numeric_rows([[1.0, 2.0, 3.0], [1.0, 2.0]], NAMES) is None
    assert numeric_rows([[1.0, 2.0, 3.0], (1.0, 2.0, 3.0)], NAMES) is None
    assert numeric_matrix([{"a": 1, "b": 2, "c": 3}] * 2, NAMES).tolist() == [[1, 2, 3]] * 2


def test_parsed_records_in_any_key_order_give_the_matrix_in_signature_order() -> None:
    import orjson

    body = orjson.dumps([{"c": 3.0, "a": 1.0, "b": 2}, {"b": 5.0, "c": 6.0, "a": 4.0},
                         {"a": 7.0, "b": 8.0, "c": 9.0}])
    out = numeric_matrix(orjson.loads(body), NAMES)
    assert out is not None and out.tolist() == [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    missing = orjson.loads(b'[{"a": 1.0, "b": 2.0, "d": 3.0}, {"a": 1.0, "b": 2.0, "c": 3.0}]')
    assert numeric_matrix(missing, NAMES) is None
    later = orjson.loads(b'[{"a": 1.0, "b": 2.0, "c": 3.0}, {"a": 1.0, "b": 2.0, "d": 3.0}]')
    assert numeric_matrix(later, NAMES) is None
    assert numeric_matrix([[1.0, 2.0, 3.0]], NAMES) is None  # rows are numeric_rows' shape
