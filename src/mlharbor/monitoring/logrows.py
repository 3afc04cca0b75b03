"""Turning a :class:`PredictionRecord` into log rows, and redacting chosen input columns.

One record answers one request, which may hold many rows; the log keeps one row per predicted
row: ``request_id``, ``row``, ``endpoint``, ``model_ref``, ``version``, ``at`` (epoch
microseconds, UTC), ``latency_s``, ``shadow``, ``fallback``, one ``in.<column>`` per input
column (after redaction), ``prediction`` and, for classifiers, ``score`` (the positive or top
class probability). A copy that did not answer (a shadow's failed copy) is one row with
``error`` (the error's class name), no inputs and no prediction; the ``error`` column exists
only in segments that hold such a row, so readers take a missing column as no errors.

Redaction is per endpoint and per column (:class:`Redaction`): ``drop`` removes the column,
``hash`` keeps a salted SHA-256 (joins and distinct counts still work, values do not leak),
``mask`` keeps only that a value was present. It runs before anything touches the disk.

The journal keeps one entry per *record*, not per row (:func:`record_entry`, format 2): the
inputs as received (or, when the endpoint has redaction rules, as redacted columns) and the
outputs as arrays, serialised by orjson in one call. Rows are expanded only at compaction,
column by column (:func:`entries_columns`), into the same columns :func:`record_rows` gives.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from mlharbor.core.clock import epoch_micros
from mlharbor.core.errors import ConfigError
from mlharbor.core.records import PredictionRecord

INPUT_PREFIX = "in."
ACTIONS = ("drop", "hash", "mask")
MASK = "***"


class Redaction:
    """Per-endpoint column rules: ``{"churn": {"email": "drop", "phone": "hash"}}``."""

    def __init__(self, rules: Mapping[str, Mapping[str, str]] | None = None, *,
                 salt: str = "mlharbor") -> None:
        self.rules: dict[str, dict[str, str]] = {}
        for endpoint, columns in (rules or {}).items():
            for column, action in columns.items():
                if action not in ACTIONS:
                    raise ConfigError(
                        f"Redaction of {endpoint}.{column} is {action!r}.",
                        hint=f"Use one of {', '.join(ACTIONS)}.",
                    )
            self.rules[endpoint] = dict(columns)
        self._salt = salt.encode()

    def apply(self, endpoint: str, row: dict[str, Any]) -> dict[str, Any]:
        rules = self.rules.get(endpoint) or self.rules.get("*")
        if not rules:
            return row
        for column, action in rules.items():
            if column not in row:
                continue
            if action == "drop":
                del row[column]
            elif row[column] is not None:
                row[column] = self._hash(row[column]) if action == "hash" else MASK
        return row

    def rules_for(self, endpoint: str) -> dict[str, str] | None:
        return self.rules.get(endpoint) or self.rules.get("*") or None

    def apply_columns(self, rules: Mapping[str, str], columns: dict[str, list[Any]]
                      ) -> dict[str, list[Any]]:
        """:meth:`apply` on column lists (``{"email": [...], ...}``), in place."""
        for column, action in rules.items():
            values = columns.get(column)
            if values is None:
                continue
            if action == "drop":
                del columns[column]
            elif action == "hash":
                columns[column] = [None if v is None else self._hash(v) for v in values]
            else:
                columns[column] = [None if v is None else MASK for v in values]
        return columns

    def _hash(self, value: Any) -> str:
        return hashlib.sha256(self._salt + str(value).encode()).hexdigest()[:32]


def record_rows(record: PredictionRecord, redaction: Redaction | None = None
                ) -> list[dict[str, Any]]:
    """The log rows of one record (inputs redacted)."""
    inputs = input_rows(record.inputs)
    predictions, scores = _outputs(record.outputs)
    count = max(len(inputs), len(predictions), 1)
    at = epoch_micros(record.at)
    rows = []
    for i in range(count):
        features = dict(inputs[i]) if i < len(inputs) else {}
        if redaction is not None:
            features = redaction.apply(record.endpoint, features)
        row: dict[str, Any] = {
            "request_id": record.request_id, "row": i, "endpoint": record.endpoint,
            "model_ref": record.model_ref, "version": record.served_version, "at": at,
            "latency_s": record.latency_s, "shadow": record.shadow, "fallback": record.fallback,
            "prediction": _scalar(predictions[i]) if i < len(predictions) else None,
            "score": scores[i] if i < len(scores) else None,
        }
        if record.error is not None:
            row["error"] = record.error
        for key, value in features.items():
            row[INPUT_PREFIX + str(key)] = _scalar(value)
        rows.append(row)
    return rows


def answers(table: Any) -> Any:
    """The rows of a log table (a ``pyarrow.Table``) that hold an answer: without the rows of
    copies that failed (``error`` set), and without the ``error`` column. Readers that mean
    answers (drift, performance) read through this; a table without the column (segments
    older than it, or none failed) is returned as it is."""
    import pyarrow.compute as pc

    if "error" not in table.column_names:
        return table
    kept = table.filter(pc.is_null(table["error"])) if table.num_rows else table
    return kept.drop_columns(["error"])


def input_rows(data: Any) -> list[dict[str, Any]]:
    """Rows as dicts from the shapes serving accepts (records, columns, one row, frames)."""
    if data is None:
        return []
    if hasattr(data, "to_dict") and hasattr(data, "columns"):  # pandas DataFrame
        return list(data.to_dict(orient="records"))
    if isinstance(data, Mapping):
        if "inputs" in data and len(data) == 1:
            return input_rows(data["inputs"])
        values = list(data.values())
        if values and all(isinstance(v, list | tuple) or hasattr(v, "tolist") for v in values):
            columns = {k: list(v.tolist() if hasattr(v, "tolist") else v)
                       for k, v in data.items()}
            n = max(len(v) for v in columns.values())
            return [{k: v[i] if i < len(v) else None for k, v in columns.items()}
                    for i in range(n)]
        return [dict(data)]
    if hasattr(data, "tolist"):
        data = data.tolist()
    if isinstance(data, list | tuple):
        rows: list[dict[str, Any]] = []
        for item in data:
            if isinstance(item, Mapping):
                rows.append(dict(item))
            elif isinstance(item, list | tuple):
                rows.append({f"f{j}": v for j, v in enumerate(item)})
            else:
                return [{f"f{j}": v for j, v in enumerate(data)}]  # one row of values
        return rows
    return [{"value": data}]


def _split_outputs(outputs: Any) -> tuple[Any, Any]:
    """(predictions, probabilities) from serving's Outputs, a mapping, or bare predictions."""
    predictions = getattr(outputs, "predictions", None)
    probabilities = getattr(outputs, "probabilities", None)
    if predictions is None:
        if isinstance(outputs, Mapping):
            predictions = outputs.get("predictions", outputs.get("outputs"))
            probabilities = outputs.get("probabilities")
        else:
            predictions = outputs
    return predictions, probabilities


