"""`mlharbor train` with slices: a model worse on one slice only passes every overall gate and is
blocked by the slice gate alone; the report holds every slice's metrics; a bad slice recipe is
one readable error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from mlharbor.registry.service import Registry
from mlharbor.settings import Settings
from tests.support import cli_env, run_cli

RECIPE = """\
data: {path: data.csv, target: churn, id_columns: [customer_id]}
candidates:
  - name: logistic
    estimator: sklearn.linear_model.LogisticRegression
validation: {holdout: 0.3, folds: 2, seed: 7, bootstrap: 100}
metrics: {primary: f1}
slices:
  - column: contract
  - {column: tenure, bins: [12]}
  - {name: short_monthly, where: "contract == 'month-to-month' and tenure < 12"}
gates:
  - f1 >= 0.7
  - better than baseline
SLICE_GATE
register: {name: churn, alias: champion}
"""


def _data(rows: int = 1500, seed: int = 0) -> pd.DataFrame:
    """Churn follows `charges` the same way for one-year contracts (85% of rows) and the
    opposite way for month-to-month ones: one linear model cannot fit both, so it is good
    overall and bad on the month-to-month slice only."""
    rng = np.random.default_rng(seed)
    contract = np.where(rng.random(rows) < 0.15, "month-to-month", "one-year")
    charges = rng.normal(size=rows)
    signal = charges + 0.3 * rng.normal(size=rows)
    churn = np.where(contract == "one-year", signal > 0, signal < 0).astype(int)
    return pd.DataFrame({"customer_id": [f"C{i}" for i in range(rows)], "contract": contract,
                         "charges": charges.round(3), "tenure": rng.integers(0, 72, rows),
                         "churn": churn})


def test_a_model_worse_on_one_slice_only_is_blocked_by_the_slice_gate(
        settings: Settings, tmp_path: Path) -> None:
    env = {**cli_env(settings), "MLHARBOR_TRAINING__N_JOBS": "1"}
    _data().to_csv(tmp_path / "data.csv", index=False)
    (tmp_path / "overall.yaml").write_text(RECIPE.replace("SLICE_GATE\n", ""))
    (tmp_path / "sliced.yaml").write_text(
        RECIPE.replace("SLICE_GATE", "  - f1[contract=month-to-month] >= 0.6"))

    passed = run_cli("train", str(tmp_path / "overall.yaml"), "--json", env=env)
    assert passed.returncode == 0, passed.stderr
    assert all(g["passed"] for g in json.loads(passed.stdout)["gates"])

    blocked = run_cli("train", str(tmp_path / "sliced.yaml"), "--json", env=env)
    assert blocked.returncode == 1, blocked.stderr
    gates = {g["gate"]: g for g in json.loads(blocked.stdout)["gates"]}
    assert gates["f1 >= 0.7"]["passed"] and gates["better than baseline"]["passed"]
    sliced = gates["f1[contract=month-to-month] >= 0.6"]
    assert not sliced["passed"]
    assert "holdout f1 on slice contract=month-to-month (n = " in sliced["detail"]
    assert "gate 'f1[contract=month-to-month] >= 0.6' failed" in blocked.stderr
    assert "no alias moved" in blocked.stderr

    registry = Registry.from_settings(settings)
    try:
        assert registry.get_version("churn@champion").version == 1
        failed = registry.get_version("churn:2")
        assert failed.status == "failed"
        report = failed.lineage["evaluation"]
    finally:
        registry.close()
    block = report["slices"]
    keys = [s["key"] for s in block["slices"]]
    assert keys == ["contract=month-to-month", "contract=one-year", "tenure=(-inf, 12)",
                    "tenure=[12, inf)", "short_monthly"]
    assert block["flagged"] == ["contract=month-to-month"]
    monthly = block["slices"][0]
    assert monthly["rows"] > 0 and monthly["metrics"]["f1"] < 0.6
    assert sum(s["rows"] for s in block["slices"][:2]) == sum(
        s["rows"] for s in block["slices"][2:4]) == report["splits"]["holdout_rows"]
    assert set(monthly["ci95"]) >= {"f1", "accuracy", "roc_auc"}
    importance = report["importance"]
    assert importance["top_features"][0] in ("charges", "contract")
    assert importance["mean_abs_attribution"] and importance["partial_dependence"]
    html = (settings.home / "reports" / "churn-2.html").read_text()
    assert "Flagged slices (1)" in html and "Partial dependence on" in html


def test_a_bad_slice_in_the_recipe_is_one_error_naming_the_line(settings: Settings,
                                                                 tmp_path: Path) -> None:
    env = cli_env(settings)
    _data(200).to_csv(tmp_path / "data.csv", index=False)
    bad_filter = RECIPE.replace("SLICE_GATE\n", "").replace("tenure < 12", "tenure <")
    (tmp_path / "filter.yaml").write_text(bad_filter)
    result = run_cli("train", str(tmp_path / "filter.yaml"), env=env)
    assert result.returncode == 2
    lines = [x for x in result.stderr.splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and "line 10, slices[2].where" in lines[0]
    assert "expected a value" in lines[0] and "Traceback" not in result.stderr

    (tmp_path / "gate.yaml").write_text(RECIPE.replace("SLICE_GATE", "  - f1[region=x] > 0.1"))
    result = run_cli("train", str(tmp_path / "gate.yaml"), env=env)
    assert result.returncode == 2
    assert "gates[2]" in result.stderr and "names the slice 'region=x'" in result.stderr
