"""The model signature: what a model takes in and gives back, and the checks on every request.

A :class:`Signature` lists the input columns (name, dtype, nullability, known categories) and the
outputs (task, class labels). It is inferred from a sample (pandas DataFrame, NumPy array, list of
dicts), stored as JSON in the bundle manifest, and compiled once into an :class:`InputValidator`
that serving calls on every request.

The validator is on the hot path of serving, so it avoids pandas for dict and array input, keeps
one precomputed converter per column and checks with cheap NumPy reductions. Per-model policies
decide what happens to extra columns (``error`` | ``ignore``) and to categories the model never
saw (``error`` | ``allow``). Every mismatch raises :class:`SchemaError` naming the column, what
was expected and what was received.

NumPy is imported at module level (cheap, and needed by every caller); pandas only when a
DataFrame is given or asked for.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from mlharbor.core.errors import SchemaError, describe_value

DTYPES: tuple[str, ...] = ("float64", "float32", "int64", "int32", "bool", "string")
_NUMPY_DTYPE: dict[str, Any] = {
    "float64": np.float64, "float32": np.float32, "int64": np.int64, "int32": np.int32,
    "bool": np.bool_, "string": object,
}
# Python scalar types accepted without inspection for numeric columns (None becomes NaN).
_FAST_NUMBER_TYPES = frozenset({int, float, np.float64, np.float32, np.int64, np.int32, type(None)})


@dataclass(frozen=True, slots=True)
class ColumnSpec:
    """One input column: its dtype, whether missing values are allowed, and known categories."""

    name: str
    dtype: str
    nullable: bool = False
    categories: tuple[Any, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"name": self.name, "dtype": self.dtype, "nullable": self.nullable}
        if self.categories is not None:
            body["categories"] = list(self.categories)
        return body


@dataclass(frozen=True, slots=True)
class OutputSpec:
    """What the model returns: predictions, and for classifiers probabilities over ``classes``."""

    task: str
    classes: tuple[Any, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "classes": None if self.classes is None else list(self.classes)}


@dataclass(frozen=True, slots=True)
class Signature:
    """Inputs, outputs and the per-model validation policies of a model."""

    inputs: tuple[ColumnSpec, ...]
    input_kind: str = "frame"
    outputs: OutputSpec | None = None
    extra_columns: str = "error"
    unseen_categories: str = "error"
    _validator: InputValidator | None = field(default=None, compare=False, repr=False)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.inputs)

    @property
    def all_numeric(self) -> bool:
        return all(c.dtype != "string" for c in self.inputs)

    def with_outputs(self, outputs: OutputSpec | None) -> Signature:
        return replace(self, outputs=outputs, _validator=None)

    def with_policy(
        self, *, extra_columns: str | None = None, unseen_categories: str | None = None
    ) -> Signature:
        """A copy with other policies, checked against the allowed values."""
        extra = extra_columns or self.extra_columns
        unseen = unseen_categories or self.unseen_categories
        _check_choice("extra_columns", extra, ("error", "ignore"))
        _check_choice("unseen_categories", unseen, ("error", "allow"))
        return replace(self, extra_columns=extra, unseen_categories=unseen, _validator=None)

    def validator(self) -> InputValidator:
        """The compiled validator, built once per signature object."""
        if self._validator is None:
            object.__setattr__(self, "_validator", InputValidator(self))
        assert self._validator is not None
        return self._validator

    def to_dict(self) -> dict[str, Any]:
        return {
            "inputs": [c.to_dict() for c in self.inputs],
            "input_kind": self.input_kind,
            "outputs": None if self.outputs is None else self.outputs.to_dict(),
            "extra_columns": self.extra_columns,
            "unseen_categories": self.unseen_categories,
        }

    @classmethod
    def from_dict(cls, body: Mapping[str, Any]) -> Signature:
        """Rebuild a signature from :meth:`to_dict` output, rejecting malformed documents."""
        try:
            inputs = tuple(
                ColumnSpec(
                    name=str(c["name"]), dtype=str(c["dtype"]), nullable=bool(c.get("nullable")),
                    categories=None if c.get("categories") is None else tuple(c["categories"]),
                )
                for c in body["inputs"]
            )
            out = body.get("outputs")
            outputs = None if out is None else OutputSpec(
                task=str(out["task"]),
                classes=None if out.get("classes") is None else tuple(out["classes"]),
            )
            sig = cls(inputs=inputs, input_kind=str(body.get("input_kind", "frame")),
                      outputs=outputs)
            sig = sig.with_policy(extra_columns=body.get("extra_columns", "error"),
                                  unseen_categories=body.get("unseen_categories", "error"))
        except (KeyError, TypeError) as exc:
            raise SchemaError(
                f"The signature document is malformed: missing or wrong field {exc}.",
                hint="A signature needs 'inputs': [{'name', 'dtype', 'nullable'}, ...].",
            ) from exc
        for col in inputs:
            _check_choice(f"dtype of column {col.name!r}", col.dtype, DTYPES)
        _check_choice("input_kind", sig.input_kind, ("frame", "array"))
        if len(set(sig.names)) != len(inputs):
            raise SchemaError("The signature lists a column name twice; names must be unique.")
        return sig


def _check_choice(what: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise SchemaError(f"Invalid {what}: {describe_value(value)}; expected one of "
                          f"{', '.join(allowed)}.")


# --------------------------------------------------------------------------- inference


def infer_signature(
    sample: Any,
    *,
    names: Sequence[str] | None = None,
    categories: Mapping[str, Sequence[Any]] | None = None,
    outputs: OutputSpec | None = None,
) -> Signature:
    """Infer a signature from a DataFrame, a 2-D NumPy array or a list of dicts.

    ``names`` names the columns of an array; ``categories`` gives the known categories of string
    columns (a sample seldom holds them all, so they are not guessed from it).
    """
    cats = dict(categories or {})
    if _is_dataframe(sample):
        cols = {str(c): sample[c].to_numpy() for c in sample.columns}
        kind = "frame"
    elif isinstance(sample, np.ndarray) or (
        isinstance(sample, list) and sample and isinstance(sample[0], list | tuple)
    ):
        arr = np.asarray(sample)
        if arr.ndim == 1:
            arr = arr.reshape(1, -1)
        if arr.ndim != 2:
            raise SchemaError(f"Cannot infer a signature from a {arr.ndim}-D array; "
                              "expected a 2-D array of rows by columns.")
        col_names = list(names) if names is not None else [f"x{i}" for i in range(arr.shape[1])]
        if len(col_names) != arr.shape[1]:
            raise SchemaError(f"{len(col_names)} names given for {arr.shape[1]} columns.")
        cols = {n: arr[:, i] for i, n in enumerate(col_names)}
        kind = "array"
    elif isinstance(sample, list) and sample and isinstance(sample[0], Mapping):
        keys = list(sample[0].keys())
        cols = {str(k): np.array([row.get(k) for row in sample], dtype=object) for k in keys}
        kind = "frame"
    elif isinstance(sample, Mapping):
        cols = {str(k): np.asarray(v if isinstance(v, list | tuple) else [v], dtype=object)
                for k, v in sample.items()}
        kind = "frame"
    else:
        raise SchemaError(
            f"Cannot infer a signature from a {type(sample).__name__}.",
            hint="Give a pandas DataFrame, a 2-D NumPy array or a list of dicts.",
        )
    specs = tuple(_infer_column(name, values, cats.get(name)) for name, values in cols.items())
    return Signature(inputs=specs, input_kind=kind, outputs=outputs)


def _infer_column(name: str, values: np.ndarray, categories: Sequence[Any] | None) -> ColumnSpec:
    kind = values.dtype.kind
    cats = None if categories is None else tuple(_plain(c) for c in categories)
    if kind == "f":
        dtype = "float32" if values.dtype == np.float32 else "float64"
        return ColumnSpec(name, dtype, bool(np.isnan(values).any()))
    if kind in "iu":
        return ColumnSpec(name, "int32" if values.dtype == np.int32 else "int64", False)
    if kind == "b":
        return ColumnSpec(name, "bool", False)
    present = [v for v in values.tolist() if not _is_missing(v)]
    nullable = len(present) != len(values)
    if all(isinstance(v, str) for v in present):
        return ColumnSpec(name, "string", nullable, cats)
    if all(isinstance(v, bool) for v in present):
        return ColumnSpec(name, "bool", nullable)
    if all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return ColumnSpec(name, "int64", nullable)
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in present):
        return ColumnSpec(name, "float64", nullable)
    kinds = sorted({type(v).__name__ for v in present})
    raise SchemaError(
        f"Column {name!r} mixes value types ({', '.join(kinds)}); cannot infer its dtype.",
        hint="Give the column one type (numbers or strings) or pass an explicit signature.",
    )


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _is_missing(value: Any) -> bool:
    """None, NaN, or pandas' NA/NaT (recognised by type name so pandas need not be imported)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return True
    return type(value).__name__ in ("NAType", "NaTType")


