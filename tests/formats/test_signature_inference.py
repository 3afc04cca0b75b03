"""The signature of a scikit-learn pipeline fitted on a DataFrame, read from the pipeline itself.

No sample is given in these tests: names and order come from ``feature_names_in_``, types from
the step that reads each column (encoders' ``categories_``, imputers, scalers, passthrough),
and the parity check runs on rows generated from what the steps learned. Where the model
reveals too little, building fails with one line that says to pass a sample.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlharbor.core.errors import InvalidInputError
from mlharbor.formats.builder import build_bundle
from mlharbor.formats.fitted_inputs import fitted_columns, generated_rows
from mlharbor.formats.predictor import load_bundle


def frame(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    data = pd.DataFrame({
        "city": rng.choice(["oslo", "rome", "lima"], n),
        "age": rng.normal(40, 12, n).round(1),
        "visits": rng.integers(0, 9, n),
        "device": np.array(["ios", "android", None], dtype=object)[rng.integers(0, 3, n)],
        "income": rng.normal(5e4, 1e4, n),
    })
    data.loc[rng.choice(n, n // 10, replace=False), "age"] = np.nan
    return data


def labels(data: pd.DataFrame) -> np.ndarray:
    score = (data["city"] == "oslo") * 1.0 + data["visits"] / 4 - data["age"].fillna(40) / 40
    out: np.ndarray = (score > 0).to_numpy().astype(int)
    return out


def mixed_pipeline(final: Any = None) -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import MinMaxScaler, OneHotEncoder, StandardScaler

    prepare = ColumnTransformer([
        ("city", OneHotEncoder(handle_unknown="ignore"), ["city"]),
        ("device", make_pipeline(SimpleImputer(strategy="most_frequent"),
                                 OneHotEncoder(handle_unknown="ignore")), ["device"]),
        ("age", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), ["age"]),
        ("visits", OneHotEncoder(handle_unknown="ignore"), ["visits"]),
        ("income", MinMaxScaler(), ["income"]),
    ])
    return Pipeline([("prepare", prepare),
                     ("model", final or LogisticRegression(max_iter=500))])


def test_every_column_type_comes_from_the_fitted_steps() -> None:
    train = frame(400)
    model = mixed_pipeline().fit(train, labels(train))
    columns = {c.name: c for c in fitted_columns(model) or []}
    assert list(columns) == ["city", "age", "visits", "device", "income"]  # fitted order
    assert (columns["city"].dtype, columns["city"].categories) == ("string",
                                                                   ("lima", "oslo", "rome"))
    assert not columns["city"].nullable
    assert columns["device"].dtype == "string" and columns["device"].nullable  # imputed
    assert columns["device"].categories == ("android", "ios")
    assert columns["age"].dtype == "float64" and columns["age"].nullable
    imputed = train["age"].fillna(train["age"].median())
    assert columns["age"].center == pytest.approx(imputed.mean())  # the scaler's mean and sd
    assert columns["age"].spread == pytest.approx(imputed.std(ddof=0))
    assert columns["visits"].dtype == "int64"  # encoded integers stay integers
    assert columns["visits"].categories == tuple(range(9))
    assert columns["income"].dtype == "float64" and not columns["income"].nullable
    lo, hi = train["income"].min(), train["income"].max()
    assert columns["income"].center == pytest.approx((lo + hi) / 2)


def test_registers_converts_and_predicts_like_the_pipeline(tmp_path: Path) -> None:
    train, test = frame(500), frame(200, seed=9)
    model = mixed_pipeline().fit(train, labels(train))
    result = build_bundle(model, tmp_path / "b")  # no sample, no training data
    assert result.parity["status"] == "passed", result.parity
    assert result.runtime == "onnx" and result.parity["rows"] > 100
    expected = model.predict(test)
    for runtime in ("onnx", "native"):
        predictor = load_bundle(tmp_path / "b", runtime=runtime)
        np.testing.assert_array_equal(predictor.predict(test), expected)
        np.testing.assert_allclose(predictor.predict_proba(test), model.predict_proba(test),
                                   atol=1e-6)
    row = test.iloc[0].to_dict() | {"age": None, "device": None}  # nullable where imputed
    assert load_bundle(tmp_path / "b").predict([row]).tolist() == model.predict(
        pd.DataFrame([row]).astype({"age": float})).tolist()


def test_columns_chosen_by_position_passthrough_and_dropped(tmp_path: Path) -> None:
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OrdinalEncoder

    train = frame(300).assign(row_id=np.arange(300))
    prepare = ColumnTransformer([("text", OrdinalEncoder(), [0]),
                                 ("kept", "passthrough", ["visits", "income"])],
                                remainder="drop")
    model = Pipeline([("prepare", prepare),
                      ("model", RandomForestClassifier(20, random_state=0))])
    model.fit(train, labels(train))
    result = build_bundle(model, tmp_path / "b")
    inputs = result.manifest.signature["inputs"]
    assert [(c["name"], c["dtype"]) for c in inputs] == [
        ("city", "string"), ("visits", "float64"), ("income", "float64")]  # dropped: not asked
    test = frame(50, seed=3)
    predictor = load_bundle(tmp_path / "b", runtime="native")
    np.testing.assert_array_equal(predictor.predict(test[["city", "visits", "income"]]),
                                  model.predict(test.assign(row_id=0)))


def test_when_the_model_reveals_too_little_one_line_says_pass_a_sample(tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer, OneHotEncoder

    train = frame(200)
    model = Pipeline([("same", FunctionTransformer()), ("encode", OneHotEncoder()),
                      ("model", LogisticRegression())]).fit(train[["city"]], labels(train))
    with pytest.raises(InvalidInputError) as caught:
        build_bundle(model, tmp_path / "b")
    text = str(caught.value)
    assert "--sample FILE" in text and "\n" not in text
    assert "ufunc" not in text and "isnan" not in text
    sample = build_bundle(model, tmp_path / "c", sample_input=train[["city"]].head(5))
    assert sample.manifest.signature["inputs"][0]["dtype"] == "string"  # the sample fixes it


def test_array_fitted_models_keep_the_numeric_signature(tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 3))
    model = LogisticRegression().fit(x, (x[:, 0] > 0).astype(int))
    assert fitted_columns(model) is None
    result = build_bundle(model, tmp_path / "b")
    assert [c["name"] for c in result.manifest.signature["inputs"]] == ["x0", "x1", "x2"]


@settings(derandomize=True, deadline=None, max_examples=12)
@given(st.lists(st.sampled_from(["text", "number", "imputed-text", "imputed-number", "code"]),
                min_size=1, max_size=5),
       st.integers(0, 2 ** 16))
def test_generated_rows_fit_the_signature_and_the_pipeline(kinds: list[str], seed: int) -> None:
    """Whatever the mix of column kinds, the rows made from the fitted pipeline are accepted
    by the inferred signature and by the pipeline itself."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import OneHotEncoder, RobustScaler

    from mlharbor.core.signature import Signature

    rng = np.random.default_rng(seed)
    n = 60
    data: dict[str, Any] = {}
    steps = []
    for i, kind in enumerate(kinds):
        name = f"c{i}"
        if kind in ("text", "imputed-text"):
            values = rng.choice(["a", "b", "c"], n).astype(object)
            if kind == "imputed-text":
                values[::7] = None
                step: Any = make_pipeline(SimpleImputer(strategy="most_frequent"),
                                          OneHotEncoder(handle_unknown="ignore"))
            else:
                step = OneHotEncoder(handle_unknown="ignore")
        elif kind == "code":
            values, step = rng.integers(0, 4, n), OneHotEncoder(handle_unknown="ignore")
        else:
            values = rng.normal(rng.uniform(-100, 100), rng.uniform(0.1, 50), n)
            if kind == "imputed-number":
                values[::5] = np.nan
                step = make_pipeline(SimpleImputer(), RobustScaler())
            else:
                step = RobustScaler()
        data[name] = values
        steps.append((name, step, [name]))
    train = pd.DataFrame(data)
    y = np.arange(n) % 2
    model = Pipeline([("prepare", ColumnTransformer(steps)),
                      ("model", LogisticRegression())]).fit(train, y)
    columns = fitted_columns(model)
    assert columns is not None and [c.name for c in columns] == list(data)
    rows = generated_rows(columns, count=40, seed=seed)
    signature = Signature(tuple(c.spec() for c in columns))
    signature.validator().columns(rows)  # raises when a generated value breaks the signature
    assert len(model.predict(rows)) == 40
    for col in columns:
        if col.categories:
            assert set(rows[col.name]) <= set(col.categories)
