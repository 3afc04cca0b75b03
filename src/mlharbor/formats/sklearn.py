"""scikit-learn estimators and pipelines, stored with skops.

skops rebuilds objects from a JSON schema instead of running pickle code, but it still has to
import the types the file names. Which types may be imported is platform policy, never the
file's say: scikit-learn, NumPy and SciPy types, plus ``formats.skops_trusted_types`` from the
settings. Names that execute code (``builtins.eval``, ``os.system`` ...) are refused even when
a setting lists them.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from mlharbor.core.errors import UnsafeArtifactError
from mlharbor.formats.base import ModelFormat, ModelInfo, NativeModel, TrustOptions, plain_list

TRUSTED_PREFIXES = ("sklearn.", "numpy.", "scipy.")
# Never loadable, whatever the settings say: each one runs code or touches the system.
DENIED_MODULES = frozenset({
    "builtins", "os", "posix", "nt", "subprocess", "sys", "shutil", "importlib", "pickle",
    "marshal", "runpy", "socket", "ctypes", "code", "codeop", "pty", "webbrowser", "io",
    "operator", "functools", "types", "pathlib", "tempfile", "multiprocessing", "asyncio",
})
DENIED_SUFFIXES = (".eval", ".exec", ".system", ".popen", ".compile", ".__import__",
                   ".getattr", ".setattr", ".open", ".load", ".loads", ".runstring")
# Corners of the trusted libraries that run code, touch files or build extensions: a model
# could name one as a function (FunctionTransformer(func=...)) and have predict call it.
DENIED_PREFIXES = ("numpy.testing", "numpy.distutils", "numpy.f2py", "numpy.ctypeslib",
                   "numpy.lib.npyio", "numpy.lib.format", "scipy._lib", "sklearn.utils._testing",
                   "sklearn.externals", "sklearn.datasets")


def untrusted_types(types: list[str], allowlist: tuple[str, ...]) -> list[str]:
    """Types outside platform policy (default prefixes + settings allowlist, minus deny list)."""
    refused = []
    for name in types:
        module = name.split(".", 1)[0]
        denied = (module in DENIED_MODULES or name.endswith(DENIED_SUFFIXES)
                  or name.startswith(DENIED_PREFIXES))
        allowed = name.startswith(TRUSTED_PREFIXES) or name in allowlist
        if denied or not allowed:
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
        raise UnsafeArtifactError(
            f"Refusing to load {source!r}: it names type(s) outside the trusted policy: "
            f"{', '.join(refused)}.",
            hint="Only scikit-learn, NumPy and SciPy types load by default. If a listed type is "
            "your own safe class, add it to MLHARBOR_FORMATS__SKOPS_TRUSTED_TYPES. Types that "
            "run code (eval, exec, os.system ...) are never allowed.", types=refused,
        )
    return named


class SklearnModel(NativeModel):
    def __init__(self, model: Any, input_kind: str) -> None:
        self.model = model
        self.input_kind = input_kind
        classes = getattr(model, "classes_", None)
        self.classes = None if classes is None else np.asarray(classes)

    def predict(self, data: Any) -> np.ndarray:
        return np.asarray(self.model.predict(data))

    def predict_proba(self, data: Any) -> np.ndarray:
        return np.asarray(self.model.predict_proba(data))


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

    def read_file(self, path: Path, trust: TrustOptions) -> Any:
        return _load(path.read_bytes(), path.name, trust)

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

    def load(self, path: Path, flavor: dict[str, Any], trust: TrustOptions) -> NativeModel:
        model = _load(path.read_bytes(), path.name, trust)
        return SklearnModel(model, str(flavor.get("input_kind", "array")))


def _load(data: bytes, source: str, trust: TrustOptions) -> Any:
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
