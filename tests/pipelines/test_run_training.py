"""run_training end to end on real data, without the registry."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlharbor.core.errors import ConfigError, InvalidInputError, NotFoundError
from mlharbor.evaluation.html import render_html
from mlharbor.pipelines.train_job import Progress, run_training
from mlharbor.training.recipe import load_recipe, recipe_from_yaml
from tests.pipelines.conftest import RECIPE


class Recorder(Progress):
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.notes: list[str] = []

    def start(self, task: str, description: str, total: int | None = None) -> None:
        self.events.append(("start", task))

    def advance(self, task: str, amount: int = 1) -> None:
        self.events.append(("advance", task))

    def note(self, message: str) -> None:
        self.notes.append(message)


def test_same_recipe_data_seed_same_metrics(workdir: Path) -> None:
    recipe = load_recipe(workdir / "recipe.yaml")
    progress = Recorder()
    first = run_training(recipe, n_jobs=2, progress=progress)
    second = run_training(recipe, n_jobs=1)
    assert first.metrics == second.metrics
    assert first.winner == second.winner and first.passed
    assert ("advance", "folds") in progress.events
    assert progress.events.count(("advance", "folds")) == 4 * 3  # 3 settings + baseline
    assert progress.events.count(("advance", "candidates")) == 2
    assert progress.events.count(("advance", "search")) == 2  # the forest's grid
    assert any("total_charges" in n for n in progress.notes)  # missing-value warning shown

    report = first.report
    json.dumps(report)  # JSON-ready
    assert report["primary_metric"] == "f1" and report["splits"]["folds"] == 3
    assert {c["name"] for c in report["candidates"]} == {"logistic", "forest"}
    forest = next(c for c in report["candidates"] if c["name"] == "forest")
    assert forest["settings_tried"] == 2 and len(forest["search"]) == 2
    assert len(report["cv"]["folds"]) == 3 and "f1" in report["cv"]["std"]
    holdout = report["holdout"]
    assert holdout["ci95"]["f1"][0] <= holdout["metrics"]["f1"] <= holdout["ci95"]["f1"][1]
    assert np.array(holdout["confusion_matrix"]).sum() == report["splits"]["holdout_rows"]
    assert report["baseline"]["strategy"] == "majority"
    assert report["baseline"]["comparison"]["holdout"]["significantly_better"]
    assert report["champion"] is None
    assert [g["passed"] for g in report["gates"]] == [True, True, True]

    # One Pipeline over the raw input columns.
    raw = pd.read_csv(workdir / "churn.csv").drop(columns=["churn", "customer_id"]).head(3)
    assert first.model.predict(raw).shape == (3,)
    assert set(first.profile["features"]) == set(raw.columns)
    assert set(first.profile["importances"]) == set(raw.columns)

    page = render_html(report)
    # ROC, PR and calibration, the importance bars, and one chart per partial-dependence curve
    curves = report["importance"]["partial_dependence"]
    assert curves and page.count("<svg") == 4 + len(curves)
    assert "ROC" in page and "Gates" in page and "Partial dependence" in page


def test_champion_scored_on_same_folds(workdir: Path) -> None:
    recipe = load_recipe(workdir / "recipe.yaml")
    first = run_training(recipe, n_jobs=1)
    again = run_training(recipe, champion=first.model, champion_ref="churn:1", n_jobs=1)
    champion = again.report["champion"]
    assert champion["ref"] == "churn:1"
    # The champion is the same model fitted on the same rows: same holdout figures.
    assert champion["holdout"]["metrics"]["f1"] == pytest.approx(again.metrics["f1"])
    assert champion["comparison"]["holdout"]["difference"] == pytest.approx(0.0)
    assert len(champion["cv"]["folds"]) == 3
    assert again.passed


def test_gate_failure_is_reported(workdir: Path) -> None:
    text = RECIPE.replace("f1 >= 0.4", "f1 >= 0.99")
    recipe = recipe_from_yaml(text, base_dir=workdir)
    outcome = run_training(recipe, n_jobs=1)
    assert not outcome.passed
    assert [v.gate for v in outcome.failed_gates] == ["f1 >= 0.99"]


def test_regression_with_xgboost_and_lightgbm(workdir: Path) -> None:
    text = """\
