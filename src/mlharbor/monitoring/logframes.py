"""Binary journal frames for records that carry their inputs as a matrix of numbers.

Serving validates the inputs of a model of numbers into a float64 matrix
(:attr:`PredictionRecord.matrix`); formatting those numbers as JSON text for the journal and
parsing them back at compaction cost more CPU than the prediction itself on a 64-row request,
and handling each record on its own cost more than the prediction of a one-row request. So
such records travel column-wise, in *blocks*: the records of one flush that share an endpoint,
input columns and output kinds are joined into one matrix, one prediction array and one score
array, written as raw bytes, with their per-record fields (request id, times, ...) as lists.
Both the flusher and the compactor then do a few array operations per block instead of Python
work per record.

Layout of a frame's payload (after :class:`~.segments.Sealer` opening, when sealed)::

    MAGIC | header length (4 bytes, big-endian) | header (JSON) | buffers

The header lists the blocks: endpoint, columns, rows per record, the per-record fields, and
where each array's bytes are (inputs column-major, so a column is one run). JSON frames
(:func:`~.logrows.record_entry`) never start with ``MAGIC``'s NUL byte, so both kinds share
one journal. A decoded block is one item ``{"v": 2, "ep": ..., "block": {...}}`` whose arrays
view the payload without copying.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain
from typing import TYPE_CHECKING, Any

import orjson

from mlharbor.core.clock import epoch_micros
from mlharbor.core.records import PredictionRecord
from mlharbor.monitoring.logrows import (
    ENTRY_FORMAT,
    INPUT_PREFIX,
    Redaction,
    column_array,
)

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

MAGIC = b"\x00MLHB2"
# Prediction arrays of these kinds travel as bytes (bool, signed, unsigned, float); text and
# objects go in the header as JSON lists.
_BINARY_KINDS = "biuf"
# Per-record fields of a block, in the names of the JSON entries (see logrows.record_entry).
META = ("id", "ref", "ver", "at", "lat", "sh", "fb")


def split_records(records: Sequence[PredictionRecord], redaction: Redaction | None
                  ) -> tuple[list[PredictionRecord], list[PredictionRecord]]:
    """(records for a binary frame, the rest): see :func:`binary_ok`."""
    binary: list[PredictionRecord] = []
    other: list[PredictionRecord] = []
    for record in records:
        (binary if binary_ok(record, redaction) else other).append(record)
    return binary, other


def binary_ok(record: PredictionRecord, redaction: Redaction | None) -> bool:
    """Whether ``record`` goes in a binary frame. It does when it carries its matrix, its
    endpoint has no redaction rules (redaction needs the values as Python objects), and its
    outputs are serving's: a 1-D prediction array, probabilities absent or one row per row. A
    record of a copy that failed (``error`` set) has no outputs: it takes the JSON path, whose
    entries carry the error (frames have no field for it)."""
    matrix = record.matrix
    if matrix is None or record.error is not None or record.columns is None:
        return False
    import numpy as np

    outputs = record.outputs
    predictions = getattr(outputs, "predictions", None)
    probabilities = getattr(outputs, "probabilities", None)
    return bool(type(matrix) is np.ndarray and matrix.ndim == 2
                and type(predictions) is np.ndarray and predictions.ndim == 1
                and predictions.dtype.kind != "O"
                and len(predictions) == matrix.shape[0]
                and (probabilities is None or (
                    type(probabilities) is np.ndarray and probabilities.ndim == 2
                    and probabilities.shape[0] == matrix.shape[0]
                    and probabilities.shape[1] >= 1 and probabilities.dtype.kind in "fiu"))
                and (redaction is None or not redaction.rules_for(record.endpoint)))


def without_inputs(record: PredictionRecord) -> PredictionRecord:
    """``record`` without its inputs as received, for one whose matrix carries them (a binary
    frame stores nothing else). Positional on purpose: ``dataclasses.replace`` costs several
    times more, on the event loop; tests pin the field order this relies on."""
    return PredictionRecord(record.request_id, record.endpoint, record.model_ref,
                            record.served_version, None, record.outputs, record.latency_s,
                            record.at, record.shadow, record.fallback, record.matrix,
                            record.columns, record.error)


def with_inputs(record: PredictionRecord) -> PredictionRecord:
    """A record :func:`without_inputs` took the inputs of, with them back as columns of its
    matrix (for the JSON path, should a binary frame fail to encode)."""
    import dataclasses

    if record.inputs is not None or record.matrix is None or record.columns is None:
        return record
    matrix = record.matrix
    return dataclasses.replace(record, inputs={
        name: matrix[:, j].tolist() for j, name in enumerate(record.columns)})


def encode(records: Sequence[PredictionRecord]) -> bytes:
    """One frame payload holding ``records`` (each accepted by :func:`split_records`)."""
    return b"".join(encode_parts(records))


def encode_parts(records: Sequence[PredictionRecord]) -> list[bytes | memoryview]:
    """:func:`encode`'s payload as its parts (the magic and header, then each array's bytes),
    which the journal checksums and writes one after the other: joining them would copy every
    number once more, into megabytes of freshly allocated pages."""
    import numpy as np

    groups: dict[tuple[Any, ...], list[PredictionRecord]] = {}
    for record in records:
        outputs = record.outputs
        proba = outputs.probabilities
        key = (record.endpoint, record.columns, outputs.predictions.dtype.str,
               None if proba is None else proba.shape[1])
        groups.setdefault(key, []).append(record)
    blocks: list[dict[str, Any]] = []
    buffers: list[bytes | memoryview] = []
    offset = 0

    def put(array: np.ndarray) -> int:
        # The array's own bytes (contiguous), written as they lie: no copy here.
        nonlocal offset
        at = offset
        raw = array.data.cast("B") if array.size else b""
        buffers.append(raw)
        offset += len(raw)
        return at

    for (endpoint, columns, dtype, width), group in groups.items():
        counts = [len(r.outputs.predictions) for r in group]
        block: dict[str, Any] = {
            "ep": endpoint, "k": list(columns), "n": counts,
            "m": put(_columns_of(group, len(columns), sum(counts))),
            "id": [r.request_id for r in group], "ref": [r.model_ref for r in group],
            "ver": [r.served_version for r in group],
            "at": [epoch_micros(r.at) for r in group],
            "lat": [r.latency_s for r in group], "sh": [r.shadow for r in group],
            "fb": [r.fallback for r in group],
        }
        predictions = np.concatenate([r.outputs.predictions for r in group])
        if predictions.dtype.kind in _BINARY_KINDS:
            # Native byte order: Arrow takes no other.
            block["p"] = [np.dtype(dtype).newbyteorder("=").str,
                          put(np.ascontiguousarray(predictions,
                                                   predictions.dtype.newbyteorder("=")))]
        else:
            block["pl"] = predictions.tolist()
        if width is not None:
            proba = np.concatenate([r.outputs.probabilities for r in group]).astype(
                np.float64, copy=False)
            scores = proba[:, -1] if width == 2 else proba.max(axis=1)
            block["s"] = put(np.ascontiguousarray(scores))
        blocks.append(block)
    header = orjson.dumps({"blocks": blocks}, option=orjson.OPT_SERIALIZE_NUMPY,
                          default=_plain_value)
    return [MAGIC + len(header).to_bytes(4, "big") + header, *buffers]


def _columns_of(group: Sequence[PredictionRecord], width: int, rows: int) -> np.ndarray:
    """The records' matrices, one after the other, column-major (a column is one run): each
    value copied once, straight into its place (joining the transposed views), where joining
    and then transposing copied it twice."""
    import numpy as np

    out = np.empty((width, rows), np.float64)
    np.concatenate([r.matrix.T for r in group], axis=1, out=out, casting="unsafe")
    return out


def decode(payload: bytes | memoryview) -> list[dict[str, Any]]:
    """The blocks of a frame payload, their arrays viewing ``payload`` (no copy)."""
    import numpy as np

    start = len(MAGIC) + 4
    size = int.from_bytes(payload[len(MAGIC):start], "big")
    header = orjson.loads(payload[start:start + size])
    body = memoryview(payload)[start + size:]
    out = []
    for b in header["blocks"]:
        rows = sum(b["n"])
        width = len(b["k"])
        block: dict[str, Any] = {name: b[name] for name in META}
        block["n"], block["k"] = b["n"], tuple(b["k"])
        block["m"] = np.frombuffer(body, np.float64, rows * width, b["m"]).reshape(width, rows)
        block["pred"] = (np.frombuffer(body, np.dtype(b["p"][0]), rows, b["p"][1])
                         if "p" in b else b["pl"])
        block["score"] = np.frombuffer(body, np.float64, rows, b["s"]) if "s" in b else None
        out.append({"v": ENTRY_FORMAT, "ep": b["ep"], "block": block})
    return out


def blocks_table(items: list[dict[str, Any]]) -> pa.Table | None:
    """The log table of decoded blocks that share columns and output kinds, built with array
    operations only; None when they differ (the caller takes the general path)."""
    import numpy as np
    import pyarrow as pa

    blocks = [item["block"] for item in items]
    first = blocks[0]
    binary = isinstance(first["pred"], np.ndarray)
    kind = first["pred"].dtype if binary else None
    scored = first["score"] is not None
    for block in blocks[1:]:
        if (block["k"] != first["k"] or isinstance(block["pred"], np.ndarray) != binary
                or (binary and block["pred"].dtype != kind)
                or (block["score"] is not None) != scored):
            return None
    counts = list(chain.from_iterable(b["n"] for b in blocks))
    total = sum(counts)
    index = pa.array(np.repeat(np.arange(len(counts)), counts))
    starts = np.repeat(np.cumsum([0, *counts[:-1]]), counts)
    columns: dict[str, Any] = {}
    for name, field in (("request_id", "id"), ("row", None), ("endpoint", None),
                        ("model_ref", "ref"), ("version", "ver"), ("at", "at"),
                        ("latency_s", "lat"), ("shadow", "sh"), ("fallback", "fb")):
        if name == "row":
            columns[name] = pa.array(np.arange(total, dtype=np.int64) - starts)
        elif name == "endpoint":
            columns[name] = column_array(list(chain.from_iterable(
                [item["ep"]] * len(item["block"]["n"]) for item in items))).take(index)
        else:
            columns[name] = column_array(list(chain.from_iterable(
                b[field] for b in blocks))).take(index)
    # The arrays of the blocks become the chunks of their columns: Arrow wraps each block's
    # numbers where they lie (the journal payload) and the Parquet writer reads them from
    # there, where joining them first copied every input value once more (at 64 rows a
    # request, that copy was about a third of compaction's CPU).
    columns["prediction"] = (pa.chunked_array([b["pred"] for b in blocks]) if binary
                             else column_array(list(chain.from_iterable(
                                 b["pred"] for b in blocks))))
    columns["score"] = (pa.chunked_array([b["score"] for b in blocks]) if scored
                        else pa.nulls(total))
    for j, key in enumerate(first["k"]):
        columns[INPUT_PREFIX + key] = pa.chunked_array([b["m"][j] for b in blocks])
    # The input columns come from matrices of numbers and never hold a null: declared so, the
    # Parquet writer encodes no definition levels for them, which halved its CPU on these
    # columns (most of a segment's bytes). Readers see the same type (a scan joins segments
    # with nullable and required columns permissively).
    return pa.table(columns, schema=pa.schema([
        pa.field(name, column.type, nullable=not name.startswith(INPUT_PREFIX))
        for name, column in columns.items()]))


def block_entries(item: dict[str, Any]) -> list[dict[str, Any]]:
    """A decoded block as plain format-2 column entries (``cols``), for the general path."""
    block = item["block"]
    matrix, keys = block["m"], block["k"]
    pred, score = block["pred"], block["score"]
    pred = pred.tolist() if hasattr(pred, "tolist") else list(pred)
    score = [] if score is None else score.tolist()
    out = []
    start = 0
    for i, n in enumerate(block["n"]):
        stop = start + n
        entry = {"v": ENTRY_FORMAT, "ep": item["ep"], **{f: block[f][i] for f in META}}
        entry["cols"] = [n, {key: matrix[j, start:stop].tolist() for j, key in enumerate(keys)}]
        entry["pred"] = pred[start:stop]
        entry["score"] = score[start:stop] if score else []
        out.append(entry)
        start = stop
    return out


def _plain_value(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def is_frame(payload: bytes | memoryview) -> bool:
    return payload[:len(MAGIC)] == MAGIC
