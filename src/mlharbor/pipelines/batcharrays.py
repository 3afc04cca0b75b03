"""Arrow columns to NumPy and back, for batch scoring: the signature's values out of a record
batch, the model's input matrix, and the outputs and logged inputs as Arrow columns.

pyarrow's own conversions (``Array.to_numpy``, ``pa.array(ndarray)``) import pandas the first
time they run, to check whether they were handed a pandas object. That import costs a batch
process about 40 MB of resident memory and a noticeable part of its start-up, for nothing:
the values of a numeric column without nulls are one buffer that NumPy can view as it is.
So the common cases here read and build Arrow buffers directly; everything else (text, dates,
booleans with nulls) goes through pyarrow's conversion as before.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa

    from mlharbor.core.signature import ColumnSpec
    from mlharbor.formats.predictor import Predictor


def to_numpy(column: pa.Array) -> np.ndarray:
    """The column's values: a view of its buffer when it is numeric without nulls, a float64
    copy with NaN for nulls in a numeric column, booleans unpacked from their bits; other types
    as ``Array.to_numpy(zero_copy_only=False)`` gives them."""
    import pyarrow as pa

    kind = column.type
    n, offset = len(column), column.offset
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        validity, data = column.buffers()[:2]
        dtype = np.dtype(kind.to_pandas_dtype())
        values = np.frombuffer(data, dtype=dtype, count=offset + n)[offset:] \
            if data is not None else np.zeros(n, dtype=dtype)
        if column.null_count == 0:
            return values
        out = values.astype(np.float64)
        out[~_bits(validity, offset, n)] = np.nan
        return out
    if pa.types.is_boolean(kind) and column.null_count == 0:
        return _bits(column.buffers()[1], offset, n)
    return np.asarray(column.to_numpy(zero_copy_only=False))


def _bits(buffer: Any, offset: int, n: int) -> np.ndarray:
    """An Arrow bitmap (least significant bit first) as ``n`` booleans from bit ``offset``."""
    raw = np.frombuffer(buffer, dtype=np.uint8)
    return np.unpackbits(raw, bitorder="little")[offset:offset + n].astype(bool)


def to_arrow(values: np.ndarray) -> pa.Array:
    """A 1-D NumPy array as an Arrow array: numeric arrays wrap their (contiguous) buffer;
    anything else goes through ``pa.array``."""
    import pyarrow as pa

    if values.ndim == 1 and values.dtype.kind in "iuf" and values.dtype.byteorder in "=|":
        data = np.ascontiguousarray(values)
        return pa.Array.from_buffers(pa.from_numpy_dtype(data.dtype), len(data),
                                     [None, pa.py_buffer(data)])
    return pa.array(values)


def strings(texts: list[str]) -> pa.Array:
    """A string array of ``texts`` (no nulls)."""
    import pyarrow as pa

    encoded = [t.encode() for t in texts]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int32)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    return pa.Array.from_buffers(pa.string(), len(encoded),
                                 [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))])


def constant_text(text: str, n: int) -> pa.Array:
    """``text`` ``n`` times, dictionary-encoded (one value, ``n`` zero indices)."""
    import pyarrow as pa

    indices = to_arrow(np.zeros(n, dtype=np.int32))
    return pa.DictionaryArray.from_arrays(indices, strings([text]))


def tensor_dtype(predictor: Predictor) -> Any:
    """The dtype of the model's one 2-D input tensor when every signature column is a float
    (then a batch can be written straight into it); else None."""
    inputs = getattr(getattr(predictor.runner, "model", None), "inputs", None)
    if predictor.runtime != "onnx" or not isinstance(inputs, list) or len(inputs) != 1:
        return None
    if not all(s.dtype in ("float32", "float64") for s in predictor.signature.inputs):
        return None
    dtype = inputs[0][1]
    return dtype if dtype in (np.float32, np.float64) else None


def input_matrix(data: dict[str, np.ndarray], dtype: Any) -> np.ndarray | None:
    """The columns as one C-ordered matrix of ``dtype``, or None if one is not numeric (text
    that did not convert: the column path refuses it by row). Values too large for float32
    become inf, which the validator refuses as it would after its own cast."""
    columns = list(data.values())
    if any(c.dtype.kind not in "fiub" for c in columns):
        return None
    matrix = np.empty((len(columns[0]) if columns else 0, len(columns)), dtype=dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        for i, column in enumerate(columns):
            matrix[:, i] = column
    return matrix


def column_values(column: Any, spec: ColumnSpec) -> np.ndarray:
    """An Arrow column as the NumPy values the signature validator takes. Text read from CSV is
    converted to the column's type in one step; when a cell does not convert, cell by cell, the
    bad cells kept as text so the validator refuses exactly those rows."""
    import pyarrow as pa

    if spec.dtype == "string" or not pa.types.is_string(column.type):
        return to_numpy(column)
    target = pa.bool_() if spec.dtype == "bool" else pa.float64()
    try:
        return to_numpy(column.cast(target))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        cells = [_cell(v, spec.dtype) for v in column.to_pylist()]
        return np.fromiter(cells, dtype=object, count=len(cells))


def _cell(text: str | None, dtype: str) -> Any:
    if text is None:
        return None
    word = text.strip()
    if dtype == "bool":
        return {"true": True, "false": False, "1": True, "0": False}.get(word.lower(), text)
    try:
        return float(word)
    except ValueError:
        return text


def inputs_table(data: dict[str, np.ndarray], names: list[str], kept: np.ndarray) -> pa.Table:
    import pyarrow as pa

    return pa.table({n: _arrow_column(data[n][kept] if len(kept) != len(data[n]) else data[n])
                     for n in names})


def _arrow_column(values: np.ndarray) -> pa.Array:
    """Logged inputs: NaN (and None) stored as nulls, as the prediction log expects."""
    import pyarrow as pa

    if values.dtype.kind in "iu" or (values.dtype.kind == "f" and not np.isnan(values).any()):
        return to_arrow(values)
    return pa.array(values, from_pandas=True)
