"""Additivity, the contract of every explainer: base value + sum(attributions) equals the
model's own output in the stated space, for every supported model kind, after a real round
trip through a bundle (saved by its format, loaded back natively)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mlharbor.explain import explainer_for
from mlharbor.formats.base import TrustOptions
from mlharbor.formats.builder import build_bundle
from mlharbor.formats.predictor import load_bundle

NUMERIC = ["f0", "f1", "f2", "f3"]


def numeric_data(classes: int = 2) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(0)
    x = pd.DataFrame(rng.normal(size=(300, 4)), columns=NUMERIC)
    score = x.f0 + 0.5 * x.f1 - x.f2 + 0.3 * rng.normal(size=300)
    y = np.digitize(score, np.quantile(score, np.linspace(0, 1, classes + 1)[1:-1]))
    return x, y


def mixed_data() -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(1)
    x = pd.DataFrame(rng.normal(size=(300, 3)), columns=["f0", "f1", "noise"])
    x["contract"] = rng.choice(["month", "year", "two-year"], size=300)
    y = ((x.f0 + (x.contract == "month") * 1.5 - 0.5) > 0).astype(int).to_numpy()
    return x, y


def one_hot_pipeline(estimator: Any) -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    pre = ColumnTransformer([("num", StandardScaler(), ["f0", "f1"]),
                             ("cat", OneHotEncoder(handle_unknown="ignore"), ["contract"])],
                            remainder="drop")  # 'noise' is dropped: it must get zero
    return Pipeline([("pre", pre), ("model", estimator)])


MLP: dict[str, Any] = {"hidden_layer_sizes": (8,), "max_iter": 300, "solver": "lbfgs",
                       "random_state": 0}


def sk(name: str) -> Callable[[], Any]:
    def make() -> Any:
        from sklearn import ensemble, linear_model, neural_network, tree

        return {
            "rf": lambda: ensemble.RandomForestClassifier(20, max_depth=5, random_state=0),
            "gbt": lambda: ensemble.GradientBoostingClassifier(n_estimators=20, random_state=0),
            "hgb": lambda: ensemble.HistGradientBoostingClassifier(max_iter=20),
            "dt": lambda: tree.DecisionTreeClassifier(max_depth=5, random_state=0),
            "et_reg": lambda: ensemble.ExtraTreesRegressor(10, max_depth=5, random_state=0),
            "rf_reg": lambda: ensemble.RandomForestRegressor(10, max_depth=5, random_state=0),
            "lr": lambda: linear_model.LogisticRegression(max_iter=500),
            "ridge": lambda: linear_model.Ridge(),
            "mlp": lambda: neural_network.MLPClassifier(**MLP),
            "mlp_reg": lambda: neural_network.MLPRegressor(**MLP),
        }[name]()
    return make


def xgb(classes: int) -> Any:
    import xgboost

    return xgboost.XGBClassifier(n_estimators=15, max_depth=3) if classes \
        else xgboost.XGBRegressor(n_estimators=15, max_depth=3)


def lgbm(classes: int) -> Any:
    import lightgbm

    kind = lightgbm.LGBMClassifier if classes else lightgbm.LGBMRegressor
    return kind(n_estimators=15, num_leaves=7, min_child_samples=5, verbose=-1)


# (id, model factory, data, classes (0: regression), expected method prefix)
CASES: list[tuple[str, Callable[[], Any], str, int, str]] = [
    ("random_forest", sk("rf"), "numeric", 2, "tree_shap"),
    ("random_forest_3_classes", sk("rf"), "numeric", 3, "tree_shap"),
    ("gradient_boosting", sk("gbt"), "numeric", 2, "tree_shap"),
    # shap reads GradientBoostingClassifier for two classes only: the fallback, stated.
    ("gradient_boosting_3_classes", sk("gbt"), "numeric", 3, "permutation"),
    ("hist_gradient_boosting", sk("hgb"), "numeric", 2, "tree_shap"),
    ("decision_tree", sk("dt"), "numeric", 2, "tree_shap"),
    ("extra_trees_regressor", sk("et_reg"), "numeric", 0, "tree_shap"),
    ("random_forest_regressor", sk("rf_reg"), "numeric", 0, "tree_shap"),
    ("xgboost", lambda: xgb(2), "numeric", 2, "xgboost"),
    ("xgboost_3_classes", lambda: xgb(3), "numeric", 3, "xgboost"),
    ("xgboost_regressor", lambda: xgb(0), "numeric", 0, "xgboost"),
    ("lightgbm", lambda: lgbm(2), "numeric", 2, "lightgbm"),
    ("lightgbm_3_classes", lambda: lgbm(3), "numeric", 3, "lightgbm"),
    ("lightgbm_regressor", lambda: lgbm(0), "numeric", 0, "lightgbm"),
    ("logistic_regression", sk("lr"), "numeric", 2, "linear"),
    ("logistic_regression_3_classes", sk("lr"), "numeric", 3, "linear"),
    ("ridge_regressor", sk("ridge"), "numeric", 0, "linear"),
    ("pipeline_one_hot_forest", lambda: one_hot_pipeline(sk("rf")()), "mixed", 2, "tree_shap"),
    ("pipeline_one_hot_logistic", lambda: one_hot_pipeline(sk("lr")()), "mixed", 2, "linear"),
    ("fallback_mlp_pipeline", lambda: one_hot_pipeline(sk("mlp")()), "mixed", 2,
     "permutation"),
    ("fallback_mlp_regressor", sk("mlp_reg"), "numeric", 0, "permutation"),
]


def model_output(model: Any, x: Any, space: str, classes: int) -> np.ndarray:
    """The model's own output in ``space``, asked of the original (unsaved) object."""
    module = type(model).__module__
    if space == "probability":
        proba = model.predict_proba(x)
        return proba[:, 1:] if classes == 2 else proba
    if space == "value":
        return np.asarray(model.predict(x), dtype=float).reshape(len(x), 1)
    if module.startswith("xgboost"):
        raw = model.predict(np.asarray(x), output_margin=True)
    elif module.startswith("lightgbm"):
        raw = model.predict(np.asarray(x), raw_score=True)
    else:
        raw = model.decision_function(x)
    return np.asarray(raw, dtype=float).reshape(len(x), -1)