def _is_dataframe(data: Any) -> bool:
    return type(data).__name__ == "DataFrame" and hasattr(data, "columns")


# --------------------------------------------------------------------------- validation


class InputValidator:
    """Checks and coerces request data against a signature; compiled once, called per request.

    ``matrix`` gives a 2-D numeric array (fast paths for NumPy rows, one-row dicts and numeric
    DataFrames); ``columns`` gives one coerced 1-D array per column for any accepted input;
    ``frame`` gives a pandas DataFrame for native models that need column names.
    """

    def __init__(self, signature: Signature) -> None:
        self.signature = signature
        self.names: tuple[str, ...] = signature.names
        self._name_list = list(self.names)
        self._name_set = frozenset(self.names)
        self._n = len(self.names)
        self._specs = signature.inputs
        self._numeric = signature.all_numeric
        self._ignore_extra = signature.extra_columns == "ignore"
        self._category_sets = {
            c.name: frozenset(c.categories) for c in signature.inputs
            if c.categories is not None and signature.unseen_categories == "error"
        }

    # -- fast numeric path -------------------------------------------------------------

    def matrix(self, data: Any, dtype: Any = np.float32) -> np.ndarray:
        """A C-contiguous 2-D array of ``dtype`` with the columns in signature order.

        Every value is finite, or NaN in a nullable column: one ``isfinite`` reduction checks
        both, and infinities (also values too large for float32) are refused as
        scikit-learn does.
        """
        kind = type(data)
        x: np.ndarray | None = None
        if kind is np.ndarray and self._numeric:
            arr: np.ndarray = data if data.ndim != 1 else data.reshape(1, -1)
            if arr.ndim == 2 and arr.shape[1] == self._n and arr.dtype.kind in "fiub":
                x = arr if arr.dtype == dtype and arr.flags.c_contiguous else _cast(arr, dtype)
        elif kind is dict and self._numeric:
            row = self._dict_row(data)
            if row is not None:
                try:
                    x = _cast(row, dtype).reshape(1, self._n)
                except OverflowError:
                    x = None  # a huge int: the general path names the column
        elif self._numeric and _is_dataframe(data):
            frame = data
            if frame.columns.tolist() != self._name_list:
                self._check_names([str(c) for c in frame.columns])
                frame = frame[self._name_list]
            values = frame.to_numpy()
            if values.dtype.kind in "fiub":
                x = _cast(values, dtype)
        if x is None:
            cols = self.columns(data)
            x = _cast(np.column_stack([cols[n] for n in self.names]), dtype)
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            self._check_finite(x)
        return x

    def _dict_row(self, data: dict[str, Any]) -> list[Any] | None:
        """The values of a one-row dict in signature order, or None to take the general path."""
        if len(data) != self._n or not self._name_set.issuperset(data):
            self._check_names(list(data))
        try:
            row = [data[name] for name in self.names]
        except KeyError:
            return None
        for value in row:
            if type(value) not in _FAST_NUMBER_TYPES:
                return None
        return row

    def _check_finite(self, x: np.ndarray) -> None:
        for i, spec in enumerate(self._specs):
            column = x[:, i]
            if np.isinf(column).any():
                row = int(np.flatnonzero(np.isinf(column))[0])
                raise _type_error(spec, "an infinite value (or one too large for float32)",
                                  row, "Send finite numbers.")
            if not spec.nullable and np.isnan(column).any():
                row = int(np.flatnonzero(np.isnan(column))[0])
                raise _type_error(spec, "a missing value (NaN/None)", row,
                                  "This column is not nullable: send a number.")

    # -- general path -------------------------------------------------------------------

    def columns(self, data: Any) -> dict[str, np.ndarray]:
        """One coerced 1-D array per signature column, in signature order."""
        raw = self._raw_columns(data)
        self._check_names(list(raw))
        lengths = {len(raw[name]) for name in self.names}
        if len(lengths) > 1:
            raise SchemaError(
                f"Columns have different lengths {sorted(lengths)}; every column needs one "
                "value per row.", expected="equal lengths", received=sorted(lengths),
            )
        return {spec.name: self._coerce(spec, raw[spec.name]) for spec in self._specs}

    def frame(self, data: Any) -> Any:
        """A pandas DataFrame with signature columns and dtypes, for native frame models."""
        import pandas as pd

        cols = self.columns(data)
        return pd.DataFrame(cols, columns=self._name_list)

    def _raw_columns(self, data: Any) -> dict[str, Any]:
        if _is_dataframe(data):
            return {str(c): data[c].to_numpy() for c in data.columns}
        if isinstance(data, np.ndarray) or (
            isinstance(data, list) and data and isinstance(data[0], list | tuple)
        ):
            arr = data if isinstance(data, np.ndarray) else np.array(data, dtype=object)
            if arr.ndim == 1 and arr.shape[0] == self._n:
                arr = arr.reshape(1, -1)
            if arr.ndim != 2 or arr.shape[1] != self._n:
                raise SchemaError(
                    f"Input array has shape {arr.shape}; the model expects rows of {self._n} "
                    f"values ({', '.join(self.names)}).",
                    expected=f"(n, {self._n})", received=list(arr.shape),
                )
            return {name: arr[:, i] for i, name in enumerate(self.names)}
        if isinstance(data, Mapping):
            values = list(data.values())
            if values and all(isinstance(v, list | tuple | np.ndarray) for v in values):
                return {str(k): v if isinstance(v, np.ndarray) else _objects(v)
                        for k, v in data.items()}
            return {str(k): _objects([v]) for k, v in data.items()}
        if isinstance(data, list) and data and all(isinstance(r, Mapping) for r in data):
            keys: dict[str, None] = {}
            for record in data:
                keys.update(dict.fromkeys(record))
            return {str(k): _objects([r.get(k) for r in data]) for k in keys}
        raise SchemaError(
            f"Unsupported input of type {type(data).__name__}.",
            hint="Send a DataFrame, a 2-D array, a dict of column -> value(s) or a list of "
            "records (dicts).", expected="DataFrame | ndarray | dict | list[dict]",
            received=type(data).__name__,
        )

    def _check_names(self, given: list[Any]) -> None:
        got = {str(name) for name in given}
        missing = [n for n in self.names if n not in got]
        if missing:
            raise SchemaError(
                f"Input is missing column(s) {', '.join(map(repr, missing))}; the model expects "
                f"{', '.join(self.names)}.", hint="Send every column of the model signature.",
                column=missing[0], expected=list(self.names), received=sorted(got),
            )
        extra = sorted(got - self._name_set)
        if extra and not self._ignore_extra:
            raise SchemaError(
                f"Input has column(s) {', '.join(map(repr, extra))} the model does not take; "
                f"expected only {', '.join(self.names)}.",
                hint="Remove them, or register the model with extra_columns='ignore'.",
                column=extra[0], expected=list(self.names), received=sorted(got),
            )

    def _coerce(self, spec: ColumnSpec, values: Any) -> np.ndarray:
        arr = values if isinstance(values, np.ndarray) else _objects(values)
        if arr.ndim != 1:
            raise _type_error(spec, f"a nested array of shape {arr.shape}", 0,
                              "Send one scalar value per row.")
        kind = arr.dtype.kind
        if spec.dtype == "string":
            return self._coerce_string(spec, arr)
        if kind in "US":
            raise _type_error(spec, f"the string {describe_value(_plain(arr[0]))}", 0)
        if kind == "O" or kind == "T":
            arr = _numbers_from_objects(spec, arr)
            kind = arr.dtype.kind
        if kind not in "fiub":
            raise _type_error(spec, f"values of dtype {arr.dtype}", 0)
        if kind == "f":
            if np.isinf(arr).any():
                raise _type_error(spec, "an infinite value", int(np.argmax(np.isinf(arr))),
                                  "Send finite numbers.")
            nan = np.isnan(arr)
            if nan.any():
                if not spec.nullable:
                    raise _type_error(spec, "a missing value (NaN/None)", int(np.argmax(nan)),
                                      "This column is not nullable: send a value.")
                return arr.astype(np.float64, copy=False)
            if spec.dtype in ("int64", "int32"):
                if not np.array_equal(arr, np.round(arr)):
                    row = int(np.argmax(arr != np.round(arr)))
                    raise _type_error(spec, f"the non-integer {_plain(arr[row])!r}", row)
                limit = 2.0 ** (63 if spec.dtype == "int64" else 31)
                if (np.abs(arr) >= limit).any():
                    row = int(np.argmax(np.abs(arr) >= limit))
                    raise _type_error(spec, f"{_plain(arr[row])!r}, out of {spec.dtype} range",
                                      row)
        if spec.dtype == "bool" and kind != "b" and not np.isin(arr, (0, 1)).all():
            row = int(np.argmax(~np.isin(arr, (0, 1))))
            raise _type_error(spec, f"the value {_plain(arr[row])!r}", row)
        return arr.astype(_NUMPY_DTYPE[spec.dtype], copy=False)

    def _coerce_string(self, spec: ColumnSpec, arr: np.ndarray) -> np.ndarray:
        if arr.dtype.kind in "UST":
            arr = arr.astype(object)
        elif arr.dtype.kind != "O":
            raise _type_error(spec, f"values of dtype {arr.dtype}", 0,
                              "Send this column as strings.")
        for row, value in enumerate(arr.tolist()):
            if type(value) is not str:
                if _is_missing(value):
                    if not spec.nullable:
                        raise _type_error(spec, "a missing value (None/NaN)", row,
                                          "This column is not nullable: send a string.")
                else:
                    raise _type_error(spec, _shown(value), row,
                                      "Send this column as strings.")
        allowed = self._category_sets.get(spec.name)
        if allowed is not None:
            for row, value in enumerate(arr.tolist()):
                if value not in allowed and not _is_missing(value):
                    raise SchemaError(
                        f"Column {spec.name!r} received the unseen category "
                        f"{describe_value(value)} at row {row}; known categories: "
                        f"{_some(sorted(allowed))}.",
                        hint="Send a known category, or register the model with "
                        "unseen_categories='allow'.", column=spec.name,
                        expected=sorted(allowed), received=value,
                    )
        return arr


