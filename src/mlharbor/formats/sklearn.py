"""scikit-learn estimators and pipelines, stored with skops.

skops rebuilds objects from a JSON schema instead of running pickle code, but it still has to
import the types (and functions) the file names. Which ones may be imported is platform policy,
never the file's say. A name skops does not already trust loads only when it is:

* a scikit-learn estimator or transformer *class*: under ``sklearn.``, resolving to a class
  that subclasses ``sklearn.base.BaseEstimator`` (functions and other objects under
  ``sklearn.`` do not qualify by prefix);
* in skops' own default trusted lists, or in the small curated list :data:`CURATED_TYPES`
  (the non-estimator internals fitted scikit-learn models hold, such as tree structures);
* mlharbor's own pure transformer classes, :data:`MLHARBOR_TYPES` (matched by name);
* listed in ``formats.skops_trusted_types`` in the settings.

Everything else is refused, naming the type: NumPy/SciPy functions are no longer trusted by
prefix (``numpy.save``, ``numpy.fromfile``, ``numpy.vectorize``, ``scipy.io.loadmat`` ... read
or write files or wrap arbitrary callables). Names that execute code or touch files
(``builtins.eval``, ``os.system``, ``numpy.save`` ...) are refused even when a setting lists
them.
"""

from __future__ import annotations

import importlib
import zipfile
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

from mlharbor.core.errors import UnsafeArtifactError
from mlharbor.core.signature import ColumnSpec
from mlharbor.formats.base import (
    EstimatorModel,
    ModelFormat,
    ModelInfo,
    NativeModel,
    TrustOptions,
    plain_list,
)
from mlharbor.formats.bundle import ModelBytes

# Non-estimator types that fitted scikit-learn models hold, which skops does not trust itself.
CURATED_TYPES = frozenset({
    "numpy.dtype",  # dtype objects of fitted arrays (e.g. OneHotEncoder categories)
    "sklearn.tree._tree.Tree",  # the fitted trees of every tree, forest and boosting model
})
# mlharbor's own pure transformer classes, used by pipelines `mlharbor train` builds. Matched
# by name only: the training package is imported by skops when a model that uses them loads.
MLHARBOR_TYPES = frozenset({
    "mlharbor.training.preparation.DateParts",
})
# Never loadable, whatever the settings say: each one runs code or touches the system.
DENIED_MODULES = frozenset({
    "builtins", "os", "posix", "nt", "subprocess", "sys", "shutil", "importlib", "pickle",
    "marshal", "runpy", "socket", "ctypes", "code", "codeop", "pty", "webbrowser", "io",
    "operator", "functools", "types", "pathlib", "tempfile", "multiprocessing", "asyncio",
    "joblib", "dill", "cloudpickle", "shelve", "urllib", "http", "requests",
})
DENIED_SUFFIXES = (
    ".eval", ".exec", ".system", ".popen", ".compile", ".__import__", ".getattr", ".setattr",
    ".open", ".load", ".loads", ".runstring",
    # NumPy/SciPy functions and classes that read or write files or wrap arbitrary callables
    ".save", ".savez", ".savez_compressed", ".savetxt", ".loadtxt", ".genfromtxt", ".fromfile",
    ".fromregex", ".tofile", ".memmap", ".frompyfunc", ".vectorize", ".loadmat", ".savemat",
    ".DataSource", ".open_memmap",
)
# Corners of the libraries that run code, touch files or build extensions: a model could name
# one as a function (FunctionTransformer(func=...)) and have predict call it.
DENIED_PREFIXES = ("numpy.testing", "numpy.distutils", "numpy.f2py", "numpy.ctypeslib",
                   "numpy.lib.npyio", "numpy.lib._npyio_impl", "numpy.lib.format",
                   "numpy.lib._datasource", "numpy._core.memmap", "numpy.core.memmap",
                   "scipy._lib", "scipy.io", "scipy.weave", "sklearn.utils._testing",
                   "sklearn.externals", "sklearn.datasets", "sklearn.conftest",
                   "sklearn.tests", "sklearn.utils.tests")
