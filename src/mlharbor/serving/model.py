"""A model version ready to serve: request data in, predictions and probabilities out.

:class:`ServedModel` splits inference in the steps micro-batching needs: ``prepare`` validates
one request against the signature (on the event loop, so a bad request fails alone and fast),
``concat`` joins prepared requests, ``run`` infers a batch (in a worker thread) and the caller
slices the rows back. Two runners sit behind it: ONNX Runtime, when the version carries a
parity-checked ONNX file, and the native model of the bundle's format otherwise; both come from
the formats layer's :class:`~mlharbor.formats.predictor.Predictor`, so validation and runtime
choice are the same as in the Python API. So are the answers: labels are the model's own
``predict`` (the ONNX graph's label output, or the native ``predict``), never re-derived here
from probabilities, which would be wrong for a threshold-tuned classifier.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain
from operator import itemgetter
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from mlharbor.core.signature import InputValidator, Signature
from mlharbor.formats.predictor import Outputs as Outputs  # re-exported: serving's answer type

if TYPE_CHECKING:
    from mlharbor.formats.predictor import Predictor


class Runner(Protocol):
    """Runs prepared input; implementations wrap one runtime."""

    runtime: str

    def prepare(self, validator: InputValidator, data: Any) -> Any: ...

    def rows(self, x: Any) -> int: ...

    def concat(self, xs: Sequence[Any]) -> Any: ...

    def run(self, x: Any) -> Outputs: ...


class ServedModel:
    """One loaded, warmed-up version of a model, with its signature and input example."""

    def __init__(
        self, name: str, version: int, signature: Signature, runner: Runner, *,
        task: str, classes: Sequence[Any] | None, input_example: Any = None,
    ) -> None:
        self.name = name
        self.version = version
        self.signature = signature
        self.validator = signature.validator()
        self.runner = runner
        self.task = task
        self.classes = list(classes) if classes is not None else None
        self.input_example = input_example
        self._numeric = signature.all_numeric
        self._names = signature.names
        # Computed once: the protocols read them on every request.
        self.names = self._names
        self.numeric = self._numeric
        self.answer_headers: tuple[tuple[bytes, bytes], ...] = (
            (b"x-mlharbor-model", name.encode()),
            (b"x-mlharbor-model-version", str(version).encode()))

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    @property
    def runtime(self) -> str:
        return self.runner.runtime

    def prepare(self, data: Any) -> tuple[Any, int, np.ndarray | None]:
        """Validate ``data`` against the signature: the prepared input, its rows, and (models
        of numbers only) the float64 matrix of the inputs in signature order, which the
        prediction log stores as it is."""
        matrix = None
        if type(data) is NumericRows:
            if self._numeric and data.columns == self._names:
                matrix = data.matrix
                x = self.runner.prepare(self.validator, matrix)
                return x, self.runner.rows(x), matrix
            data = data.to_dict()  # another column order or a model of strings too
        if self._numeric and type(data) in (list, dict):
            matrix = numeric_matrix(data, self._names)
            if matrix is not None:
                data = matrix
        x = self.runner.prepare(self.validator, data)
        return x, self.runner.rows(x), matrix

    def concat(self, xs: Sequence[Any]) -> Any:
        return xs[0] if len(xs) == 1 else self.runner.concat(xs)

    def run(self, x: Any) -> Outputs:
        return self.runner.run(x)

    def warm_up(self) -> None:
        """Run the input example (or a synthetic row) once, so the first request is not slow."""
        x, _rows, _matrix = self.prepare(self.input_example if self.input_example is not None
                                         else synthetic_row(self.signature))
        self.run(x)


_NUMBER_TYPES = frozenset({int, float})


class NumericRows:
    """Rows of plain numbers as the float64 matrix they were parsed into, with the names of
    its columns: what a protocol hands the data plane when a body is a table of numbers
    (MLflow ``inputs`` rows, ``dataframe_split``, ...), so the values go from the parsed JSON
    to the matrix once, and the signature checks run on the matrix.

    A model whose signature names exactly these columns, in this order, takes the matrix as it
    is; any other model (a canary with other columns, a model of strings) gets it back as
    ``{column: values}`` and checks it the general way, with the general way's messages.
    It reads like a data frame to the prediction log (``columns``, ``to_dict``).
    """

    __slots__ = ("columns", "matrix")

    def __init__(self, matrix: np.ndarray, columns: tuple[str, ...]) -> None:
        self.matrix = matrix
        self.columns = columns

    def __len__(self) -> int:
        return int(self.matrix.shape[0])

    def to_dict(self, orient: str = "list") -> dict[str, list[Any]]:
        """``{column: values}`` (the only orientation asked for: ``list``)."""
        return {name: self.matrix[:, i].tolist() for i, name in enumerate(self.columns)}


def numeric_rows(rows: Any, columns: tuple[str, ...]) -> NumericRows | None:
    """``rows`` (lists of values in ``columns`` order) as :class:`NumericRows` when every value
    is a plain int or float and every row has one value per column; else None, and the caller
    takes the general path, whose errors name the row and column."""
    width = len(columns)
    if width < 1 or type(rows) is not list or not rows:
        return None
    if set(map(type, rows)) != {list} or set(map(len, rows)) != {width}:
        return None
    if not set(map(type, chain.from_iterable(rows))) <= _NUMBER_TYPES:
        return None
    try:
        return NumericRows(_float_rows(rows, width), columns)
    except OverflowError:  # an integer too large for a float: the general path names it
        return None


def input_nbytes(x: Any) -> int:
    """The bytes a prepared input holds (arrays' buffers; an estimate for a frame): what the
    micro-batcher's queue limit counts."""
    if type(x) is dict:
        return sum(int(getattr(v, "nbytes", 0)) for v in x.values())
    nbytes = getattr(x, "nbytes", None)
    if nbytes is not None:
        return int(nbytes)
    return int(getattr(x, "size", 0)) * 8


def numeric_matrix(data: Any, names: tuple[str, ...]) -> np.ndarray | None:
    """Records, one record or ``{column: values}`` of plain numbers as a C-contiguous float64
    matrix in signature order.

    The general validator converts column by column through object arrays; for many rows of a
    numeric model that costs more than inference, so rows are gathered with ``itemgetter`` and
    the value types checked in one pass in C. Anything unusual (a missing or extra column, a
    string, None, a bool, an integer too large for a float) returns None and takes the
    validator's path, which names the column and row in its error.
    """
    width = len(names)
    if width < 2:
        return None
    try:
        if type(data) is dict:
            if len(data) != width:
                return None
            try:
                cols = [data[name] for name in names]
            except KeyError:
                return None
            if set(map(type, cols)) <= _NUMBER_TYPES:  # one record
                return np.array([cols], dtype=np.float64)
            if not all(type(c) is list for c in cols) or len({len(c) for c in cols}) != 1:
                return None
            if not set(map(type, chain.from_iterable(cols))) <= _NUMBER_TYPES:
                return None
            return np.array(cols, dtype=np.float64).T.copy()
        if not data or type(data[0]) is not dict:
            return None
        # The JSON parser hands every record the same key objects (orjson's key cache): looked
        # up with those rather than the signature's own strings, each of the rows x columns
        # lookups matches by identity instead of comparing two strings (~40% of this step).
        own = {key: key for key in data[0]}
        try:
            getter = itemgetter(*[own.get(name, name) for name in names])
            rows = [getter(record) for record in data]
        except (KeyError, TypeError, IndexError):
            return None
        if set(map(type, data)) != {dict} or set(map(len, data)) != {width}:
            return None
        if not set(map(type, chain.from_iterable(rows))) <= _NUMBER_TYPES:
            return None
        return _float_rows(rows, width)
    except OverflowError:
        return None


def _float_rows(rows: list[Any], width: int) -> np.ndarray:
    """Rows of plain numbers (checked) as a float64 matrix: ``np.fromiter`` over the values
    in order fills the matrix in one pass, where ``np.array`` first walks the nested lists to
    discover their shape and type (~25% less CPU at 64 rows of 20)."""
    count = len(rows)
    return np.fromiter(chain.from_iterable(rows), np.float64, count * width).reshape(
        count, width)


def synthetic_row(signature: Signature) -> dict[str, Any]:
    """One plausible row: zero for numbers, the first known category (or '') for strings."""
    row: dict[str, Any] = {}
    for col in signature.inputs:
        if col.dtype == "string":
            row[col.name] = col.categories[0] if col.categories else ""
        elif col.dtype == "bool":
            row[col.name] = False
        else:
            row[col.name] = 0
    return row


def runner_for(predictor: Predictor) -> Runner:
    """The batching adapter of a formats :class:`Predictor` (ONNX Runtime or native)."""
    from mlharbor.formats.predictor import OrtRunner

    if isinstance(predictor.runner, OrtRunner):
        return OnnxBatchRunner(predictor)
    return NativeBatchRunner(predictor)


class NativeBatchRunner:
    """The bundle's native model (scikit-learn via skops, XGBoost ...), fed whole batches.

    Labels and probabilities come from the formats runner's ``run``: the model's own
    ``predict`` and ``predict_proba``, as in the Python API.
    """

    runtime = "native"

    def __init__(self, predictor: Predictor) -> None:
        from mlharbor.formats.predictor import NativeRunner

        runner = predictor.runner
        assert isinstance(runner, NativeRunner)
        self.runner = runner
        self.model = runner.model

    def prepare(self, validator: InputValidator, data: Any) -> Any:
        return self.runner.inputs(data)

    def rows(self, x: Any) -> int:
        return int(x.shape[0])

    def concat(self, xs: Sequence[Any]) -> Any:
        if isinstance(xs[0], np.ndarray):
            return np.concatenate(list(xs))
        import pandas as pd

        return pd.concat(list(xs), ignore_index=True)

    def run(self, x: Any) -> Outputs:
        return self.runner.run(x)


class OnnxBatchRunner:
    """An ONNX Runtime session fed the predictor's validated feeds, joined per input.

    Labels are the graph's label output (checked against the model's own ``predict`` at
    registration), fetched in the same session run as the probabilities.
    """

    runtime = "onnx"

    def __init__(self, predictor: Predictor) -> None:
        from mlharbor.formats.predictor import OrtRunner

        runner = predictor.runner
        assert isinstance(runner, OrtRunner)
        self.runner = runner
        self.model = runner.model

    def prepare(self, validator: InputValidator, data: Any) -> Any:
        return self.runner.feeds(data)

    def rows(self, x: Any) -> int:
        return int(next(iter(x.values())).shape[0])

    def concat(self, xs: Sequence[Any]) -> Any:
        return {k: np.concatenate([x[k] for x in xs]) for k in xs[0]}

    def run(self, x: Any) -> Outputs:
        return self.runner.run(x)
