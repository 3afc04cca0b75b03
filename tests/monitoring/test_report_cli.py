"""`mlharbor monitor drift` end to end: registry profile + prediction log -> HTML and JSON."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import orjson

from mlharbor.bootstrap import open_registry
from mlharbor.core.records import PredictionRecord
from mlharbor.data.profile import build_profile
from mlharbor.monitoring.reference import infer_kinds, prediction_entry
from mlharbor.monitoring.service import open_prediction_log
from mlharbor.settings import Settings
from tests.monitoring.drift_data import make_frame
from tests.support import cli_env, run_cli


def test_drift_report_names_the_shifted_feature(settings: Settings, tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    reference = make_frame(rng, 20_000)
    profile = build_profile(reference, infer_kinds(reference), importances={"x2": 0.5})
    profile["predictions"] = prediction_entry((reference["x2"] > 0).astype(int))
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "model.txt").write_text("a model")
    registry = open_registry(settings)
    try:
        registry.create_model("churn")
        registry.register_version("churn", bundle, lineage={"reference_profile": profile},
                                  metrics={"accuracy": 0.9})
    finally:
        registry.close()
    log = open_prediction_log(settings)
    now = datetime.now(UTC)
    current = make_frame(rng, 3_000, "mean")
    for i, row in enumerate(current.to_dict(orient="records")):
        log.emit(PredictionRecord(f"r{i}", "churn", "churn@champion", 1, row,
                                  [int(row["x2"] > 0)], 0.01,
                                  now - timedelta(hours=5) + timedelta(seconds=5 * i)))
    log.close()
    html, js = tmp_path / "report.html", tmp_path / "report.json"
    result = run_cli("monitor", "drift", "churn", "--window", "24h", "--step", "1h",
                     "--html", str(html), "--json", str(js), "--fail-on-drift",
                     env=cli_env(settings))
    assert result.returncode == 1, result.stderr  # drift found: non-zero for scripts
    report = orjson.loads(js.read_bytes())
    assert report["features"][0]["name"] == "x2" and report["dataset"]["drifted"]
    assert report["window"]["rows"] == 3_000 and report["version"] == 1
    assert report["prediction"]["drifted"]  # more positives than in training
    assert 5 <= len(report["series"]) <= 6  # hourly windows with rows (hour-aligned)
    assert sum(point["rows"] for point in report["series"]) == 3_000
    page = html.read_text()
    assert page.startswith("<!doctype html>") and "x2" in page and "Drift detected" in page
    assert "<script" not in page and "http" not in page.replace("http-equiv", "")
    cached = list((settings.home / "monitoring" / "windows" / "churn").glob("*.json"))
    assert len(cached) >= 20  # finished hourly windows keep their counts ...
    again = run_cli("monitor", "drift", "churn", "--window", "24h", "--step", "1h",
                    "--json", str(js), env=cli_env(settings))
    assert again.returncode == 0, again.stderr  # ... and the next report merges them
    assert orjson.loads(js.read_bytes())["features"] == report["features"]
    by_rows = run_cli("monitor", "drift", "churn", "--rows", "1000", "--json", str(js),
                      env=cli_env(settings))
    assert by_rows.returncode == 0, by_rows.stderr
    assert [p["rows"] for p in orjson.loads(js.read_bytes())["series"]] == [1_000] * 3
    missing = run_cli("monitor", "drift", "nothing", env=cli_env(settings))
    assert missing.returncode == 3 and "logged no predictions" in missing.stderr