_POLICY_HINT = (
    "By default skops loads scikit-learn estimator classes and the types skops itself trusts; "
    "other functions and types need a platform setting. If a listed name is your own safe "
    "class, add it to formats.skops_trusted_types (MLHARBOR_FORMATS__SKOPS_TRUSTED_TYPES). "
    "Names that run code or touch files (eval, exec, os.system, numpy.save, numpy.fromfile, "
    "scipy.io.loadmat ...) are never allowed."
)


def denied(name: str) -> bool:
    """Whether ``name`` is on the hard deny list no setting can override."""
    parts = name.split(".")
    return (parts[0] in DENIED_MODULES or name.endswith(DENIED_SUFFIXES)
            or any(name == p or name.startswith(p + ".") for p in DENIED_PREFIXES)
            or any(part.startswith("__") for part in parts[1:]))


@cache
def skops_default_types() -> frozenset[str]:
    """The names skops trusts by default (its own audited lists), when skops exposes them."""
    try:
        from skops.io import _trusted_types as lists
    except ImportError:  # pragma: no cover - a skops without the lists: rely on the rest
        return frozenset()
    found: set[str] = set()
    for attr in ("PRIMITIVE_TYPE_NAMES", "CONTAINER_TYPE_NAMES", "SKLEARN_ESTIMATOR_TYPE_NAMES",
                 "SKLEARN_INTERNAL_TYPE_NAMES", "SCIPY_UFUNC_TYPE_NAMES",
                 "NUMPY_UFUNC_TYPE_NAMES", "NUMPY_RANDOM_BIT_GENERATOR_TYPE_NAMES",
                 "NUMPY_DTYPE_TYPE_NAMES"):
        found.update(str(n) for n in getattr(lists, attr, ()))
    return frozenset(found)


@lru_cache(maxsize=4096)
def is_sklearn_estimator_class(name: str) -> bool:
    """Whether ``name`` is a scikit-learn class subclassing ``BaseEstimator`` (not a function).

    The name must be the class's own ``module.qualname``: an alias re-exporting something else
    does not count. Only modules under ``sklearn.`` are imported to find out.
    """
    parts = name.split(".")
    if not name.startswith("sklearn.") or denied(name) or any(
            part in ("tests", "conftest", "_testing") or part.startswith("_build")
            for part in parts):
        return False  # test and build modules define throwaway classes, run code on import
    from sklearn.base import BaseEstimator

    for cut in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:cut])
        try:
            obj: Any = importlib.import_module(module_name)
        except ImportError:
            continue
        except Exception:  # a module failing on import is no source of trusted classes
            return False
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False
        return (isinstance(obj, type) and issubclass(obj, BaseEstimator)
                and f"{obj.__module__}.{obj.__qualname__}" == name)
    return False


def untrusted_types(types: list[str], allowlist: tuple[str, ...]) -> list[str]:
    """The names outside platform policy (see the module doc); the deny list always wins."""
    refused = []
    for name in types:
        allowed = not denied(name) and (
            name in skops_default_types() or name in CURATED_TYPES or name in MLHARBOR_TYPES
            or name in allowlist or is_sklearn_estimator_class(name))
        if not allowed:
            refused.append(name)
    return refused


def check_skops_types(data: bytes, source: str, trust: TrustOptions) -> list[str]:
    """The types the skops payload names, after refusing any outside platform policy."""
    import skops.io as sio

    try:
        named = list(sio.get_untrusted_types(data=data))
    except Exception as exc:
        raise UnsafeArtifactError(
            f"{source!r} is not a readable skops file: {exc}.",
            hint="Save the model with skops.io.dump(model, path).",
        ) from exc
    refused = untrusted_types(named, trust.skops_trusted_types)
    if refused:
        never = [n for n in refused if denied(n)]
        raise UnsafeArtifactError(
            f"Refusing to load {source!r}: it names type(s) outside the trusted policy: "
            f"{', '.join(refused)}"
            + (f" ({', '.join(never)} can never be allowed)." if never else "."),
            hint=_POLICY_HINT, types=refused,
        )
    return named


