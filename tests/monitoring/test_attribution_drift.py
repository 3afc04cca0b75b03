"""Attribution drift from a real registry and prediction log: a feature the model leans on
more in the window is named; a feature whose inputs moved but which the model ignores is
not (data drift would name it)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlharbor.core.errors import InvalidInputError, NotFoundError
from mlharbor.core.records import PredictionRecord
from mlharbor.settings import Settings


@pytest.fixture
def served(tmp_path: Path) -> tuple[Settings, pd.DataFrame]:
    """``lin:1``: y = 3a + c, registered with its training data (the reference profile)."""
    from sklearn.linear_model import LinearRegression

    from mlharbor.bootstrap import open_registry
    from mlharbor.registry.bundles import register_model

    settings = Settings(home=tmp_path / "home")
    rng = np.random.default_rng(2)
    x = pd.DataFrame(rng.normal(size=(2_000, 3)), columns=["a", "b", "c"])
    registry = open_registry(settings)
    try:
        register_model(registry, "lin", LinearRegression().fit(x, 3 * x.a + x.c),
                       settings=settings, training_data=x)
    finally:
        registry.close()
    return settings, x


def log_window(settings: Settings, rows: pd.DataFrame) -> None:
    from mlharbor.monitoring.service import open_prediction_log

    log = open_prediction_log(settings)
    now = datetime.now(UTC)
    for i, row in enumerate(rows.to_dict(orient="records")):
        log.emit(PredictionRecord(f"r{i}", "lin", "lin:1", 1, row, [0.0], 0.001,
                                  now - timedelta(minutes=30) + timedelta(seconds=i)))
    log.close()


def test_the_feature_the_model_leans_on_more_is_named(served: tuple[Settings, pd.DataFrame]
                                                      ) -> None:
    from mlharbor.bootstrap import open_registry
    from mlharbor.monitoring.attribution_drift import endpoint_attribution_drift
    from mlharbor.monitoring.service import Monitor

    settings, x = served
    window = x.sample(600, random_state=1).reset_index(drop=True)
    window["a"] = window["a"] * 3  # spread three times wider: |3 (a - mean)| grows
    window["b"] = window["b"] + 5  # moved, but the model gives b no weight
    log_window(settings, window)
    registry = open_registry(settings)
    try:
        monitor = Monitor(settings, registry)
        now = datetime.now(UTC)
        report = endpoint_attribution_drift(monitor, "lin", start=now - timedelta(hours=1),
                                            end=now, rows=300)
        with pytest.raises(InvalidInputError, match="rows must be"):
            endpoint_attribution_drift(monitor, "lin", start=now - timedelta(hours=1),
                                       end=now, rows=0)
        with pytest.raises(NotFoundError, match="logged no predictions"):
            endpoint_attribution_drift(monitor, "lin", start=now - timedelta(days=3),
                                       end=now - timedelta(days=2))
        for name in ("../lin", "x" * 300, "lin/.."):  # it names a folder of the log
            with pytest.raises(InvalidInputError, match="endpoint name"):
                endpoint_attribution_drift(monitor, name, start=now - timedelta(hours=1),
                                           end=now)
    finally:
        registry.close()
    by_name = {f["name"]: f for f in report["features"]}
    assert report["drifted_features"] == ["a"] and report["features"][0]["name"] == "a"
    assert (report["model"], report["version"], report["method"]) == ("lin", 1, "linear")
    assert report["current_rows"] == 300 and report["reference_rows"] == 300
    # |3 (a - mean)| averages 3 * 0.8 on the reference and about three times that now.
    assert by_name["a"]["reference"] == pytest.approx(3 * np.sqrt(2 / np.pi), rel=0.15)
    assert by_name["a"]["current"] == pytest.approx(3 * by_name["a"]["reference"], rel=0.25)
    assert by_name["b"]["current"] == pytest.approx(0.0, abs=1e-9)  # ignored by the model
    assert not by_name["c"]["drifted"]


def test_same_rows_no_drift_and_scores_are_shares_of_the_total() -> None:
    from mlharbor.explain.attributions import Attributions
    from mlharbor.monitoring.attribution_drift import compare_attributions

    def attributions(values: list[list[float]]) -> Attributions:
        v = np.asarray(values, dtype=float)[:, :, None]
        return Attributions(np.zeros((len(v), 1)), v, ("p", "q"), ("prediction",), "value",
                            "linear")

    ref = attributions([[1.0, -1.0], [-1.0, 1.0]])  # mean |.|: p 1, q 1 -> total 2
    same = compare_attributions(ref, ref)
    assert not same.drifted and all(f.score == 0 for f in same.features)
    moved = compare_attributions(ref, attributions([[1.5, 1.0], [-1.5, 1.0]]), threshold=0.2)
    assert [f.name for f in moved.features] == ["p", "q"]
    assert moved.features[0].score == pytest.approx(0.25) and moved.drifted_features == ["p"]
    with pytest.raises(InvalidInputError, match="threshold"):
        compare_attributions(ref, ref, threshold=0)


def test_cli_names_the_drifted_feature_and_fails_on_drift(served: tuple[Settings, pd.DataFrame]
                                                          ) -> None:
    import orjson

    from tests.support import cli_env, run_cli

    settings, x = served
    window = x.sample(300, random_state=4).reset_index(drop=True)
    window["a"] = window["a"] * 3
    log_window(settings, window)
    env = cli_env(settings)
    shown = run_cli("monitor", "attributions", "lin", "--window", "2h", "--rows", "100",
                    "--json", env=env)
    assert shown.returncode == 0, shown.stderr
    report = orjson.loads(shown.stdout)
    assert report["drifted_features"] == ["a"] and report["version"] == 1
    failing = run_cli("monitor", "attributions", "lin", "--window", "2h", "--rows", "100",
                      "--fail-on-drift", env=env)
    assert failing.returncode == 1 and "ATTRIBUTION DRIFT" in failing.stdout
    bad = run_cli("monitor", "attributions", "lin", "--rows", "0", env=env)
    assert bad.returncode == 2 and "rows must be" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_a_window_whose_inputs_are_redacted_says_so(served: tuple[Settings, pd.DataFrame]
                                                    ) -> None:
    """An input column the log hashes or masks (monitoring.redaction) cannot be explained:
    the refusal names the column and the setting, not a schema error about the request."""
    from mlharbor.bootstrap import open_registry
    from mlharbor.core.errors import ConflictError
    from mlharbor.monitoring.attribution_drift import endpoint_attribution_drift
    from mlharbor.monitoring.service import Monitor
    from mlharbor.settings import MonitoringSettings

    settings, x = served
    settings = settings.model_copy(update={"monitoring": MonitoringSettings(
        redaction={"lin": {"c": "hash"}})})
    log_window(settings, x.head(50))
    registry = open_registry(settings)
    try:
        now = datetime.now(UTC)
        with pytest.raises(ConflictError, match=r"'c'.*monitoring\.redaction"):
            endpoint_attribution_drift(Monitor(settings, registry), "lin",
                                       start=now - timedelta(hours=1), end=now)
    finally:
        registry.close()
