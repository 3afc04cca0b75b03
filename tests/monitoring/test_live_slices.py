"""Live performance by slice: labelled predictions from a real prediction log and feedback
store, cut by a column, bins, a filter or the served version's recipe slices (stored in a real
registry), over Python, HTTP and the CLI. The model is right 92% of the time on one-year
contracts and about half the time on month-to-month ones: the slices must show it, and each
slice's count must equal the labelled rows that fall in it."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score

from mlharbor.core.errors import InvalidInputError
from mlharbor.core.records import PredictionRecord
from mlharbor.evaluation.slices import SliceResult
from mlharbor.monitoring.liveslices import parse_live_slices
from mlharbor.monitoring.service import Monitor
from mlharbor.settings import Settings
from tests.monitoring.test_feedback import Outputs, monitoring_app
from tests.support import LiveServer, cli_env, run_cli

ROWS = 600
RECIPE = {
    "data": {"path": "data.csv", "target": "churn"},
    "candidates": [{"name": "logistic", "estimator": "sklearn.linear_model.LogisticRegression"}],
    "slices": [{"column": "contract"}, {"column": "tenure", "bins": [12]},
               {"name": "new_monthly", "where": "contract == 'month-to-month' and tenure < 12"},
               {"column": "region"}],  # a training column the clients never send
}


@dataclasses.dataclass
class Served:
    settings: Settings
    monitor: Monitor
    start: datetime
    rows: list[dict[str, Any]]  # the labelled rows: inputs, prediction, label

    def expected(self, keep: Any) -> tuple[int, float]:
        """(labelled rows, accuracy) of the labelled rows ``keep`` selects."""
        chosen = [r for r in self.rows if keep(r)]
        return len(chosen), float(accuracy_score([r["label"] for r in chosen],
                                                 [r["prediction"] for r in chosen]))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """Version 1 of churn (its recipe and holdout slice metrics stored in the registry) served
    ROWS predictions over the last hours; six of every seven have a label."""
    from mlharbor.bootstrap import open_registry
    from mlharbor.training.recipe import recipe_from_dict

    tmp = tmp_path_factory.mktemp("live-slices")
    settings = Settings(home=tmp / "home")
    registry = open_registry(settings)
    bundle = tmp / "bundle"
    bundle.mkdir()
    (bundle / "model.txt").write_text("a model")
    held = [SliceResult("contract", "contract=month-to-month", 90, {"accuracy": 0.9}, {}, False,
                        True),
            SliceResult("contract", "contract=one-year", 300, {"accuracy": 0.9}, {}, False, True)]
    registry.create_model("churn")
    registry.register_version("churn", bundle, metrics={"accuracy": 0.85}, lineage={
        "recipe": recipe_from_dict(RECIPE).to_dict(),
        "evaluation": {"slices": {"slices": [r.to_dict() for r in held]}}})
    monitor = Monitor(settings, registry)
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=12)
    rng = np.random.default_rng(3)
    labelled = []
    for i in range(ROWS):
        contract = "month-to-month" if i % 4 == 0 else "one-year"
        inputs = {"contract": contract, "tenure": i % 48}
        label = int(rng.random() < 0.5)
        right = rng.random() < (0.5 if contract == "month-to-month" else 0.92)
        predicted = label if right else 1 - label
        score = 0.5 + (0.4 if predicted else -0.4) * rng.random()
        monitor.log.emit(PredictionRecord(
            f"r{i}", "churn", "churn@champion", 1, inputs,
            Outputs(np.array([predicted]), np.array([[1 - score, score]])), 0.01,
            start + timedelta(minutes=i)))
        if i % 7 != 3:
            labelled.append({**inputs, "request_id": f"r{i}", "prediction": predicted,
                             "label": label})
    monitor.log.flush()
    monitor.log.compact()
    monitor.add_feedback("churn", {"labels": [{"request_id": r["request_id"],
                                               "label": r["label"]} for r in labelled]})
    try:
        yield Served(settings, monitor, start, labelled)
    finally:
        registry.close()


def _one_window(served: Served, slices: Any) -> dict[str, Any]:
    (row,) = served.monitor.performance("churn", start=served.start,
                                        end=served.start + timedelta(days=1),
                                        window=timedelta(days=1), slices=slices)
    return row


def test_live_metrics_by_column_bins_and_filter_show_the_worse_slice(served: Served) -> None:
    row = _one_window(served, ["contract", "tenure:12", "where:contract == 'month-to-month' "
                               "and tenure < 12"])
    assert row["labelled_rows"] == len(served.rows)
    by_key = {s["key"]: s for s in row["slices"]}
    assert list(by_key) == [
        "contract=month-to-month", "contract=one-year", "tenure=(-inf, 12)", "tenure=[12, inf)",
        "where:contract == 'month-to-month' and tenure < 12"]
    cases = {
        "contract=month-to-month": lambda r: r["contract"] == "month-to-month",
        "contract=one-year": lambda r: r["contract"] == "one-year",
        "tenure=(-inf, 12)": lambda r: r["tenure"] < 12,
        "tenure=[12, inf)": lambda r: r["tenure"] >= 12,
        "where:contract == 'month-to-month' and tenure < 12":
            lambda r: r["contract"] == "month-to-month" and r["tenure"] < 12,
    }
    for key, keep in cases.items():
        n, accuracy = served.expected(keep)
        assert by_key[key]["labelled_rows"] == n > 0, key
        assert by_key[key]["metrics"]["accuracy"] == pytest.approx(accuracy), key
    monthly, yearly = by_key["contract=month-to-month"], by_key["contract=one-year"]
    assert monthly["metrics"]["accuracy"] < 0.65 < 0.85 < yearly["metrics"]["accuracy"]
    assert monthly["labelled_rows"] + yearly["labelled_rows"] == row["labelled_rows"]
    assert set(monthly["metrics"]) == set(row["metrics"])  # every live metric, per slice
    assert "slice_notes" not in row


def test_the_recipe_slices_are_compared_with_the_holdout_slices(served: Served) -> None:
    row = _one_window(served, "recipe")
    by_key = {s["key"]: s for s in row["slices"]}
    assert list(by_key) == ["contract=month-to-month", "contract=one-year",
                            "tenure=(-inf, 12)", "tenure=[12, inf)", "new_monthly"]
    n, accuracy = served.expected(lambda r: r["contract"] == "month-to-month"
                                  and r["tenure"] < 12)
    assert (by_key["new_monthly"]["labelled_rows"], by_key["new_monthly"]["metrics"]["accuracy"]
            ) == (n, pytest.approx(accuracy))
    # the holdout said 0.9 on both contracts: live, month-to-month fell well below it
    assert by_key["contract=month-to-month"]["degraded"] == ["accuracy"]
    assert by_key["contract=month-to-month"]["validation"] == {"accuracy": 0.9}
    assert by_key["contract=one-year"]["degraded"] == []
    assert "validation" not in by_key["tenure=[12, inf)"]  # no holdout value for it
    assert row["slice_notes"] == ["recipe slice 'region' skipped: the column 'region' is not "
                                  "among the logged inputs"]


@pytest.mark.parametrize("text, message", [
    ("tenure:12,x", "at character 11 ('x'): expected a finite number"),
    ("tenure:12,6", "at character 11 ('6'): expected an edge greater than 12"),
    ("tenure;12", "at character 7 (';12'): expected ':'"),
    ("where:tenure <", "at the end: expected a value"),
    ("`open", "at character 1 ('`open'): expected a column name closed by a backtick"),
    ("  ", "An empty slice"),
])
def test_bad_slice_text_names_the_position(text: str, message: str) -> None:
    with pytest.raises(InvalidInputError, match="slice") as caught:
        parse_live_slices([text])
    assert message in str(caught.value)


def test_slices_over_http(served: Served) -> None:
    app = monitoring_app(served.settings)
    app.state.monitor = served.monitor
    with LiveServer(app) as server:
        url = f"{server.url}/api/v1/monitoring/endpoints/churn/performance"
        both = {"window": "2d", "step": "2d"}
        good = httpx.get(url, params={**both, "slice": ["contract", "tenure:12"]})
        assert good.status_code == 200, good.text
        (row,) = good.json()["windows"]
        counts = {s["key"]: s["labelled_rows"] for s in row["slices"]}
        assert counts["contract=month-to-month"] == served.expected(
            lambda r: r["contract"] == "month-to-month")[0]
        assert sum(counts.values()) == 2 * row["labelled_rows"]
        plain = httpx.get(url, params=both).json()["windows"][0]
        assert "slices" not in plain and plain["metrics"] == row["metrics"]
        bad = httpx.get(url, params={**both, "slice": "tenure:12,x"})
        assert bad.status_code == 422 and "character 11" in bad.text and "slice" in bad.text
        unknown = httpx.get(url, params={**both, "slice": "region"})
        assert unknown.status_code == 400
        assert "'region'" in unknown.text and "contract, tenure" in unknown.text
        many = httpx.get(url, params={**both, "slice": ["contract"] * 11})
        assert many.status_code == 422
        long_name = httpx.get(url.replace("/churn/", "/" + "x" * 300 + "/"), params=both)
        assert long_name.status_code == 400 and "endpoint name" in long_name.text


def test_slices_from_the_command_line(served: Served) -> None:
    env = cli_env(served.settings)
    shown = run_cli("monitor", "performance", "churn", "--window", "2d", "--step", "2d",
                    "--slice", "contract", "--slice", "recipe", "--json", env=env)
    assert shown.returncode == 0, shown.stderr
    (row,) = json.loads(shown.stdout)
    keys = [s["key"] for s in row["slices"]]
    assert keys[:2] == ["contract=month-to-month", "contract=one-year"]
    assert "new_monthly" in keys and keys.count("contract=one-year") == 1
    table = run_cli("monitor", "performance", "churn", "--window", "2d", "--step", "2d",
                    "--slice", "tenure:12", env={**env, "COLUMNS": "200"})
    assert table.returncode == 0, table.stderr
    assert "tenure=[12, inf)" in table.stdout and "(all)" in table.stdout
    bad = run_cli("monitor", "performance", "churn", "--slice", "where:tenure <<", env=env)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    lines = [x for x in bad.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "character 9 ('<'): expected a value" in lines[0], bad.stderr


def test_slice_lists_are_bounded_and_deduplicated() -> None:
    with pytest.raises(InvalidInputError, match="At most 10 slices"):
        parse_live_slices(["contract"] * 11)
    assert parse_live_slices(["contract", "recipe", "contract"]).recipe
    assert len(parse_live_slices(["contract", "contract"]).specs) == 1
    assert parse_live_slices("`recipe`").specs[0].column == "recipe"


def test_undefined_live_metrics_are_none_not_zero() -> None:
    """A window (or slice) without a positive label has no recall, and one without a positive
    prediction no precision: scikit-learn's 0.0 would read as a collapse and raise alerts."""
    from mlharbor.monitoring.feedback import _metrics

    negatives = pd.DataFrame({"label": [0, 0, 0], "prediction": [0, 1, 0]})
    scored = _metrics(negatives, "classification")
    assert scored["recall"] is None and scored["precision"] == 0.0
    missed = pd.DataFrame({"label": [1, 1, 0], "prediction": [0, 0, 0]})
    scored = _metrics(missed, "classification")
    assert scored["precision"] is None and scored["recall"] == 0.0 and scored["f1"] == 0.0
    assert scored["accuracy"] == pytest.approx(1 / 3)