def _outputs(outputs: Any) -> tuple[list[Any], list[float | None]]:
    """Predictions and a score per row from serving's outputs (or plain lists)."""
    if outputs is None:
        return [], []
    predictions, probabilities = _split_outputs(outputs)
    preds = predictions.tolist() if hasattr(predictions, "tolist") else list(
        predictions if isinstance(predictions, list | tuple) else [predictions])
    scores: list[float | None] = []
    if probabilities is not None:
        proba = probabilities.tolist() if hasattr(probabilities, "tolist") else probabilities
        for row in proba:
            try:
                if isinstance(row, list | tuple):
                    scores.append(float(row[-1]) if len(row) == 2 else float(max(row)))
                else:
                    scores.append(float(row))
            except (TypeError, ValueError):  # not one number per class: no score, not a loss
                scores.append(None)
    return preds, scores


def _scalar(value: Any) -> Any:
    if hasattr(value, "item") and not isinstance(value, list | tuple | dict):
        try:
            return value.item()
        except (ValueError, AttributeError):
            return str(value)
    if isinstance(value, list | tuple | dict):
        return str(value)
    return value


# -- format 2: one journal entry per record, rows expanded column-wise at compaction ---------

ENTRY_FORMAT = 2
FIXED_COLUMNS = ("request_id", "row", "endpoint", "model_ref", "version", "at", "latency_s",
                 "shadow", "fallback", "prediction", "score")