data: {path: churn.csv, target: monthly_charges, id_columns: [customer_id],
       exclude: [churn, total_charges]}
candidates:
  - estimator: xgboost.XGBRegressor
    params: {n_estimators: 20, max_depth: 3, n_jobs: 1}
  - estimator: lightgbm.LGBMRegressor
    params: {n_estimators: 20, n_jobs: 1}
    search: {method: random, n_iter: 2,
             space: {learning_rate: {distribution: loguniform, low: 0.03, high: 0.3}}}
validation: {folds: 3, bootstrap: 50}
gates: [better than baseline, "r2 > 0.3"]
"""
    outcome = run_training(recipe_from_yaml(text, base_dir=workdir), n_jobs=1)
    assert outcome.schema.task == "regression"
    assert outcome.report["primary_metric"] == "rmse"
    assert outcome.report["baseline"]["strategy"] == "mean"
    assert outcome.passed and outcome.metrics["r2"] > 0.3
    assert outcome.metrics["rmse"] < outcome.metrics["baseline.rmse"]


def test_feature_functions_and_dates(workdir: Path) -> None:
    frame = pd.read_csv(workdir / "churn.csv")
    frame["signup"] = pd.date_range("2023-01-01", periods=len(frame), freq="6h").astype(str)
    frame.to_csv(workdir / "churn.csv", index=False)
    (workdir / "features.py").write_text(
        "def charge_per_month(frame):\n"
        "    return (frame['total_charges'] / frame['tenure_months']).rename('per_month')\n"
    )
    text = RECIPE.replace("id_columns: [customer_id]",
                          "id_columns: [customer_id]\n  features: {senior: categorical}")
    text = text.replace("validation:", "preparation:\n  trust_code: true\n"
                          "  feature_functions: {module: features.py, "
                          "functions: [charge_per_month]}\nvalidation:")
    outcome = run_training(recipe_from_yaml(text, base_dir=workdir), n_jobs=1)
    assert outcome.schema.features["signup"] == "datetime"
    names = list(outcome.model.named_steps["prepare"].get_feature_names_out())
    assert "num__per_month" in names and "date__signup_month" in names
    assert "code__senior_1" in names  # a numeric code treated as a category
    raw = frame.drop(columns=["churn", "customer_id"]).head(4)
    assert outcome.model.predict(raw).shape == (4,)


@pytest.mark.parametrize(
    ("old", "new", "error", "expected"),
    [
        ("target: churn", "target: churned", ConfigError, "line 3, data.target: unknown column"),
        ("[customer_id]", "[customer]", ConfigError, "data.id_columns[0]: unknown column"),
        ("path: churn.csv", "path: nope.csv", NotFoundError, "line 2, data.path"),
        ("sklearn.linear_model.LogisticRegression", "sklearn.linear_model.Logistic",
         ConfigError, "line 7, candidates[0].estimator"),
        ("{max_iter: 300}", "{max_iter: lots}", ConfigError,
         "line 8, candidates[0].params: Invalid parameters for LogisticRegression: The "
         "'max_iter' parameter"),
    ],
    ids=["unknown-target", "unknown-id-column", "unreadable-file", "unknown-estimator",
         "wrong-param-type"],
)
def test_bad_recipes_one_clear_error(
    workdir: Path, old: str, new: str, error: type[Exception], expected: str
) -> None:
    recipe = recipe_from_yaml(RECIPE.replace(old, new), source="recipe.yaml", base_dir=workdir)
    with pytest.raises(error) as info:
        run_training(recipe, n_jobs=1)
    assert expected in str(info.value)


def test_leaky_feature_stops_training(workdir: Path) -> None:
    frame = pd.read_csv(workdir / "churn.csv")
    frame["cancel_date_known"] = frame["churn"]
    frame.to_csv(workdir / "churn.csv", index=False)
    with pytest.raises(InvalidInputError) as info:
        run_training(load_recipe(workdir / "recipe.yaml"), n_jobs=1)
    message = str(info.value)
    assert "'cancel_date_known'" in message and "balanced accuracy 1.000" in message
    assert "Nothing was trained or registered" in message