def _objects(values: Any) -> np.ndarray:
    """A flat object array, one element per value, even when values are lists themselves."""
    items = list(values)
    return np.fromiter(items, dtype=object, count=len(items))


def _cast(values: Any, dtype: Any) -> np.ndarray:
    """``values`` as a C-contiguous array of ``dtype``; overflow becomes inf, checked later."""
    try:
        return np.ascontiguousarray(values, dtype=dtype)
    except RuntimeWarning:  # raised only when warnings are errors; redo quietly
        with np.errstate(over="ignore", invalid="ignore"):
            return np.ascontiguousarray(values, dtype=dtype)


def _numbers_from_objects(spec: ColumnSpec, arr: np.ndarray) -> np.ndarray:
    """Numbers out of an object array, refusing strings and other types by row."""
    want_bool = spec.dtype == "bool"
    out = np.empty(arr.shape[0], dtype=np.float64)
    for row, value in enumerate(arr.tolist()):
        if _is_missing(value):
            out[row] = np.nan
        elif isinstance(value, bool) and not want_bool:
            raise _type_error(spec, f"the boolean {value!r}", row)
        elif isinstance(value, int | float | np.number):
            try:
                out[row] = value
            except OverflowError as exc:
                raise _type_error(spec, "a number too large to represent", row) from exc
        else:
            raise _type_error(spec, _shown(value), row)
    return out


def _shown(value: Any) -> str:
    """A received cell for a message: ``str 'three'``, ``int 7``, ``list (2 items) [1, 2]``."""
    if isinstance(value, str | int | float):
        return f"{type(value).__name__} {describe_value(value)}"
    return describe_value(value)


def _some(values: Sequence[Any], limit: int = 20) -> str:
    """The first ``limit`` values for a message, each cut short, and how many there are."""
    shown = ", ".join(describe_value(v, 40) for v in values[:limit])
    return shown if len(values) <= limit else f"{shown}, ... ({len(values)} in all)"


def _type_error(spec: ColumnSpec, received: str, row: int, hint: str | None = None) -> SchemaError:
    return SchemaError(
        f"Column {spec.name!r} expects {spec.dtype}"
        f"{' (nullable)' if spec.nullable else ''} but received {received} at row {row}.",
        hint=hint or f"Send {spec.dtype} values for this column.",
        column=spec.name, expected=spec.dtype, received=received,
    )


__all__ = [
    "DTYPES", "ColumnSpec", "InputValidator", "OutputSpec", "Signature", "infer_signature",
]