def record_entry(record: PredictionRecord, redaction: Redaction | None = None
                 ) -> dict[str, Any]:
    """The journal entry of one record (serialise with ``orjson`` and :func:`entry_default`).

    ``in`` holds the inputs as received; records of numbers only are kept as one binary
    matrix instead (``x``, see :func:`_matrix`); when the endpoint has redaction rules the
    inputs are columnised and redacted here (``cols``: ``[rows, {column: values}]``), so
    nothing redacted reaches the disk.
    """
    predictions, scores = outputs_arrays(record.outputs)
    entry: dict[str, Any] = {
        "v": ENTRY_FORMAT, "id": record.request_id, "ep": record.endpoint,
        "ref": record.model_ref, "ver": record.served_version,
        "at": epoch_micros(record.at), "lat": record.latency_s,
        "sh": record.shadow, "fb": record.fallback, "pred": predictions, "score": scores,
    }
    if record.error is not None:  # a copy that did not answer: no outputs, no inputs
        entry["er"] = record.error
    rules = redaction.rules_for(record.endpoint) if redaction is not None else None
    if rules and redaction is not None:
        count, columns = input_columns(record.inputs)
        entry["cols"] = [count, redaction.apply_columns(rules, columns)]
        return entry
    inputs = record.inputs
    if type(inputs) is list and len(inputs) >= MATRIX_MIN_ROWS:
        matrix = _matrix(inputs)
        if matrix is not None:
            entry["x"] = matrix
            return entry
    entry["in"] = _plain(inputs)
    return entry


# Records of at least this many rows, all numbers under the same keys, are journaled as one
# binary matrix (base64 in the entry) instead of JSON numbers: no float formatting or parsing.
MATRIX_MIN_ROWS = 8


def _matrix(rows: list[Any]) -> dict[str, Any] | None:
    """``{"k": keys, "n": rows, "f": float64 columns, "i": int columns, "d": int64 columns}``
    for records whose rows all have the same keys (same order) and only finite numbers; else
    None. Columns holding only ints stay int64 (``i`` lists them), as Arrow would type them."""
    import base64
    from itertools import chain
    from operator import itemgetter

    import numpy as np

    first = rows[0]
    if type(first) is not dict or len(first) < 2:
        return None
    keys = tuple(first)
    width = len(keys)
    if not all(type(k) is str for k in keys):
        return None
    try:  # every row holds the first row's keys (KeyError otherwise) and no others
        if sum(map(len, rows)) != width * len(rows):
            return None
        values = list(chain.from_iterable(map(itemgetter(*keys), rows)))
    except (KeyError, TypeError, IndexError):
        return None
    kinds = set(map(type, values))
    if not kinds <= {float, int}:
        return None
    try:
        matrix = np.fromiter(values, np.float64, len(values)).reshape(len(rows), width)
        ints = [j for j in range(width) if int in kinds
                and set(map(type, values[j::width])) == {int}]
        int_matrix = np.array([values[j::width] for j in ints], dtype=np.int64)
    except (OverflowError, ValueError, TypeError):
        return None
    if not np.isfinite(matrix).all():  # NaN and infinities were nulls in JSON rows
        return None
    return {"k": list(keys), "n": len(rows), "i": ints,
            "f": base64.b64encode(np.ascontiguousarray(matrix.T).tobytes()).decode(),
            "d": base64.b64encode(int_matrix.tobytes()).decode()}


