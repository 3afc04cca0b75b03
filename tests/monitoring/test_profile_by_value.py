"""Discrete numeric features are profiled by value, so their drift can be seen (issue 12).

A 0/1 feature used to get one quantile bin "0 to 1" at 100%: every window counted 100% in it,
every test read 0 against a threshold of 0, and the CLI printed ``inf`` where the JSON and the
report said 0.00. Integer columns with at most 20 values now get a bin per value, with empty
bins between and around the values for anything the reference never had.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from mlharbor.bootstrap import open_registry
from mlharbor.core.records import PredictionRecord
from mlharbor.data.profile import MAX_DISTINCT_VALUES, build_profile
from mlharbor.monitoring.distributions import distribution
from mlharbor.monitoring.drift import DriftEngine
from mlharbor.monitoring.reference import Reference
from mlharbor.monitoring.service import open_prediction_log
from mlharbor.monitoring.statistics import score as statistic
from mlharbor.monitoring.windows import count_window
from mlharbor.settings import Settings
from tests.support import cli_env, run_cli

KINDS = {"flag": "numeric", "calls": "numeric", "x": "numeric"}


def frame(rng: np.random.Generator, n: int, *, flag_rate: float = 0.2,
          calls_shift: float = 0.0) -> pd.DataFrame:
    return pd.DataFrame({
        "flag": (rng.random(n) < flag_rate).astype(int),
        "calls": rng.poisson(2.0, n) + calls_shift,
        "x": rng.normal(size=n),
    })


def engine_for(reference: pd.DataFrame) -> DriftEngine:
    return DriftEngine(Reference.from_profile(build_profile(reference, KINDS)))


def test_a_binary_feature_gets_a_bin_per_value_and_its_rate_change_is_drift() -> None:
    rng = np.random.default_rng(1)
    reference = frame(rng, 5_000)
    engine = engine_for(reference)
    flag = engine.reference.features["flag"]
    assert flag.values == (0.0, 1.0)
    shares = distribution(flag, None)
    assert shares["bins"] == ["below 0", "0", "between 0 and 1", "1", "above 1"]
    assert np.array_equal(flag.counts, [0, (reference.flag == 0).sum(), 0,
                                        (reference.flag == 1).sum(), 0])

    moved = engine.run(frame(rng, 500, flag_rate=0.6))
    drift = next(f for f in moved.features if f.name == "flag")
    assert drift.drifted and moved.features[0].name == "flag"
    assert all(t.threshold > 1e-6 for t in drift.tests)  # calibrated, not 0 / 1e-300

    same = engine.run(reference)
    flag_same = next(f for f in same.features if f.name == "flag")
    assert not flag_same.drifted and flag_same.score == 0.0


def test_fresh_windows_of_the_same_binary_data_rarely_alarm() -> None:
    rng = np.random.default_rng(2)
    engine = engine_for(frame(rng, 5_000))
    windows = 300
    alarms = {"flag": 0, "calls": 0}
    for _ in range(windows):
        report = engine.run(frame(rng, 500))
        for name in alarms:
            alarms[name] += name in report.drifted_features
    assert max(alarms.values()) <= 0.01 * windows, alarms


def test_an_integer_column_shifted_by_half_is_drift_both_ways() -> None:
    rng = np.random.default_rng(3)
    engine = engine_for(frame(rng, 5_000))
    for shift in (0.5, -0.5):
        report = engine.run(frame(rng, 500, calls_shift=shift))
        calls = next(f for f in report.features if f.name == "calls")
        assert calls.drifted, (shift, calls.to_dict())
        assert np.isfinite(calls.score) and calls.to_dict()["score"] is not None
    unshifted = engine.run(frame(rng, 500))
    assert "calls" not in unshifted.drifted_features


def test_psi_ignores_bins_empty_on_both_sides() -> None:
    # The same constant column, 600 rows against 3,000: identical, so no drift at all.
    assert statistic("psi", [0, 600, 0], [0, 3_000, 0]) == 0.0
    # Empty gaps between values change nothing: the same PSI as without them.
    assert statistic("psi", [0, 60, 0, 40, 0], [0, 600, 0, 400, 0]) == pytest.approx(
        statistic("psi", [60, 40], [600, 400]), rel=1e-12)
    # Bins every sample uses are smoothed exactly as before: half a count per bin.
    w, r = np.array([30.0, 50.0, 20.0]), np.array([300.0, 400.0, 300.0])
    qs, ps = (w + 0.5) / (100 + 1.5), (r + 0.5) / (1_000 + 1.5)
    assert statistic("psi", w, r) == pytest.approx(np.sum((qs - ps) * np.log(qs / ps)))
    assert statistic("psi", [0, 95, 5], [0, 1_000, 0]) > 0.01  # values the reference never had


def test_continuous_and_wide_integer_columns_keep_quantile_bins() -> None:
    rng = np.random.default_rng(4)
    data = pd.DataFrame({"x": rng.normal(size=2_000), "age": rng.integers(18, 90, 2_000),
                         "half": rng.integers(0, 4, 2_000) / 2})
    profile = build_profile(data, {"x": "numeric", "age": "numeric", "half": "numeric"})
    assert {n: f["binning"] for n, f in profile["features"].items()} == {
        "x": "quantiles", "age": "quantiles", "half": "quantiles"}
    assert len(profile["features"]["age"]["counts"]) == 20


@hsettings(derandomize=True, deadline=None, max_examples=200)
@given(st.lists(st.integers(-10**6, 10**6), min_size=1, max_size=MAX_DISTINCT_VALUES,
                unique=True),
       st.lists(st.integers(0, 10**6), min_size=1, max_size=300),
       st.booleans())
def test_reference_has_one_bin_per_value_and_counts_itself_exactly(
    values: list[int], picks: list[int], as_float: bool
) -> None:
    column = np.array([values[p % len(values)] for p in picks])
    data = pd.DataFrame({"v": column.astype(float) if as_float else column})
    profile = build_profile(data, {"v": "numeric"})
    reference = Reference.from_profile(profile)
    ref = reference.features["v"]
    seen = np.unique(column)
    assert ref.values == tuple(float(v) for v in seen)
    assert ref.edges is not None and len(ref.counts) == 2 * len(seen) + 1
    for i, value in enumerate(seen):  # each value alone in its own bin ...
        low, high = ref.edges[2 * i + 1], ref.edges[2 * i + 2]
        assert low < value < high
        assert ref.counts[2 * i + 1] == np.sum(column == value)
    assert ref.counts[0::2].sum() == 0  # ... and nothing between or outside them
    again = count_window(reference, data).features["v"]
    assert np.array_equal(again.counts, ref.counts) and again.missing == 0


def test_cli_json_and_report_show_the_same_scores(settings: Settings, tmp_path: Path) -> None:
    """A constant column's tests are all 0 / 1e-300: the CLI printed inf, the JSON 0.0."""
    rng = np.random.default_rng(6)
    reference = frame(rng, 3_000).assign(const=7)
    kinds = {**KINDS, "const": "numeric"}
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "model.txt").write_text("a model")
    registry = open_registry(settings)
    try:
        registry.create_model("churn")
        registry.register_version("churn", bundle, metrics={"accuracy": 0.9},
                                  lineage={"reference_profile": build_profile(reference, kinds)})
    finally:
        registry.close()
    log = open_prediction_log(settings)
    now = datetime.now(UTC)
    current = frame(rng, 600, flag_rate=0.6).assign(const=7)
    for i, row in enumerate(current.to_dict(orient="records")):
        log.emit(PredictionRecord(f"r{i}", "churn", "churn@champion", 1, row, [0], 0.01,
                                  now - timedelta(hours=2) + timedelta(seconds=5 * i)))
    log.close()
    js, html = tmp_path / "report.json", tmp_path / "report.html"
    result = run_cli("monitor", "drift", "churn", "--window", "24h", "--json", str(js),
                     "--html", str(html), env=cli_env(settings))
    assert result.returncode == 0, result.stderr
    report = orjson.loads(js.read_bytes())
    scores = {f["name"]: f["score"] for f in report["features"]}
    assert scores["const"] == 0.0 and report["features"][0]["name"] == "flag"
    assert report["features"][0]["drifted"]
    printed = {m.group(1): m.group(2) for m in re.finditer(
        r"│\s*(flag|calls|x|const)\s*│[^│]*│\s*(\S+)\s*│", result.stdout)}
    assert printed == {name: f"{score:.2f}" for name, score in scores.items()}, result.stdout
    page = html.read_text()
    for name, score in scores.items():
        assert re.search(rf">{name}<.*?>{score:.2f}<", page, re.S), name
    assert "inf" not in result.stdout and "∞" not in page


def test_a_constant_column_that_changes_is_drift_with_a_readable_score() -> None:
    """The reference never varies, so every simulated statistic is 0: the change is drift, and
    its score is a number a person can read (the threshold has a floor), not x / 1e-300."""
    rng = np.random.default_rng(5)
    reference = frame(rng, 2_000).assign(plan=3)
    engine = DriftEngine(Reference.from_profile(build_profile(
        reference, {**KINDS, "plan": "numeric"})))
    same = next(f for f in engine.run(reference.head(300)).features if f.name == "plan")
    assert not same.drifted and same.score == 0.0
    changed = reference.head(300).assign(plan=[3] * 200 + [4] * 100)
    plan = next(f for f in engine.run(changed).features if f.name == "plan")
    assert plan.drifted
    assert 1.0 < plan.score < 1e6, plan.score
