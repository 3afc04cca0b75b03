"""The registry-facing job: register the winner, move the alias only when every gate passes."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlharbor.core.errors import ConfigError, NotFoundError
from mlharbor.core.records import VersionStatus
from mlharbor.evaluation.html import render_html
from mlharbor.pipelines.train_job import evaluate, reproduce, train
from mlharbor.registry.service import Registry
from mlharbor.settings import Settings
from mlharbor.training.recipe import load_recipe, recipe_from_yaml
from tests.pipelines.conftest import RECIPE


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    # One worker: spawning joblib workers costs more than these small fits.
    return Settings(home=tmp_path / "home", training={"n_jobs": 1})


def test_register_gate_failure_and_reproduce(workdir: Path, settings: Settings) -> None:
    registry = Registry.from_settings(settings)
    recipe = load_recipe(workdir / "recipe.yaml")
    first = train(recipe, registry=registry, settings=settings)
    assert first.passed and first.alias == "champion"
    v1 = registry.get_version("churn@champion")
    assert v1.version == 1 and v1.status == VersionStatus.READY
    assert v1.metrics["f1"] == pytest.approx(first.outcome.metrics["f1"])
    assert v1.params["candidate"] == first.outcome.winner
    lineage = v1.lineage
    assert lineage["dataset"]["fingerprint"].startswith("sha256:")
    assert lineage["seed"] == 7 and lineage["recipe"]["data"]["target"] == "churn"
    assert "scikit-learn" in lineage["packages"]
    assert lineage["evaluation"]["champion"] is None
    assert lineage["reference_profile"]["rows"] == first.outcome.report["splits"]["train_rows"]
    assert lineage["data_checks"]["warnings"][0]["column"] == "total_charges"
    assert first.report_path is not None and "<svg" in first.report_path.read_text()

    scored = evaluate(registry, "churn@champion", str(workdir / "churn.csv"), settings=settings)
    assert scored.ref == "churn:1" and scored.rows == 1500
    assert 0 < scored.report["holdout"]["metrics"]["f1"] <= 1
    assert "<svg" in render_html(scored.report)  # confusion matrix and curves

    strict = recipe_from_yaml(RECIPE.replace("f1 >= 0.4", "f1 >= 0.99"), base_dir=workdir)
    second = train(strict, registry=registry, settings=settings)
    assert not second.passed and second.alias is None
    v2 = registry.get_version("churn:2")
    assert v2.status == VersionStatus.FAILED
    assert v2.status_reason is not None and "f1 >= 0.99" in v2.status_reason
    assert registry.get_version("churn@champion").version == 1  # the alias did not move
    champion = v2.lineage["evaluation"]["champion"]
    assert champion["ref"] == "churn:1" and "comparison" in champion

    again = reproduce(registry, "churn:1", settings=settings)
    assert again.same_data and again.matches, [c for c in again.checks if not c.matches]


def test_bad_recipe_registers_nothing(workdir: Path, settings: Settings) -> None:
    registry = Registry.from_settings(settings)
    bad = recipe_from_yaml(RECIPE.replace("sklearn.ensemble.RandomForestClassifier",
                                          "sklearn.ensemble.RandomForest"), base_dir=workdir)
    with pytest.raises(ConfigError, match="Unknown estimator"):
        train(bad, registry=registry, settings=settings)
    with pytest.raises(NotFoundError):
        registry.get_model("churn")