def _matrix_columns(entry: dict[str, Any]) -> tuple[Any, Any]:
    import base64

    import numpy as np

    x = entry["x"]
    n, width = x["n"], len(x["k"])
    floats = np.frombuffer(base64.b64decode(x["f"]), np.float64).reshape(width, n)
    ints = np.frombuffer(base64.b64decode(x["d"]), np.int64).reshape(len(x["i"]), n)
    return floats, ints


def matrix_to_cols(entry: dict[str, Any]) -> dict[str, Any]:
    """A matrix entry as a plain column entry (``cols``), for the general path."""
    floats, ints = _matrix_columns(entry)
    x = entry.pop("x")
    columns = {key: floats[j].tolist() for j, key in enumerate(x["k"])}
    for row, j in enumerate(x["i"]):
        columns[x["k"][j]] = ints[row].tolist()
    entry["cols"] = [x["n"], columns]
    return entry


def matrix_table(entries: list[dict[str, Any]]) -> Any:
    """The table of matrix entries sharing keys and int columns, one prediction (and zero or
    one score) per row, built with array operations only; None when they do not qualify."""
    import numpy as np
    import pyarrow as pa

    head = entries[0]["x"]
    keys, int_columns = head["k"], head["i"]
    counts = []
    scored = bool(entries[0]["score"])
    for entry in entries:
        x = entry["x"]
        n = x["n"]
        if (x["k"] != keys or x["i"] != int_columns or len(entry["pred"]) != n
                or len(entry["score"]) != (n if scored else 0)):
            return None
        counts.append(n)
    total = sum(counts)
    columns = repeated_columns(entries, counts)
    from itertools import chain

    columns["prediction"] = column_array(list(chain.from_iterable(e["pred"] for e in entries)))
    columns["score"] = (column_array(list(chain.from_iterable(e["score"] for e in entries)))
                        if scored else pa.nulls(total))
    parts = [_matrix_columns(e) for e in entries]
    floats = np.concatenate([p[0] for p in parts], axis=1)
    ints = np.concatenate([p[1] for p in parts], axis=1) if int_columns else None
    for j, key in enumerate(keys):
        if j in int_columns and ints is not None:
            columns[INPUT_PREFIX + key] = pa.array(ints[int_columns.index(j)])
        else:
            columns[INPUT_PREFIX + key] = pa.array(floats[j])
    return pa.table(columns)


def repeated_columns(entries: list[dict[str, Any]], counts: list[int]) -> dict[str, Any]:
    """The per-record columns (request id, endpoint, times ...) of entries holding ``counts``
    rows each, repeated once per row, and ``row`` (the row's index in its request)."""
    import numpy as np
    import pyarrow as pa

    total = sum(counts)
    index = pa.array(np.repeat(np.arange(len(entries)), counts))
    starts = np.repeat(np.cumsum([0, *counts[:-1]]), counts)
    columns: dict[str, Any] = {}
    for name, field in (("request_id", "id"), ("row", None), ("endpoint", "ep"),
                        ("model_ref", "ref"), ("version", "ver"), ("at", "at"),
                        ("latency_s", "lat"), ("shadow", "sh"), ("fallback", "fb")):
        if field is None:
            columns[name] = pa.array(np.arange(total, dtype=np.int64) - starts)
            continue
        columns[name] = column_array([e[field] for e in entries]).take(index)
    return columns


def entry_default(value: Any) -> Any:
    """orjson's fallback for what it cannot serialise natively (frames, object arrays...)."""
    if hasattr(value, "to_dict") and hasattr(value, "columns"):  # pandas DataFrame
        return value.to_dict(orient="list")
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, tuple | set | frozenset):
        return list(value)
    return str(value)


