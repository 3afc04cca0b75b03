"""The skops type policy: estimator classes by prefix, everything else from an explicit list.

NumPy/SciPy functions that read or write files or wrap arbitrary callables used to pass because
they sit under ``numpy.`` or ``scipy.``; a model naming one (``FunctionTransformer(func=...)``)
would call it on predict. They are refused now, naming the type, even when a setting lists them.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mlharbor.core.errors import UnsafeArtifactError
from mlharbor.formats.base import TrustOptions
from mlharbor.formats.builder import build_bundle
from mlharbor.formats.predictor import load_bundle
from mlharbor.formats.sklearn import check_skops_types, untrusted_types
from tests.formats.cases import churn_frame, churn_labels


def _scipy(name: str) -> Callable[[], Any]:
    def get() -> Any:
        from scipy.io import matlab

        return getattr(matlab, name)

    return get


DANGEROUS: dict[str, Callable[[], Any]] = {
    "numpy.save": lambda: np.save,
    "numpy.savetxt": lambda: np.savetxt,
    "numpy.fromfile": lambda: np.fromfile,
    "numpy.loadtxt": lambda: np.loadtxt,
    "numpy.genfromtxt": lambda: np.genfromtxt,
    "numpy.memmap": lambda: np.memmap,
    "numpy.frompyfunc": lambda: np.frompyfunc,
    "numpy.vectorize": lambda: np.vectorize,
    "scipy.io.matlab._mio.savemat": _scipy("savemat"),
    "scipy.io.matlab._mio.loadmat": _scipy("loadmat"),
}


def _skops_with(func: Any, path: Path) -> Path:
    import skops.io as sio
    from sklearn.preprocessing import FunctionTransformer

    sio.dump(FunctionTransformer(func=func), path)
    return path


@pytest.mark.parametrize("name", sorted(DANGEROUS))
def test_file_and_callable_functions_are_refused(tmp_path: Path, name: str) -> None:
    source = _skops_with(DANGEROUS[name](), tmp_path / "model.skops")
    with pytest.raises(UnsafeArtifactError, match="outside the trusted policy") as info:
        build_bundle(source, tmp_path / "bundle", sample_input=np.zeros((2, 2)))
    assert name in str(info.value)
    assert info.value.details["types"] == [name]
    assert not (tmp_path / "bundle" / "manifest.json").exists()


@pytest.mark.parametrize("name", sorted(DANGEROUS))
def test_settings_cannot_allow_them_either(name: str) -> None:
    assert untrusted_types([name], (name,)) == [name]
    for never in ("builtins.eval", "os.system", "posix.system", "numpy.load"):
        assert untrusted_types([never], (never,)) == [never]


def test_refusal_at_load_names_the_type(tmp_path: Path) -> None:
    import skops.io as sio
    from sklearn.preprocessing import FunctionTransformer

    data = sio.dumps(FunctionTransformer(func=np.fromfile))
    with pytest.raises(UnsafeArtifactError, match=r"numpy\.fromfile") as info:
        check_skops_types(data, "model.skops", TrustOptions(skops_trusted_types=(
            "numpy.fromfile",)))
    assert "can never be allowed" in str(info.value)


def test_policy_classes_functions_and_settings() -> None:
    # scikit-learn estimator classes pass by prefix, also private ones skops does not list ...
    assert untrusted_types([
        "sklearn.ensemble._forest.RandomForestClassifier",
        "sklearn.compose._column_transformer.ColumnTransformer",
        "sklearn.impute._base.SimpleImputer",
        "sklearn.tree._tree.Tree", "numpy.dtype",
    ], ()) == []
    # ... but not functions, non-estimator objects, aliases or test modules under sklearn.
    assert untrusted_types([
        "sklearn.utils.validation.check_array", "sklearn.utils._joblib.Parallel",
        "sklearn.ensemble.RandomForestClassifier",  # alias: the class lives in ._forest
        "sklearn.utils._testing.MinimalClassifier", "sklearn.base.clone",
    ], ()) == ["sklearn.utils.validation.check_array", "sklearn.utils._joblib.Parallel",
               "sklearn.ensemble.RandomForestClassifier",
               "sklearn.utils._testing.MinimalClassifier", "sklearn.base.clone"]
    # other NumPy / SciPy names need a setting: the prefix alone no longer trusts them.
    assert untrusted_types(["numpy.polynomial.Polynomial"], ()) == [
        "numpy.polynomial.Polynomial"]
    assert untrusted_types(["numpy.polynomial.Polynomial"],
                           ("numpy.polynomial.Polynomial",)) == []


def test_dateparts_is_trusted_by_name_without_importing_training() -> None:
    assert untrusted_types(["mlharbor.training.preparation.DateParts"], ()) == []
    assert untrusted_types(["mlharbor.training.preparation.FeatureFunctions"], ()) == [
        "mlharbor.training.preparation.FeatureFunctions"]
    code = ("import sys, mlharbor.formats.sklearn as s; "
            "s.untrusted_types(['mlharbor.training.preparation.DateParts'], ()); "
            "print('mlharbor.training' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True)
    assert out.stdout.strip() == "False"


def test_skops_imports_without_the_array_libraries_and_trusts_the_same_estimators() -> None:
    """skops lists every estimator at import; through ``skops_io`` that walk does not import
    torch or dask (installed here), the list is the same as a plain import's, and the adapters
    still import for real afterwards."""
    listing = ("import hashlib, skops.io._trusted_types as t; "
               "print(hashlib.sha256(','.join(t.SKLEARN_ESTIMATOR_TYPE_NAMES).encode())"
               ".hexdigest())")
    code = ("import sys; from mlharbor.formats.sklearn import skops_io; skops_io(); "
            "print('torch' in sys.modules, 'dask' in sys.modules); " + listing + "; "
            "import sklearn.externals.array_api_compat.torch as a; print(hasattr(a, 'asarray'))")
    ours = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.split()
    plain = subprocess.run([sys.executable, "-c", listing], capture_output=True, text=True,
                           check=True).stdout.split()
    assert ours == ["False", "False", plain[0], "True"]


def test_dateparts_pipeline_loads_by_default() -> None:
    import skops.io as sio
    from sklearn.linear_model import LinearRegression
    from sklearn.pipeline import Pipeline

    from mlharbor.formats.bundle import ModelBytes
    from mlharbor.formats.sklearn import SklearnFormat
    from mlharbor.training.preparation import DateParts

    frame = pd.DataFrame({"when": ["2024-01-05", "2023-07-14", "2022-03-01", "2021-12-31"]})
    model = Pipeline([("parts", DateParts(("year", "month"))), ("lin", LinearRegression())])
    model.fit(frame, [1.0, 2.0, 3.0, 4.0])
    blob = ModelBytes.of(Path("model.skops"), sio.dumps(model))
    loaded = SklearnFormat().read_file(blob, TrustOptions())
    np.testing.assert_allclose(loaded.predict(frame), model.predict(frame))


def _pipeline(final: Any) -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    numeric = Pipeline([("impute", SimpleImputer(strategy="median")),
                        ("scale", StandardScaler())])
    categorical = Pipeline([("impute", SimpleImputer(strategy="constant", fill_value="missing")),
                            ("onehot", OneHotEncoder(handle_unknown="ignore"))])
    pre = ColumnTransformer([("num", numeric, ["age", "income", "tenure"]),
                             ("cat", categorical, ["plan"])])
    return Pipeline([("pre", pre), ("model", final)])


@pytest.mark.parametrize("final", ["forest", "boosting", "hist_boosting"])
def test_normal_pipelines_still_load(tmp_path: Path, final: str) -> None:
    import skops.io as sio
    from sklearn.ensemble import (
        GradientBoostingClassifier,
        HistGradientBoostingClassifier,
        RandomForestClassifier,
    )

    estimator = {"forest": RandomForestClassifier(10, max_depth=4, random_state=0),
                 "boosting": GradientBoostingClassifier(n_estimators=10, random_state=0),
                 "hist_boosting": HistGradientBoostingClassifier(max_iter=10, random_state=0),
                 }[final]
    train = churn_frame(200)
    train.loc[::7, "plan"] = None
    train.loc[::5, "income"] = np.nan
    model = _pipeline(estimator).fit(train, churn_labels(train.fillna({"plan": "basic"})))
    source = tmp_path / "model.skops"
    sio.dump(model, source)
    build_bundle(source, tmp_path / "bundle", training_data=train, runtime="native")
    predictor = load_bundle(tmp_path / "bundle")
    test = churn_frame(30, seed=3)
    np.testing.assert_array_equal(predictor.predict(test), model.predict(test))