#: HistGradientBoosting holds tree predictor objects the skops policy does not trust by default
#: (formats/sklearn.py CURATED_TYPES): the owner trusts them explicitly, as a user would.
TRUST = TrustOptions(skops_trusted_types=(
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper"))


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize(("make", "kind", "classes", "method"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_attributions_sum_to_the_model_output(
        make: Callable[[], Any], kind: str, classes: int, method: str, tmp_path: Path) -> None:
    x, y = mixed_data() if kind == "mixed" else numeric_data(max(classes, 2))
    if classes == 0:
        y = x.f0.to_numpy() * 2 + x.f1.to_numpy()
    model = make()
    fit_x = x.to_numpy() if type(model).__module__.startswith(("xgboost", "lightgbm")) else x
    model.fit(fit_x, y)
    build_bundle(model, tmp_path / "b", training_data=x, runtime="native", trust=TRUST)
    predictor = load_bundle(tmp_path / "b", runtime="native", trust=TRUST)
    explainer = explainer_for(predictor, x.head(40))
    rows = x.iloc[100:106]
    attributions = explainer.explain(rows)

    assert attributions.method.startswith(method)
    assert attributions.feature_names == predictor.signature.names
    expected = model_output(model, rows.to_numpy() if fit_x is not x else rows,
                            attributions.space, classes)
    assert attributions.outputs().shape == expected.shape
    np.testing.assert_allclose(attributions.outputs(), expected, rtol=1e-4, atol=1e-5)
    assert np.abs(attributions.values).sum() > 0  # something was attributed
    if kind == "mixed" and method != "permutation":
        noise = attributions.feature_names.index("noise")  # dropped by the preprocessor
        assert np.all(attributions.values[:, noise, :] == 0)


def test_the_sampled_fallback_finds_the_exact_values_of_an_additive_model() -> None:
    """For an additive model every ordering gives each feature the same gain, so the sampled
    fallback must return exactly the linear rule's values: a check of the split between
    features, which additivity alone cannot catch."""
    from sklearn.linear_model import LinearRegression

    from mlharbor.core.signature import infer_signature
    from mlharbor.explain.explainers import LinearExplainer, PermutationExplainer
    from mlharbor.formats.base import EstimatorModel

    x, _y = numeric_data()
    model = LinearRegression().fit(x, 3 * x.f0 - 2 * x.f2 + 0.5 * x.f3)
    signature = infer_signature(x)
    common: dict[str, Any] = {"signature": signature, "frame": True, "classes": None,
                              "space": "value"}
    background = x.head(30)
    exact = LinearExplainer(model, background, steps=[], mapping=[0, 1, 2, 3], **common)
    sampled = PermutationExplainer(EstimatorModel(model, "frame"), background, budget=5_000,
                                   **common)
    rows = x.iloc[50:54]
    expected = exact.explain(rows)
    found = sampled.explain(rows)
    np.testing.assert_allclose(found.values, expected.values, atol=1e-9)
    np.testing.assert_allclose(found.base_values, expected.base_values, atol=1e-9)
    assert "30 background rows" in found.method


def test_a_budget_bounds_the_evaluations() -> None:
    from mlharbor.explain.permutation import plan

    for features, background, budget in ((4, 100, 20_000), (40, 100, 1_000), (3, 2, 10)):
        rows, pairs = plan(features, background, budget)
        assert rows >= 1 and pairs >= 1 and rows <= background
        assert 2 * pairs * (features + 1) * rows <= max(budget, 2 * (features + 1))


def test_an_onnx_predictor_is_refused_with_the_fix(tmp_path: Path) -> None:
    from sklearn.ensemble import RandomForestClassifier

    from mlharbor.core.errors import InvalidInputError

    x, y = numeric_data()
    build_bundle(RandomForestClassifier(5, random_state=0).fit(x, y), tmp_path / "b",
                 training_data=x)
    with pytest.raises(InvalidInputError, match="runtime='native'"):
        explainer_for(load_bundle(tmp_path / "b", runtime="onnx"))


def test_bad_rows_are_refused_naming_the_column(tmp_path: Path) -> None:
    from sklearn.ensemble import RandomForestClassifier

    from mlharbor.core.errors import InvalidInputError

    x, y = numeric_data()
    build_bundle(RandomForestClassifier(5, random_state=0).fit(x, y), tmp_path / "b",
                 training_data=x, runtime="native")
    explainer = explainer_for(load_bundle(tmp_path / "b", runtime="native"))
    with pytest.raises(InvalidInputError, match="f3"):
        explainer.explain([{"f0": 1.0, "f1": 2.0, "f2": 3.0}])
    with pytest.raises(InvalidInputError, match="f0"):
        explainer.explain([{"f0": "high", "f1": 2.0, "f2": 3.0, "f3": 1.0}])


def test_a_nested_step_that_cannot_count_its_columns_takes_the_fallback() -> None:
    """An inner pipeline over one column whose step cannot say its output width (a
    FunctionTransformer): the column map is unknown, so the sampled fallback explains the
    whole pipeline and still adds up. It used to map to no column at all, and the attributions
    summed to the base value alone."""
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    from mlharbor.core.signature import infer_signature
    from mlharbor.formats.base import EstimatorModel

    x = pd.DataFrame({"a": np.linspace(0, 1, 100)})
    inner = Pipeline([("log", FunctionTransformer(np.log1p))])
    model = Pipeline([("prep", inner), ("model", RandomForestRegressor(5, random_state=0))])
    model.fit(x, 2 * x.a)
    explainer = explainer_for(EstimatorModel(model, "frame"), x, signature=infer_signature(x),
                              task="regression")
    assert explainer.method.startswith("permutation")
    found = explainer.explain(x.head(5))
    np.testing.assert_allclose(found.outputs()[:, 0], model.predict(x.head(5)), atol=1e-9)