def _plain(data: Any) -> Any:
    if hasattr(data, "to_dict") and hasattr(data, "columns"):  # a frame: its columns
        return {"inputs": data.to_dict(orient="list")} if len(data.columns) else []
    return data


def outputs_arrays(outputs: Any) -> tuple[Any, Any]:
    """Predictions and one score per row, as arrays or lists (no per-row Python work)."""
    if outputs is None:
        return [], []
    predictions, probabilities = _split_outputs(outputs)
    if predictions is None or not (isinstance(predictions, list | tuple)
                                   or hasattr(predictions, "tolist")):
        predictions = [predictions]
    elif getattr(predictions, "ndim", 1) == 0:
        predictions = [predictions.tolist()]
    if probabilities is None:
        return predictions, []
    try:
        import numpy as np

        proba = np.asarray(probabilities, dtype=np.float64)
        if proba.ndim == 2:
            scores = proba[:, -1] if proba.shape[1] == 2 else proba.max(axis=1)
        elif proba.ndim == 1:
            scores = proba
        else:
            raise ValueError(proba.shape)
        return predictions, np.ascontiguousarray(scores)
    except (ValueError, TypeError):  # ragged or odd shapes: the row-by-row rule
        return predictions, _outputs({"predictions": [], "probabilities": probabilities})[1]


def input_columns(data: Any) -> tuple[int, dict[str, list[Any]]]:
    """``(rows, {column: values})`` of the shapes :func:`input_rows` accepts, column-wise
    (the same rows, missing values as None), without building a dict per row."""
    if data is None:
        return 0, {}
    if hasattr(data, "to_dict") and hasattr(data, "columns"):  # pandas DataFrame
        return input_columns({"inputs": data.to_dict(orient="list")} if len(data.columns)
                             else [])
    if isinstance(data, Mapping):
        if "inputs" in data and len(data) == 1:
            return input_columns(data["inputs"])
        values = list(data.values())
        if values and all(isinstance(v, list | tuple) or hasattr(v, "tolist") for v in values):
            columns = {str(k): list(v.tolist() if hasattr(v, "tolist") else v)
                       for k, v in data.items()}
            count = max(len(v) for v in columns.values())
            for v in columns.values():
                if len(v) < count:
                    v.extend([None] * (count - len(v)))
            return count, columns
        return 1, {str(k): [v] for k, v in data.items()}
    if hasattr(data, "tolist"):
        data = data.tolist()
    if isinstance(data, list | tuple):
        if not data:
            return 0, {}
        first = data[0]
        if isinstance(first, Mapping):
            if len(data) == 1:
                return 1, {str(k): [v] for k, v in first.items()}
            # Every row holds the first row's keys and no more: columns by key, no row dicts.
            keys = list(first)
            try:
                if sum(map(len, data)) == len(keys) * len(data):
                    return len(data), {str(k): [item[k] for item in data] for k in keys}
            except (KeyError, TypeError, IndexError):
                pass
        elif isinstance(first, list | tuple):
            width = len(first)
            if all(isinstance(item, list | tuple) and len(item) == width for item in data):
                return len(data), {f"f{j}": list(col)
                                   for j, col in enumerate(zip(*data, strict=True))}
        return _rows_columns(input_rows(data))
    return 1, {"value": [data]}


def _rows_columns(rows: list[dict[str, Any]]) -> tuple[int, dict[str, list[Any]]]:
    columns: dict[str, list[Any]] = {}
    for i, row in enumerate(rows):
        for key, value in row.items():
            column = columns.get(str(key))
            if column is None:
                column = columns[str(key)] = [None] * len(rows)
            column[i] = value
    return len(rows), columns


