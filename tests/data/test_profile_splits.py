from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

import mlharbor
from mlharbor.data.profile import bin_counts, build_profile
from mlharbor.data.splits import plan_splits

CHURN = Path(mlharbor.__file__).parent / "demo" / "churn.csv"


def test_profile_is_json_and_fixed_bins() -> None:
    frame = pd.read_csv(CHURN)
    features = {"tenure_months": "numeric", "total_charges": "numeric", "contract": "categorical"}
    profile = build_profile(frame, features, seed=1, importances={"contract": 0.1},
                            sample_size=1000)
    json.dumps(profile)  # JSON-serialisable
    tenure = profile["features"]["tenure_months"]
    assert profile["rows"] == 5000 and profile["importances"] == {"contract": 0.1}
    assert sum(tenure["counts"]) == 5000 and len(tenure["counts"]) == len(tenure["bin_edges"]) - 1
    assert len(tenure["sample"]) == 1000 and tenure["min"] >= 1 and tenure["max"] <= 72
    assert profile["features"]["total_charges"]["missing_share"] > 0
    contract = profile["features"]["contract"]
    assert sum(contract["counts"].values()) + contract["other"] == 5000
    # A later window is counted into the reference bins.
    later = bin_counts(np.array([-5.0, 1.0, 500.0]), np.array(tenure["bin_edges"]))
    assert later.sum() == 3 and later[0] >= 1 and later[-1] >= 1
    assert build_profile(frame, features, seed=1, sample_size=1000) == {
        k: v for k, v in profile.items() if k != "importances"}


def test_split_strategies() -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"y": rng.integers(0, 2, 300), "g": rng.integers(0, 30, 300),
                          "t": rng.permutation(300)})
    strat = plan_splits(frame, "y", task="classification", strategy="auto", holdout=0.2,
                        folds=3, seed=0)
    assert strat.strategy == "stratified" and len(strat.holdout) == 60 and len(strat.folds) == 3
    assert set(strat.train).isdisjoint(strat.holdout)
    group = plan_splits(frame, "y", task="classification", strategy="group", holdout=0.2,
                        folds=3, seed=0, group_column="g")
    assert set(frame.g.iloc[group.train]).isdisjoint(frame.g.iloc[group.holdout])
    for train, test in group.folds:
        inner = frame.g.iloc[group.train]
        assert set(inner.iloc[train]).isdisjoint(inner.iloc[test])
    timed = plan_splits(frame, "y", task="classification", strategy="time", holdout=0.2,
                        folds=3, seed=0, time_column="t")
    assert frame.t.iloc[timed.train].max() < frame.t.iloc[timed.holdout].min()
    for train, test in timed.folds:
        inner = frame.t.iloc[timed.train]
        assert inner.iloc[train].max() < inner.iloc[test].min()
