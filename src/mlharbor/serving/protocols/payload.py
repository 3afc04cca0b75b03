"""What every protocol does with bodies: parse JSON with a clear error, turn arrays into JSON."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from mlharbor.core.errors import InvalidInputError
from mlharbor.serving.model import numeric_rows

if TYPE_CHECKING:
    from mlharbor.serving.core import Answer


def parse_json(body: bytes, *, what: str = "request body") -> Any:
    if not body:
        raise InvalidInputError(f"The {what} is empty; expected JSON.", field="body",
                                expected="JSON", received="empty body")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInputError(f"The {what} is not valid JSON: {exc}.", field="body",
                                expected="JSON", received=body[:80].decode("utf-8", "replace")
                                ) from exc


def jsonable(values: np.ndarray | None) -> Any:
    """An array orjson can write natively (numbers), or a list (strings, objects)."""
    if values is None:
        return None
    if values.dtype.kind in "biuf" and values.flags.c_contiguous:
        return values
    return values.tolist()


def answer_headers(answer: Answer) -> list[tuple[bytes, bytes]]:
    """The model and version that answered (encoded once per loaded version), and the
    fallback that did, if any."""
    headers = list(answer.model.answer_headers)
    if answer.fallback is not None:
        headers.append((b"x-mlharbor-fallback", str(answer.fallback["to"]).encode()))
    return headers


def records_or_columns(body: Any, *, field: str = "body") -> Any:
    """Records ``[{col: value}]``, one record, or ``{"columns": [...], "data": [[...]]}``."""
    if isinstance(body, list):
        # Only the first element is checked here; the signature check catches the rest.
        if body and type(body[0]) is not dict:
            raise InvalidInputError(
                "Records must all be JSON objects of column -> value.", field=field,
                expected="[{column: value}, ...]", received=type(body[0]).__name__)
        return body[0] if len(body) == 1 else body
    if isinstance(body, dict):
        if "columns" in body or "data" in body:
            return split_frame(body, field=field)
        return body
    raise InvalidInputError(
        "The body must be records ([{column: value}]) or {\"columns\": [...], \"data\": "
        "[[...]]}.", field=field, expected="list of objects or {columns, data}",
        received=type(body).__name__)


def split_frame(body: dict[str, Any], *, field: str, numeric: bool = False) -> Any:
    """``{"columns": [...], "data": [[...]]}`` as a dict of column -> values, or, for a model
    of numbers only (``numeric``) and rows of plain numbers, as
    :class:`~mlharbor.serving.model.NumericRows`: one ``np.array`` over the parsed rows, no
    columns in between."""
    columns, data = body.get("columns"), body.get("data")
    if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
        raise InvalidInputError("'columns' must be a list of column names.",
                                field=f"{field}.columns", expected="list of strings",
                                received=type(columns).__name__)
    if numeric and len(set(columns)) == len(columns):
        rows = numeric_rows(data, tuple(columns))
        if rows is not None:
            return rows
    if not isinstance(data, list) or not all(isinstance(r, list) for r in data):
        raise InvalidInputError("'data' must be a list of rows (lists of values).",
                                field=f"{field}.data", expected="list of lists",
                                received=type(data).__name__)
    width = len(columns)
    for i, row in enumerate(data):
        if len(row) != width:
            raise InvalidInputError(
                f"Row {i} of 'data' has {len(row)} values; 'columns' names {width}.",
                field=f"{field}.data[{i}]", expected=width, received=len(row))
    if len(set(columns)) != width:
        raise InvalidInputError("'columns' names a column twice.", field=f"{field}.columns")
    return {name: [row[i] for row in data] for i, name in enumerate(columns)}
