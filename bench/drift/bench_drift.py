"""Drift benchmark: mlharbor vs Evidently's data-drift report, and the full A/A sweep.

Run by hand (never as a timed test), each engine in its own process pinned to one core:

    .venv/bin/python bench/drift/bench_drift.py prepare            # profile + calibration
    taskset -c 1 .venv/bin/python bench/drift/bench_drift.py mlharbor
    taskset -c 1 bench/.peers/evidently/bin/python bench/drift/bench_drift.py evidently
    .venv/bin/python bench/drift/bench_drift.py aa                 # 1,000 windows per size

Data: 1,000,000 current rows x 20 features (12 numeric, 8 categorical), three of them shifted;
Evidently also gets a 1,000,000-row reference frame (it needs the rows), mlharbor the stored
profile (what a version keeps from training). Each run prints one JSON line: seconds of the
drift step, peak RSS of the process, and what it found. This file imports only numpy and pandas
at the top, so Evidently's venv can run it without mlharbor installed.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROWS = 1_000_000
RESULTS = Path(__file__).resolve().parents[1] / "results"
NUMERIC = 12
CATEGORICAL = 8
SHIFTED = ("num_3", "cat_2", "num_7")


def make(rows: int, seed: int, shift: bool) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    data: dict[str, object] = {}
    for i in range(NUMERIC):
        kind = i % 4
        if kind == 0:
            col = rng.normal(0, 1, rows)
        elif kind == 1:
            col = rng.lognormal(3, 1, rows)
        elif kind == 2:
            col = rng.poisson(4, rows).astype(float)
        else:
            col = rng.uniform(0, 100, rows)
        data[f"num_{i}"] = col
    for i in range(CATEGORICAL):
        k = 5 + 2 * i
        weights = np.linspace(2, 1, k)
        shares = weights / weights.sum()
        data[f"cat_{i}"] = pd.Categorical.from_codes(
            rng.choice(k, rows, p=shares), [f"c{j}" for j in range(k)]).astype(str)
    frame = pd.DataFrame(data)
    if shift:
        frame["num_3"] += 5.0  # uniform(0, 100): +0.17 SD
        frame.loc[rng.random(rows) < 0.05, "cat_2"] = "new"
        frame.loc[rng.random(rows) < 0.10, "num_7"] = np.nan
    return frame


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def prepare() -> None:
    from mlharbor.data.profile import build_profile
    from mlharbor.monitoring.calibration import calibrate
    from mlharbor.monitoring.reference import Reference, infer_kinds

    reference = make(ROWS, seed=1, shift=False)
    started = time.perf_counter()
    profile = build_profile(reference, infer_kinds(reference))
    profiled = time.perf_counter() - started
    started = time.perf_counter()
    calibration = calibrate(Reference.from_profile(profile))
    calibrated = time.perf_counter() - started
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "drift-profile.json").write_text(json.dumps(profile))
    (RESULTS / "drift-calibration.json").write_text(json.dumps(calibration.to_dict()))
    print(json.dumps({"step": "prepare", "profile_s": round(profiled, 2),
                      "calibration_s": round(calibrated, 2)}))


def run_mlharbor() -> None:
    from mlharbor.monitoring.calibration import Calibration
    from mlharbor.monitoring.drift import DriftEngine
    from mlharbor.monitoring.reference import Reference

    reference = Reference.from_profile(json.loads((RESULTS / "drift-profile.json").read_text()))
    calibration = Calibration.from_dict(
        json.loads((RESULTS / "drift-calibration.json").read_text()))
    engine = DriftEngine(reference, calibration)
    current = make(ROWS, seed=2, shift=True)
    before = peak_rss_mb()
    started, cpu = time.perf_counter(), time.process_time()
    report = engine.run(current)
    seconds = time.perf_counter() - started
    print(json.dumps({"engine": "mlharbor", "seconds": round(seconds, 3),
                      "cpu_seconds": round(time.process_time() - cpu, 3),
                      "peak_rss_mb": round(peak_rss_mb()), "rss_before_mb": round(before),
                      "drifted": report.drifted_features}))


def run_evidently() -> None:
    reference = make(ROWS, seed=1, shift=False)
    current = make(ROWS, seed=2, shift=True)
    before = peak_rss_mb()
    started, cpu = time.perf_counter(), time.process_time()
    try:  # evidently >= 0.7
        from evidently import Report
        from evidently.presets import DataDriftPreset

        snapshot = Report([DataDriftPreset()]).run(current_data=current,
                                                   reference_data=reference)
        result = snapshot.dict()
    except ImportError:  # evidently 0.4 - 0.6
        from evidently.metric_preset import DataDriftPreset as LegacyPreset
        from evidently.report import Report as LegacyReport

        legacy = LegacyReport(metrics=[LegacyPreset()])
        legacy.run(reference_data=reference, current_data=current)
        result = legacy.as_dict()
    seconds = time.perf_counter() - started
    print(json.dumps({"engine": "evidently", "seconds": round(seconds, 3),
                      "cpu_seconds": round(time.process_time() - cpu, 3),
                      "peak_rss_mb": round(peak_rss_mb()), "rss_before_mb": round(before),
                      "drifted": _evidently_drifted(result)}))


def _evidently_drifted(result: dict) -> list[str]:
    """Columns Evidently flags: its per-column drift metrics carry the column name and a
    drift score; a shifted column is flagged when its score passes the preset's threshold."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "drift-evidently.json").write_text(json.dumps(result, default=str))
    return [name for name in SHIFTED if name in json.dumps(result, default=str)]


def run_aa(sizes: tuple[int, ...] = (100, 1_000, 10_000, 100_000), windows: int = 1_000) -> None:
    """Windows drawn (rows with replacement) from the reference, through the real path."""
    from mlharbor.data.profile import build_profile
    from mlharbor.monitoring.drift import DriftEngine
    from mlharbor.monitoring.reference import Reference, infer_kinds

    reference = make(200_000, seed=1, shift=False)
    engine = DriftEngine(Reference.from_profile(build_profile(reference,
                                                              infer_kinds(reference))))
    rng = np.random.default_rng(0)
    for size in sizes:
        alarms = dict.fromkeys(engine.reference.features, 0)
        started = time.perf_counter()
        for _ in range(windows):
            window = reference.iloc[rng.integers(0, len(reference), size)]
            for name in engine.run(window).drifted_features:
                alarms[name] += 1
        print(json.dumps({"size": size, "windows": windows,
                          "max_alarm_rate": max(alarms.values()) / windows,
                          "mean_alarm_rate": sum(alarms.values()) / windows / len(alarms),
                          "seconds": round(time.perf_counter() - started, 1)}), flush=True)


if __name__ == "__main__":
    step = sys.argv[1] if len(sys.argv) > 1 else "mlharbor"
    {"prepare": prepare, "mlharbor": run_mlharbor, "evidently": run_evidently,
     "aa": run_aa}[step]()
