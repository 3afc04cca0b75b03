"""Pipelines as `mlharbor train` builds them convert to ONNX and pass the parity check.

Their categorical step is ``SimpleImputer(strategy="constant", fill_value="missing")`` on string
columns, with scikit-learn's default missing value (NaN: None and NaN in object columns), and
their numeric step imputes int64 and float64 columns together; skl2onnx alone converts neither.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mlharbor.formats.builder import build_bundle
from mlharbor.formats.onnx import MISSING_STRING
from mlharbor.formats.predictor import load_bundle


def _frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "tenure": rng.integers(0, 72, n),
        "charges": rng.normal(60, 20, n),
        "contract": rng.choice(["monthly", "yearly", "two-year"], n).astype(object),
        "internet": rng.choice(["dsl", "fiber", "none"], n).astype(object),
    })
    frame.loc[rng.random(n) < 0.1, "charges"] = np.nan
    frame.loc[rng.random(n) < 0.1, "contract"] = None
    frame.loc[rng.random(n) < 0.05, "internet"] = np.nan
    return frame


def _labels(frame: pd.DataFrame) -> np.ndarray:
    score = frame["tenure"] / 30 - frame["charges"].fillna(60) / 40 + (
        frame["contract"] == "monthly")
    return (score > -0.5).to_numpy().astype(int)


def _trained_pipeline(final: Any) -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    numeric = Pipeline([("impute", SimpleImputer(strategy="median", fill_value=0.0)),
                        ("scale", StandardScaler())])
    categorical = Pipeline([("impute", SimpleImputer(strategy="constant", fill_value="missing")),
                            ("encode", OneHotEncoder(handle_unknown="ignore"))])
    prepare = ColumnTransformer([("num", numeric, ["tenure", "charges"]),
                                 ("cat", categorical, ["contract", "internet"])])
    return Pipeline([("prepare", prepare), ("model", final)])


@pytest.mark.parametrize("final", ["logistic", "forest"])
def test_string_constant_imputer_converts_and_passes_parity(tmp_path: Path, final: str) -> None:
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    estimator = (LogisticRegression(max_iter=500) if final == "logistic"
                 else RandomForestClassifier(20, max_depth=6, random_state=0))
    train = _frame(400, seed=1)
    model = _trained_pipeline(estimator).fit(train, _labels(train))
    result = build_bundle(model, tmp_path / "b", training_data=train)
    assert result.parity["status"] == "passed", result.parity
    assert result.runtime == "onnx"

    test = _frame(120, seed=2)
    test.loc[0, "contract"] = None
    test.loc[1, "internet"] = np.nan
    test.loc[2, "charges"] = np.nan
    expected, proba = model.predict(test), model.predict_proba(test)
    for runtime in ("onnx", "native"):
        predictor = load_bundle(tmp_path / "b", runtime=runtime)
        np.testing.assert_array_equal(predictor.predict(test), expected)
        np.testing.assert_allclose(predictor.predict_proba(test), proba, atol=1e-5)


def test_missing_strings_are_fed_as_the_marker() -> None:
    from mlharbor.formats.onnx import _strings_with_marker

    column = np.array(["a", None, float("nan"), "None", "nan"], dtype=object)
    fed = _strings_with_marker(column)
    assert fed.tolist() == ["a", MISSING_STRING, MISSING_STRING, "None", "nan"]
    assert column[1] is None  # the caller's array is not modified
    plain = np.array(["a", "b"], dtype=object)
    assert _strings_with_marker(plain) is plain