class SklearnFormat(ModelFormat):
    name = "sklearn"
    summary = "scikit-learn estimators and pipelines via skops (no pickle)"
    file_name = "model.skops"

    def claims_object(self, obj: Any) -> bool:
        if not type(obj).__module__.startswith("sklearn."):
            return False
        return hasattr(obj, "predict")

    def claims_file(self, path: Path, head: bytes) -> bool:
        if head[:4] != b"PK\x03\x04":
            return False
        try:
            with zipfile.ZipFile(path) as archive:
                return "schema.json" in archive.namelist()
        except (zipfile.BadZipFile, OSError):
            return False

    def read_file(self, blob: ModelBytes, trust: TrustOptions) -> Any:
        return _load(blob.data, blob.name, trust)

    def save(self, obj: Any, model_dir: Path) -> str:
        import skops.io as sio

        target = model_dir / self.file_name
        sio.dump(obj, target)
        return target.name

    def describe(self, obj: Any) -> ModelInfo:
        import sklearn
        from sklearn.base import is_classifier

        names = getattr(obj, "feature_names_in_", None)
        classifier = bool(is_classifier(obj))
        return ModelInfo(
            task="classification" if classifier else "regression",
            classes=plain_list(obj.classes_) if classifier else None,
            feature_names=None if names is None else [str(n) for n in names],
            n_features=getattr(obj, "n_features_in_", None),
            input_kind="frame" if names is not None else "array",
            flavor={"estimator": f"{type(obj).__module__}.{type(obj).__qualname__}"},
            framework_versions={"scikit-learn": sklearn.__version__, "skops": _skops_version()},
            categories=encoder_categories(obj),
        )

    def load(self, blob: ModelBytes, flavor: dict[str, Any], trust: TrustOptions) -> NativeModel:
        model = _load(blob.data, blob.name, trust)
        return EstimatorModel(model, str(flavor.get("input_kind", "array")))


def _load(data: bytes, source: str, trust: TrustOptions) -> Any:
    """Check the types named by ``data``, then rebuild the object from those same bytes."""
    import skops.io as sio

    named = check_skops_types(data, source, trust)
    return sio.loads(data, trusted=named)


def _skops_version() -> str:
    from importlib.metadata import version

    return version("skops")


