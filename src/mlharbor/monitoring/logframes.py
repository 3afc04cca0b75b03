"""Binary journal frames for records that carry their inputs as a matrix of numbers.

Serving validates the inputs of a model of numbers into a float64 matrix
(:attr:`PredictionRecord.matrix`); formatting those numbers as JSON text for the journal and
parsing them back at compaction cost more CPU than the prediction itself on a 64-row request.
So such records travel as raw bytes: one frame per flush holds a small JSON header (one entry
per record: request id, endpoint, times, which columns, where its bytes are) followed by the
matrices, predictions and scores as they are in memory. Compaction reads them back as
zero-copy NumPy views and builds the Parquet columns with array operations only.

Layout of a frame's payload (after :class:`~.segments.Sealer` opening, when sealed)::

    MAGIC | header length (4 bytes, big-endian) | header (JSON) | buffers

JSON frames (:func:`~.logrows.record_entry`) never start with ``MAGIC``'s NUL byte, so both
kinds share one journal. Decoded entries look like format-2 entries (``"v": 2``) with ``m``
(the matrix, column-major: columns x rows), ``k`` (column names), and ``pred``/``score`` as
arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson

from mlharbor.core.records import PredictionRecord
from mlharbor.monitoring.logrows import (
    ENTRY_FORMAT,
    INPUT_PREFIX,
    Redaction,
    column_array,
    outputs_arrays,
    repeated_columns,
)

if TYPE_CHECKING:
    import pyarrow as pa

MAGIC = b"\x00MLHB1"
# Prediction arrays of these kinds travel as bytes (bool, signed, unsigned, float); strings and
# objects go in the header as JSON.
_BINARY_KINDS = "biuf"


def split_records(records: Sequence[PredictionRecord], redaction: Redaction | None
                  ) -> tuple[list[PredictionRecord], list[PredictionRecord]]:
    """(records for a binary frame, the rest): a record qualifies when it carries its matrix
    and its endpoint has no redaction rules (redaction needs the values as Python objects)."""
    binary: list[PredictionRecord] = []
    other: list[PredictionRecord] = []
    for record in records:
        if record.matrix is not None and record.columns is not None and (
                redaction is None or not redaction.rules_for(record.endpoint)):
            binary.append(record)
        else:
            other.append(record)
    return binary, other


def encode(records: Sequence[PredictionRecord]) -> bytes:
    """One frame payload holding ``records`` (each with ``matrix`` and ``columns`` set)."""
    import numpy as np

    keys: dict[tuple[str, ...], int] = {}
    entries: list[dict[str, Any]] = []
    buffers: list[bytes] = []
    offset = 0
    for record in records:
        matrix = np.asarray(record.matrix, dtype=np.float64)
        columns = record.columns or ()
        key_index = keys.setdefault(columns, len(keys))
        raw = np.ascontiguousarray(matrix.T).tobytes()  # column-major: a column is one run
        entry: dict[str, Any] = {
            "id": record.request_id, "ep": record.endpoint, "ref": record.model_ref,
            "ver": record.served_version, "at": int(record.at.timestamp() * 1_000_000),
            "lat": record.latency_s, "sh": record.shadow, "fb": record.fallback,
            "k": key_index, "n": int(matrix.shape[0]), "m": offset,
        }
        buffers.append(raw)
        offset += len(raw)
        predictions, scores = outputs_arrays(record.outputs)
        if isinstance(predictions, np.ndarray) and predictions.dtype.kind in _BINARY_KINDS \
                and predictions.ndim == 1:
            # Native byte order: Arrow takes no other.
            predictions = np.ascontiguousarray(predictions,
                                               dtype=predictions.dtype.newbyteorder("="))
            raw = predictions.tobytes()
            entry["p"] = [predictions.dtype.str, offset, len(predictions)]
            buffers.append(raw)
            offset += len(raw)
        else:
            entry["pl"] = predictions.tolist() if hasattr(predictions, "tolist") \
                else list(predictions)
        if isinstance(scores, np.ndarray):
            raw = scores.astype(np.float64, copy=False).tobytes()
            entry["s"] = [offset, len(scores)]
            buffers.append(raw)
            offset += len(raw)
        else:
            entry["sl"] = list(scores)
        entries.append(entry)
    header = orjson.dumps({"keys": [list(k) for k in keys], "entries": entries},
                          option=orjson.OPT_SERIALIZE_NUMPY, default=_plain_value)
    return b"".join((MAGIC, len(header).to_bytes(4, "big"), header, *buffers))


def decode(payload: bytes) -> list[dict[str, Any]]:
    """The entries of a frame payload, their arrays viewing ``payload`` (no copy)."""
    import numpy as np

    start = len(MAGIC) + 4
    size = int.from_bytes(payload[len(MAGIC):start], "big")
    header = orjson.loads(payload[start:start + size])
    body = memoryview(payload)[start + size:]
    keys = [tuple(k) for k in header["keys"]]
    out = []
    for e in header["entries"]:
        columns = keys[e["k"]]
        n = e["n"]
        matrix = np.frombuffer(body, np.float64, n * len(columns), e["m"]).reshape(
            len(columns), n)
        if "p" in e:
            dtype, at, count = e["p"]
            predictions: Any = np.frombuffer(body, np.dtype(dtype), count, at)
        else:
            predictions = e["pl"]
        if "s" in e:
            at, count = e["s"]
            scores: Any = np.frombuffer(body, np.float64, count, at)
        else:
            scores = e["sl"]
        out.append({"v": ENTRY_FORMAT, "id": e["id"], "ep": e["ep"], "ref": e["ref"],
                    "ver": e["ver"], "at": e["at"], "lat": e["lat"], "sh": e["sh"],
                    "fb": e["fb"], "m": matrix, "k": columns, "pred": predictions,
                    "score": scores})
    return out


def frames_table(entries: list[dict[str, Any]]) -> pa.Table | None:
    """The log table of decoded entries sharing one set of columns and output kinds, built
    with array operations only; None when they differ (the caller takes the general path)."""
    import numpy as np
    import pyarrow as pa

    keys = entries[0]["k"]
    first_pred, first_score = entries[0]["pred"], entries[0]["score"]
    pred_dtype = first_pred.dtype if isinstance(first_pred, np.ndarray) else None
    scored = isinstance(first_score, np.ndarray)
    counts = []
    for entry in entries:
        n = entry["m"].shape[1]
        pred, score = entry["pred"], entry["score"]
        if (entry["k"] != keys or len(pred) != n
                or (pred.dtype if isinstance(pred, np.ndarray) else None) != pred_dtype
                or isinstance(score, np.ndarray) != scored
                or len(score) != (n if scored else 0)):
            return None
        counts.append(n)
    total = sum(counts)
    columns = repeated_columns(entries, counts)
    if pred_dtype is not None:
        columns["prediction"] = pa.array(np.concatenate([e["pred"] for e in entries]))
    else:
        from itertools import chain

        columns["prediction"] = column_array(list(chain.from_iterable(
            e["pred"] for e in entries)))
    columns["score"] = (pa.array(np.concatenate([e["score"] for e in entries])) if scored
                        else pa.nulls(total))
    inputs = np.concatenate([e["m"] for e in entries], axis=1)
    for j, key in enumerate(keys):
        columns[INPUT_PREFIX + key] = pa.array(inputs[j])
    return pa.table(columns)


def to_columns_entry(entry: dict[str, Any]) -> dict[str, Any]:
    """A decoded entry as a plain format-2 column entry (``cols``), for the general path."""
    matrix = entry.pop("m")
    keys = entry.pop("k")
    entry["cols"] = [matrix.shape[1], {key: matrix[j].tolist() for j, key in enumerate(keys)}]
    for field in ("pred", "score"):
        value = entry[field]
        entry[field] = value.tolist() if hasattr(value, "tolist") else value
    return entry


def _plain_value(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def is_frame(payload: bytes) -> bool:
    return payload[:len(MAGIC)] == MAGIC