def entries_columns(entries: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """The log rows of format-2 entries, as columns (:data:`FIXED_COLUMNS`, then ``in.*``)."""
    out: dict[str, list[Any]] = {name: [] for name in FIXED_COLUMNS}
    request_id, row, endpoint, model_ref = (out["request_id"], out["row"], out["endpoint"],
                                            out["model_ref"])
    version, at, latency, shadow = out["version"], out["at"], out["latency_s"], out["shadow"]
    fallback, prediction, score = out["fallback"], out["prediction"], out["score"]
    inputs: dict[str, list[Any]] = {}
    errors: list[Any] | None = None  # the ``error`` column, once an entry has one
    total = 0
    for entry in entries:
        error = entry.get("er")
        if error is not None and errors is None:
            errors = [None] * total
        if "cols" in entry:
            count_in, columns = entry["cols"]
        else:
            count_in, columns = input_columns(entry.get("in"))
        preds, scores = entry["pred"], entry["score"]
        count = max(count_in, len(preds), 1)
        if count == 1:  # the common one-row request: appends, no padding unless keys differ
            request_id.append(entry["id"])
            row.append(0)
            endpoint.append(entry["ep"])
            model_ref.append(entry["ref"])
            version.append(entry["ver"])
            at.append(entry["at"])
            latency.append(entry["lat"])
            shadow.append(entry["sh"])
            fallback.append(entry["fb"])
            prediction.append(preds[0] if preds else None)
            score.append(scores[0] if scores else None)
            if errors is not None:
                errors.append(error)
            for key, values in columns.items():
                column = inputs.get(key)
                if column is None:
                    column = inputs[key] = [None] * total
                column.append(values[0] if values else None)
            total += 1
            if len(columns) != len(inputs):
                for column in inputs.values():
                    if len(column) < total:
                        column.append(None)
            continue
        request_id.extend([entry["id"]] * count)
        row.extend(range(count))
        endpoint.extend([entry["ep"]] * count)
        model_ref.extend([entry["ref"]] * count)
        version.extend([entry["ver"]] * count)
        at.extend([entry["at"]] * count)
        latency.extend([entry["lat"]] * count)
        shadow.extend([entry["sh"]] * count)
        fallback.extend([entry["fb"]] * count)
        prediction.extend(preds[:count])
        score.extend(scores[:count])
        if errors is not None:
            errors.extend([error] * count)
        for key, values in columns.items():
            column = inputs.get(key)
            if column is None:
                column = inputs[key] = [None] * total
            column.extend(values[:count])
        total += count
        for column in (prediction, score, *inputs.values()):
            if len(column) < total:
                column.extend([None] * (total - len(column)))
    if errors is not None:
        out["error"] = errors
    for key, column in inputs.items():
        out[INPUT_PREFIX + key] = column
    return out


def column_array(values: list[Any]) -> Any:
    """One Arrow column, typed as :func:`record_rows` + ``rows_table`` would type it: nested
    values (lists, dicts) as their text, a column whose values mix types as text.

    Arrow's type inference walks every value in Python; the value types are found here in one
    C-speed pass instead, and the common columns (numbers, text, flags) converted with the type
    given, which is many times faster and gives the same column."""
    import pyarrow as pa

    kinds = set(map(type, values))
    kinds.discard(type(None))
    known = _KNOWN_TYPES.get(frozenset(kinds))
    if known is not None:
        try:
            return pa.array(values, known())
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            pass  # e.g. an integer past 64 bits: as Arrow's inference would handle it
    try:
        array = pa.array(values)
        if not pa.types.is_nested(array.type):
            return array
        values = [_scalar(v) for v in values]
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        return pa.array([None if v is None else str(v) for v in values], pa.string())


def _arrow_type(name: str) -> Any:
    def make() -> Any:
        import pyarrow as pa

        return getattr(pa, name)()
    return make


# What Arrow infers for columns holding only these Python types (and None).
_KNOWN_TYPES = {
    frozenset({float}): _arrow_type("float64"),
    frozenset({int, float}): _arrow_type("float64"),
    frozenset({int}): _arrow_type("int64"),
    frozenset({str}): _arrow_type("string"),
    frozenset({bool}): _arrow_type("bool_"),
}