def encoder_categories(model: Any) -> dict[str, list[Any]]:
    """Known categories per input column, read from fitted OneHotEncoders in ColumnTransformers."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    found: dict[str, list[Any]] = {}

    def visit(est: Any) -> None:
        if isinstance(est, Pipeline):
            for _, step in est.steps:
                visit(step)
        elif isinstance(est, ColumnTransformer):
            for _, trans, cols in est.transformers_:
                if isinstance(trans, Pipeline):
                    trans = trans.steps[-1][1]
                if isinstance(trans, OneHotEncoder) and all(isinstance(c, str) for c in cols):
                    for col, cats in zip(cols, trans.categories_, strict=True):
                        found[col] = [c for c in plain_list(cats) if c == c and c is not None]

    visit(model)
    return found


# --------------------------------------------------------------------------- fitted inputs

SAMPLE_HINT = ("Pass --sample FILE (a CSV with a few real input rows), or sample_input= in "
                "Python.")


@dataclass
class FittedColumn:
    """One input column as the fitted pipeline sees it, with what it learned about the values.

    ``center`` and ``spread`` come from a scaler or imputer (mean and standard deviation,
    median and IQR, the mid-range ...); ``categories`` from an encoder's ``categories_``;
    ``words`` from a text vectoriser's vocabulary. They let rows be generated that look like
    the training data, for the input example and the ONNX parity check.
    """

    name: str
    dtype: str = "float64"
    nullable: bool = False
    categories: tuple[Any, ...] | None = None
    center: float | None = None
    spread: float | None = None
    words: tuple[str, ...] = ()

    def spec(self) -> ColumnSpec:
        cats = self.categories if self.dtype == "string" else None
        return ColumnSpec(self.name, self.dtype, self.nullable, cats)


def fitted_columns(model: Any) -> list[FittedColumn] | None:
    """The input columns of a model fitted on a DataFrame, read from the model itself.

    ``feature_names_in_`` gives the names and order; each column's type comes from the first
    step that reads it: an encoder (``categories_``: strings or numbers), an imputer (its
    ``statistics_``; missing values become allowed), a text vectoriser (strings), a numeric
    scaler, passthrough or the estimator itself (numbers). Columns a ``ColumnTransformer``
    drops are not inputs. A column only a custom or function transformer reads is taken as
    numbers (what scikit-learn assumes); the builder then predicts on generated rows, and a
    wrong guess ends in one error saying to pass a sample. None for models fitted on arrays.
    """
    names = getattr(model, "feature_names_in_", None)
    if names is None:
        return None
    found: dict[str, FittedColumn] = {}
    unknown: dict[str, str] = {}
    _visit(model, [str(n) for n in names], found, unknown)
    for column in unknown:  # numbers, as scikit-learn assumes; predicting on rows checks it
        found.setdefault(column, FittedColumn(column))
    return [found[n] for n in (str(n) for n in names) if n in found]


def _visit(est: Any, columns: list[str], found: dict[str, FittedColumn],
           unknown: dict[str, str], nullable: bool = False) -> None:
    """Record what ``est`` (reading ``columns`` first) reveals about each column."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    if isinstance(est, Pipeline):
        steps = [s for _, s in est.steps if s not in (None, "passthrough")]
        for position, step in enumerate(steps):
            if _is_imputer(step) and position + 1 < len(steps):
                _note_imputer(step, columns, found)
                nullable = True
                continue  # an imputer keeps its columns: the next step reveals more
            _visit(step, columns, found, unknown, nullable)
            return
        for column in columns:  # only imputers, or an empty pipeline
            found.setdefault(column, FittedColumn(column, nullable=nullable))
        return
    if isinstance(est, ColumnTransformer):
        names_in = [str(n) for n in getattr(est, "feature_names_in_", columns)]
        for _, trans, cols in est.transformers_:
            if isinstance(trans, str) and trans == "drop":
                continue
            selected = _column_names(cols, names_in)
            if isinstance(trans, str):  # passthrough: the values reach the next step as is
                for column in selected:
                    found.setdefault(column, FittedColumn(column, nullable=nullable))
                continue
            _visit(trans, selected, found, unknown, nullable)
        return
    _leaf(est, columns, found, unknown, nullable)


def _leaf(est: Any, columns: list[str], found: dict[str, FittedColumn],
          unknown: dict[str, str], nullable: bool) -> None:
    import numpy as np

    module = type(est).__module__
    categories = getattr(est, "categories_", None)
    if categories is not None and len(categories) == len(columns):
        for column, cats in zip(columns, categories, strict=True):
            found[column] = _categorical(column, list(np.asarray(cats, dtype=object)),
                                         nullable, found.get(column))
        return
    vocabulary = getattr(est, "vocabulary_", None)
    if module.startswith("sklearn.feature_extraction.text") and vocabulary is not None:
        for column in columns:
            found[column] = FittedColumn(column, "string", nullable,
                                         words=tuple(sorted(vocabulary))[:200])
        return
    if _is_imputer(est):
        _note_imputer(est, columns, found)
        nullable = True
    if module.startswith("sklearn.") and not module.startswith("sklearn.preprocessing._function"):
        center, spread = _statistics(est, len(columns))
        for i, column in enumerate(columns):
            previous = found.get(column)
            if previous is not None and previous.dtype == "string":
                continue  # a string imputer already said what the column holds
            found[column] = FittedColumn(
                column, "float64", nullable or bool(previous and previous.nullable),
                center=_pick(center, i, previous.center if previous else None),
                spread=_pick(spread, i, previous.spread if previous else None))
        return
    for column in columns:
        unknown[column] = type(est).__name__


def _categorical(column: str, cats: list[Any], nullable: bool,
                 previous: FittedColumn | None) -> FittedColumn:
    present = [c for c in cats if c is not None and c == c]
    has_missing = len(present) != len(cats) or nullable or bool(previous and previous.nullable)
    if present and all(isinstance(c, str) for c in present):
        return FittedColumn(column, "string", has_missing, tuple(present))
    numbers = [float(c) for c in present]
    integral = all(n == round(n) for n in numbers)
    return FittedColumn(column, "int64" if integral and not has_missing else "float64",
                        has_missing, tuple(int(n) if integral else n for n in numbers))


