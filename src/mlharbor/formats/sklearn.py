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
import sys
import threading
import types
import zipfile
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

from mlharbor.core.errors import UnsafeArtifactError
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
    # HistGradientBoosting's fitted trees: arrays of nodes, no callables
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
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


# Array-library adapters vendored in scikit-learn. Importing skops.io lists every scikit-learn
# estimator (sklearn.utils.all_estimators), and its package walk imports these packages too —
# which import torch, dask.array or cupy when installed (seconds per process) although no
# estimator lives there (all_estimators skips `externals`).
_ADAPTER_PACKAGES = tuple(f"sklearn.externals.array_api_compat.{lib}"
                          for lib in ("torch", "dask", "cupy"))
_SKOPS_IMPORT = threading.Lock()


def skops_io() -> types.ModuleType:
    """``skops.io``, imported without importing the array libraries scikit-learn's adapters
    wrap: while skops imports, the adapter packages are stand-ins without a path (so the walk
    does not enter them), removed again afterwards so a later real import still works. The
    list of estimators skops trusts is the same either way."""
    loaded = sys.modules.get("skops.io")
    if loaded is not None:
        return loaded
    with _SKOPS_IMPORT:
        standins = {name: types.ModuleType(name) for name in _ADAPTER_PACKAGES
                    if name not in sys.modules}
        sys.modules.update(standins)
        try:
            import skops.io  # noqa: F401  (the import is the point)
        finally:
            for name, standin in standins.items():
                if sys.modules.get(name) is standin:
                    del sys.modules[name]
    return sys.modules["skops.io"]


@cache
def skops_default_types() -> frozenset[str]:
    """The names skops trusts by default (its own audited lists), when skops exposes them."""
    try:
        skops_io()
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
    sio = skops_io()

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
        sio = skops_io()

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
    sio = skops_io()

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
