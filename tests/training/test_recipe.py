"""Bad recipes get one clear error naming the line and field; good ones load."""

from __future__ import annotations

from pathlib import Path

import pytest

import mlharbor
from mlharbor.core.errors import ConfigError
from mlharbor.pipelines.train_job import prepare
from mlharbor.training.recipe import Recipe, load_recipe, recipe_from_yaml

DEMO = Path(mlharbor.__file__).parent / "demo" / "recipe.yaml"

GOOD = """\
data:
  path: data.csv
  target: churn
candidates:
  - estimator: sklearn.ensemble.RandomForestClassifier
    params: {n_estimators: 10}
gates:
  - f1 >= 0.5
"""


def test_demo_recipe_loads_and_prepares() -> None:
    recipe = load_recipe(DEMO)
    assert recipe.data.target == "churn"
    assert recipe.registration is not None and recipe.registration.alias == "champion"
    plan = prepare(recipe)
    assert [c.name for c in plan.candidates] == ["logistic", "forest"]
    assert len(plan.candidates[1].settings) == 2
    assert recipe.base_dir == DEMO.parent


def test_python_recipe_equals_yaml() -> None:
    from_yaml = recipe_from_yaml(GOOD)
    built = Recipe.model_validate({
        "data": {"path": "data.csv", "target": "churn"},
        "candidates": [{"estimator": "sklearn.ensemble.RandomForestClassifier",
                        "params": {"n_estimators": 10}}],
        "gates": ["f1 >= 0.5"],
    })
    assert built.to_dict() == from_yaml.to_dict()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (GOOD.replace("  target: churn\n", ""), "line 1, data.target: this field is required"),
        (GOOD.replace("{n_estimators: 10}", "{n_estimators: 10}\n    serch: {}"),
         "line 7, candidates[0].serch: unknown field"),
        (GOOD + "validation: {folds: many}\n", "line 9, validation.folds"),
        (GOOD + "validation:\n  holdout: 1.5\n", "line 10, validation.holdout"),
        (GOOD + "preparation:\n  feature_functions: {module: f.py, functions: [a]}\n",
         "trust_code: true"),
        ("data: [1, 2\n", "line 2: not valid YAML"),
        ("- just a list\n", "a recipe must be a mapping"),
    ],
    ids=["missing-target", "unknown-field", "wrong-type", "out-of-range", "untrusted-code",
         "bad-yaml", "not-a-mapping"],
)
def test_schema_errors_name_line_and_field(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        recipe_from_yaml(text, source="r.yaml")
    assert expected in str(info.value)
    assert "r.yaml" in str(info.value)


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("sklearn.ensemble.RandomForestClassifier", "sklearn.ensemble.RandomForestClassifer",
         "line 5, candidates[0].estimator: Unknown estimator"),
        ("sklearn.ensemble.RandomForestClassifier", "nosuchlib.Model",
         "cannot be imported"),
        ("{n_estimators: 10}", "{n_trees: 10}", "line 6, candidates[0].params"),
        ("f1 >= 0.5", "f1 is big", "line 8, gates[0]: Cannot read the gate"),
        ("f1 >= 0.5", "auc >= 0.5", "Unknown"),
    ],
    ids=["typo-estimator", "missing-module", "unknown-param", "bad-gate", "bad-metric"],
)
def test_semantic_errors_name_line(old: str, new: str, expected: str) -> None:
    recipe = recipe_from_yaml(GOOD.replace(old, new), source="r.yaml")
    with pytest.raises(ConfigError) as info:
        prepare(recipe)
    assert expected in str(info.value)


def test_typo_suggests_the_right_estimator() -> None:
    recipe = recipe_from_yaml(GOOD.replace("RandomForestClassifier", "RandomForestClassifer"))
    expected = r"Did you mean sklearn\.ensemble\.RandomForestClassifier"
    with pytest.raises(ConfigError, match=expected):
        prepare(recipe)


def test_estimator_task_mismatch() -> None:
    recipe = recipe_from_yaml(GOOD.replace("RandomForestClassifier", "RandomForestRegressor"))
    with pytest.raises(ConfigError, match="does not fit a classification task"):
        prepare(recipe, "classification")


def test_unreadable_recipe_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="Cannot read the recipe"):
        load_recipe(tmp_path / "missing.yaml")