def _is_imputer(est: Any) -> bool:
    return type(est).__module__.startswith("sklearn.impute")


def _note_imputer(est: Any, columns: list[str], found: dict[str, FittedColumn]) -> None:
    """A string imputer makes its columns strings; a numeric one gives their centres."""
    import numpy as np

    stats = getattr(est, "statistics_", None)
    values = [] if stats is None else list(np.asarray(stats, dtype=object).ravel())
    for i, column in enumerate(columns):
        value = values[i] if i < len(values) else None
        if isinstance(value, str):
            found[column] = FittedColumn(column, "string", True, (value,))
        elif isinstance(value, int | float | np.number) and value == value:
            found[column] = FittedColumn(column, "float64", True, center=float(value))
        else:
            found[column] = FittedColumn(column, "float64", True)


def _statistics(est: Any, width: int) -> tuple[list[float] | None, list[float] | None]:
    """Per-column centre and spread learned by a scaler or imputer, when it learned them."""
    import numpy as np

    def read(name: str) -> list[float] | None:
        value = getattr(est, name, None)
        if value is None:
            return None
        try:
            arr = np.asarray(value, dtype=float).ravel()
        except (TypeError, ValueError):
            return None
        return [float(v) for v in arr] if len(arr) == width else None

    for centre_name, spread_name in (("mean_", "scale_"), ("center_", "scale_"),
                                     ("statistics_", None)):
        centre = read(centre_name)
        if centre is not None:
            return centre, read(spread_name) if spread_name else None
    low, high = read("data_min_"), read("data_max_")
    if low is not None and high is not None:
        return ([(a + b) / 2 for a, b in zip(low, high, strict=True)],
                [(b - a) / 4 for a, b in zip(low, high, strict=True)])
    return None, None


def _pick(values: list[float] | None, i: int, fallback: float | None) -> float | None:
    if values is None:
        return fallback
    value = values[i]
    return value if value == value else fallback


def _column_names(cols: Any, names_in: list[str]) -> list[str]:
    """A ColumnTransformer's column selection as names: names, indices, a mask or a slice."""
    import numpy as np

    if isinstance(cols, str):
        return [cols]
    if isinstance(cols, int | np.integer):
        return [names_in[int(cols)]]
    if isinstance(cols, slice):
        return names_in[cols]
    picked = list(np.asarray(cols).ravel().tolist()) if not isinstance(cols, list) else cols
    if picked and all(isinstance(c, bool) for c in picked):
        return [n for n, keep in zip(names_in, picked, strict=True) if keep]
    return [names_in[c] if isinstance(c, int) else str(c) for c in picked]


def generated_rows(columns: list[FittedColumn], count: int = 200, seed: int = 0) -> Any:
    """Rows that look like the training data, from what the pipeline learned (a DataFrame).

    The first row is the typical one (centres, first categories); the rest draw categories
    uniformly and numbers from a normal around each centre. No missing values are drawn: the
    parity check compares runtimes on values both must accept.
    """
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    data: dict[str, Any] = {}
    for col in columns:
        if col.categories:
            picks = rng.integers(len(col.categories), size=count)
            picks[0] = 0
            values: Any = [col.categories[int(i)] for i in picks]
        elif col.words:
            values = [" ".join(rng.choice(col.words, size=3)) for _ in range(count)]
        elif col.dtype == "string":
            values = [""] * count
        else:
            centre = col.center if col.center is not None else 0.0
            spread = col.spread if col.spread else max(1.0, abs(centre) * 0.2)
            values = centre + spread * rng.standard_normal(count)
            values[0] = centre
            if col.dtype in ("int64", "int32"):
                values = np.round(values).astype(np.int64)
        data[col.name] = pd.Series(values, dtype=object if col.dtype == "string" else None)
    return pd.DataFrame(data, columns=[c.name for c in columns])
