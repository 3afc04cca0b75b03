"""Arrow columns to NumPy and back, for batch scoring, without importing pandas.

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
