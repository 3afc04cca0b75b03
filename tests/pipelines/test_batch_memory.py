"""Batch sizing under a memory budget, and the pandas-free Arrow <-> NumPy conversions batch
scoring uses: property-based, against pyarrow's own conversions and the sizing rule itself."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlharbor.core.errors import InvalidInputError
from mlharbor.pipelines.batcharrays import constant_text, strings, to_arrow, to_numpy
from mlharbor.pipelines.batchmemory import (
    COPIES,
    DEFAULT_BATCH_ROWS,
    MIN_BATCH_ROWS,
    margin,
    size_batches,
)

MiB = 1 << 20
BOUNDED = settings(derandomize=True, deadline=None, max_examples=60)

numeric_types = st.sampled_from(["int8", "int32", "int64", "float32", "float64"])


@BOUNDED
@given(kind=numeric_types, values=st.lists(st.one_of(st.none(), st.integers(-100, 100)),
                                           max_size=40),
       start=st.integers(0, 10), length=st.integers(0, 40))
def test_numeric_columns_match_pyarrow_own_conversion(kind: str, values: list[int | None],
                                                      start: int, length: int) -> None:
    import pyarrow as pa

    column = pa.array(values, type=pa.type_for_alias(kind)).slice(start, length)
    ours = to_numpy(column)
    theirs = column.to_numpy(zero_copy_only=False)
    assert len(ours) == len(theirs)
    assert np.array_equal(ours, theirs, equal_nan=True)


@BOUNDED
@given(values=st.lists(st.booleans(), max_size=70), start=st.integers(0, 9))
def test_boolean_columns_unpack_from_their_bits(values: list[bool], start: int) -> None:
    import pyarrow as pa

    column = pa.array(values).slice(start)
    assert to_numpy(column).tolist() == values[start:]


@BOUNDED
@given(values=st.lists(st.floats(-1e6, 1e6, allow_nan=False, width=32), max_size=30),
       dtype=st.sampled_from([np.float32, np.float64, np.int64]), step=st.integers(1, 3))
def test_numpy_to_arrow_and_back(values: list[float], dtype: type, step: int) -> None:
    array = np.asarray(values).astype(dtype)[::step]  # strided, as probability columns are
    assert np.array_equal(to_arrow(array).to_numpy(zero_copy_only=False), array)


def test_text_helpers() -> None:
    assert strings(["a", "", "héllo"]).to_pylist() == ["a", "", "héllo"]
    assert constant_text("churn:3", 4).to_pylist() == ["churn:3"] * 4
    assert to_arrow(np.array(["x", None], dtype=object)).to_pylist() == ["x", None]


def test_scoring_numeric_batches_does_not_import_pandas() -> None:
    code = ("import sys, numpy as np, pyarrow as pa\n"
            "from mlharbor.pipelines.batcharrays import to_numpy, to_arrow, constant_text\n"
            "c = pa.Array.from_buffers(pa.float64(), 3, [None, pa.py_buffer(np.ones(3))])\n"
            "to_numpy(c); to_arrow(np.arange(3)); constant_text('m:1', 3)\n"
            "print('pandas' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "False"


@BOUNDED
@given(floor=st.integers(50 * MiB, 400 * MiB), reader=st.integers(0, 64 * MiB),
       row_bytes=st.floats(8, 20_000), slots=st.integers(1, 4), csv=st.booleans(),
       budget=st.integers(1 * MiB, 4096 * MiB))
def test_batches_fit_the_budget_or_the_refusal_names_the_smallest_that_works(
        floor: int, reader: int, row_bytes: float, slots: int, csv: bool,
        budget: int) -> None:
    try:
        sizing = size_batches(budget, floor=floor, reader_bytes=reader, row_bytes=row_bytes,
                              slots=slots, csv=csv)
    except InvalidInputError as exc:
        needed = exc.details["needed"]
        assert needed > budget and f"{-(-needed // MiB)}MiB" in str(exc)
        works = size_batches(needed, floor=floor, reader_bytes=reader, row_bytes=row_bytes,
                             slots=slots, csv=csv)
        assert works.batch_rows >= MIN_BATCH_ROWS
        with pytest.raises(InvalidInputError):
            size_batches(needed - 2 * MiB, floor=floor, reader_bytes=reader,
                         row_bytes=row_bytes, slots=slots, csv=csv)
        return
    assert MIN_BATCH_ROWS <= sizing.batch_rows <= DEFAULT_BATCH_ROWS
    in_flight = slots * (sizing.reader_bytes + sizing.batch_rows * COPIES * row_bytes)
    assert floor + in_flight + margin(budget) <= budget
    assert sizing.reader_bytes >= reader
