"""Real data, not only the demo: dates, one-class targets, missing labels, library warnings
and the wording of data-check findings, with default settings throughout."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

import mlharbor
from mlharbor.core.errors import ConfigError
from mlharbor.data.checks import Thresholds, check_dataset, percent
from mlharbor.data.schema import infer_schema
from mlharbor.settings import Settings
from tests.support import VENV_BIN, cli_env, free_port, run_cli

CHURN = Path(mlharbor.__file__).parent / "demo" / "churn.csv"

RECIPE = """\
data: {path: DATA, target: churn, id_columns: [customer_id]}
candidates:
  - name: logistic
    estimator: sklearn.linear_model.LogisticRegression
    params: {max_iter: MAX_ITER}
validation: {holdout: 0.25, folds: 3, seed: 5, bootstrap: 50}
metrics: {primary: f1}
CHECKS
register: {name: churn, alias: champion}
"""


def _recipe(folder: Path, data: str, *, max_iter: int = 500, checks: str = "") -> Path:
    path = folder / f"{Path(data).stem}.yaml"
    path.write_text(RECIPE.replace("DATA", data).replace("MAX_ITER", str(max_iter))
                    .replace("CHECKS", checks))
    return path


def _churn_with_dates(rows: int = 1500, seed: int = 0) -> pd.DataFrame:
    frame = pd.read_csv(CHURN).head(rows)
    rng = np.random.default_rng(seed)
    days = pd.to_timedelta(rng.integers(0, 1500, len(frame)), unit="D")
    frame["signup_date"] = (pd.Timestamp("2020-01-01") + days).strftime("%Y-%m-%d")
    return frame


# -- dates, end to end --------------------------------------------------------------------------


@pytest.mark.slow
def test_a_csv_with_dates_trains_registers_serves_and_is_monitored_by_default(
        settings: Settings, tmp_path: Path) -> None:
    frame = _churn_with_dates()
    frame.to_csv(tmp_path / "churn.csv", index=False)
    env = {**cli_env(settings), "MLHARBOR_TRAINING__N_JOBS": "1"}
    assert "MLHARBOR_FORMATS__SKOPS_TRUSTED_TYPES" not in os.environ  # default policy only

    trained = run_cli("train", str(_recipe(tmp_path, "churn.csv")), "--json", env=env)
    assert trained.returncode == 0, trained.stderr
    assert json.loads(trained.stdout)["version"] == "churn:1"

    from mlharbor.bootstrap import open_identities, open_registry
    from mlharbor.formats.base import TrustOptions
    from mlharbor.formats.bundle import ModelBytes
    from mlharbor.formats.sklearn import SklearnFormat

    registry = open_registry(settings)
    try:
        version = registry.get_version("churn@champion")
        assert version.manifest is not None
        inputs = {c["name"]: c for c in version.manifest["signature"]["inputs"]}
        assert "signup_date" in inputs
        # Served natively, saying why: the date step is Python that ONNX cannot express.
        assert version.manifest["default_runtime"] == "native"
        assert version.manifest["onnx"]["status"] == "not_applicable"
        assert "DateParts" in version.manifest["onnx"]["reason"]
        profile = version.lineage["reference_profile"]["features"]["signup_date"]
        assert profile["kind"] == "datetime" and profile["binning"] == "quantiles"
        folder = registry.download(version)
        model_file = folder / version.manifest["model_path"]
        model = SklearnFormat().read_file(ModelBytes.of(model_file, model_file.read_bytes()),
                                          TrustOptions())
        key = open_identities(registry).init_admin("ops", actor="test")[1]
    finally:
        registry.close()

    features = frame.drop(columns=["customer_id", "churn"])
    served = features.sample(400, random_state=3).reset_index(drop=True)
    records = json.loads(served.to_json(orient="records"))
    answers = _serve_and_ask(env, key, records)
    assert answers == model.predict(served).tolist()

    report_file = tmp_path / "drift.json"
    drift = run_cli("monitor", "drift", "churn", "--window", "1h", "--json", str(report_file),
                    env=env)
    assert drift.returncode == 0, drift.stderr
    report = json.loads(report_file.read_text())
    assert report["window"]["rows"] == 400
    by_name = {f["name"]: f for f in report["features"]}
    assert by_name["signup_date"]["kind"] == "datetime"
    assert not by_name["signup_date"]["drifted"]  # an A/A window: same rows as training
    assert not report["dataset"]["drifted"]


def _serve_and_ask(env: dict[str, str], key: str, records: list[dict[str, Any]]) -> list[Any]:
    """Start ``mlharbor serve``, post ``records`` in batches, stop it with SIGTERM (which
    flushes the prediction log) and return the predictions."""
    port = free_port()
    proc = subprocess.Popen(
        [str(VENV_BIN / "mlharbor"), "serve", "churn@champion", "--port", str(port)],
        env={**os.environ, **env, "MLHARBOR_SECURITY__RATE_LIMIT_PER_MINUTE": "0"},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {key}"}
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "mlharbor serve did not become ready"
            time.sleep(0.1)
        answers: list[Any] = []
        for start in range(0, len(records), 50):
            reply = httpx.post(f"{url}/v1/endpoints/churn/predict",
                               json=records[start:start + 50], headers=headers, timeout=60)
            assert reply.status_code == 200, reply.text
            answers += reply.json()["predictions"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        return answers
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_the_skops_policy_trusts_exactly_mlharbors_own_transformers() -> None:
    import importlib

    from mlharbor.formats.sklearn import MLHARBOR_TYPES, untrusted_types
    from mlharbor.training.preparation import DateParts, FeatureFunctions

    for name in MLHARBOR_TYPES:  # each a real class of ours, named by its own full name
        module, _, cls_name = name.rpartition(".")
        cls = getattr(importlib.import_module(module), cls_name)
        assert isinstance(cls, type) and f"{cls.__module__}.{cls.__qualname__}" == name
    date_parts = f"{DateParts.__module__}.{DateParts.__qualname__}"
    assert date_parts in MLHARBOR_TYPES
    lookalikes = [date_parts + "X", date_parts + ".fit", "mlharbor.training.preparation",
                  "mlharbor.training.preparation.apply_feature_functions",
                  f"{FeatureFunctions.__module__}.{FeatureFunctions.__qualname__}",
                  "mlharbor.training.preparationX.DateParts", "evil.DateParts"]
    assert untrusted_types(lookalikes, ()) == lookalikes  # no prefix matches anything


def test_feature_functions_still_need_the_operator_setting(tmp_path: Path) -> None:
    from mlharbor.pipelines.train_job import run_training
    from mlharbor.training.recipe import recipe_from_yaml

    _churn_with_dates(300).to_csv(tmp_path / "churn.csv", index=False)
    (tmp_path / "extra.py").write_text(
        "def ratio(frame):\n    return (frame['total_charges'] / frame['tenure_months'])"
        ".rename('ratio')\n")
    text = _recipe(tmp_path, "churn.csv").read_text().replace(
        "candidates:", "preparation:\n  trust_code: true\n  feature_functions: "
        "{module: extra.py, functions: [ratio]}\ncandidates:")
    recipe = recipe_from_yaml(text, source="r.yaml", base_dir=tmp_path)
    with pytest.raises(ConfigError, match="FeatureFunctions") as info:
        run_training(recipe, n_jobs=1, trusted_types=())
    assert "DateParts" not in str(info.value)  # the date step is ours, and trusted


# -- one class, missing labels, library warnings ------------------------------------------------


def test_a_one_class_target_is_one_line_with_no_warnings_and_no_leakage(
        settings: Settings, tmp_path: Path) -> None:
    _churn_with_dates(800).assign(churn=0).to_csv(tmp_path / "one.csv", index=False)
    env = {**cli_env(settings), "MLHARBOR_TRAINING__N_JOBS": "1"}
    result = run_cli("train", str(_recipe(tmp_path, "one.csv")), env=env)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines()
             if line.strip() and "━" not in line]  # progress bars aside
    errors = [line for line in lines if line.startswith("error:")]
    assert errors == [line for line in lines if not line.startswith("note:")], lines
    assert len(errors) == 1
    assert "has one class (0 in all 800 labelled rows); classification needs at least 2" \
        in errors[0]
    assert "Warning" not in result.stderr and "leaks" not in result.stderr
    assert "Traceback" not in result.stderr


def test_the_single_class_check_runs_first_and_alone() -> None:
    frame = _churn_with_dates(400).assign(churn="yes")
    frame.loc[:3, "churn"] = None
    frame["leak"] = 1.0  # would trip constant-column and leakage checks on a real target
    schema = infer_schema(frame, "churn", exclude=["customer_id"])
    report = check_dataset(frame, schema, Thresholds(max_target_missing_share=0.5))
    assert [f.check for f in report.findings] == ["single_class"]
    assert "or set data.task: regression" not in report.findings[0].message  # text labels


def test_rows_without_a_target_are_counted(tmp_path: Path) -> None:
    from mlharbor.pipelines.train_job import Progress, run_training
    from mlharbor.training.recipe import load_recipe

    frame = _churn_with_dates(600)
    frame["churn"] = frame["churn"].astype(float)
    frame.loc[frame.sample(17, random_state=1).index, "churn"] = np.nan
    frame.to_csv(tmp_path / "gaps.csv", index=False)
    recipe = load_recipe(_recipe(tmp_path, "gaps.csv",
                                 checks="checks: {max_target_missing_share: 0.05}"))
    notes: list[str] = []

    class Notes(Progress):
        def note(self, message: str) -> None:
            notes.append(message)

    outcome = run_training(recipe, n_jobs=1, progress=Notes())
    said = [n for n in notes if "target 'churn' is missing" in n]
    assert said == ["warning: The target 'churn' is missing in 17 of 600 rows (2.8%); those "
                    "17 rows are dropped, 583 are used (checks.max_target_missing_share allows "
                    "5%)."]
    stored = [f for f in outcome.report["data_checks"]["warnings"]
              if f["check"] == "target_missing"]
    assert len(stored) == 1 and "17 rows are dropped" in stored[0]["message"]
    assert outcome.report["splits"]["train_rows"] + outcome.report["splits"]["holdout_rows"] \
        == 583


def test_library_warnings_are_summarised_once_per_kind(tmp_path: Path,
                                                       capfd: pytest.CaptureFixture[str]) -> None:
    from mlharbor.pipelines.train_job import Progress, run_training
    from mlharbor.training.recipe import load_recipe

    _churn_with_dates(600).to_csv(tmp_path / "churn.csv", index=False)
    recipe = load_recipe(_recipe(tmp_path, "churn.csv", max_iter=2))
    notes: list[str] = []

    class Notes(Progress):
        def note(self, message: str) -> None:
            notes.append(message)

    # Two workers: the fold fits run in other processes, whose warnings are caught there.
    outcome = run_training(recipe, n_jobs=2, progress=Notes())
    summary = [n for n in notes if "ConvergenceWarning" in n]
    assert len(summary) == 1, notes
    assert summary[0].startswith("warning: ConvergenceWarning x4: lbfgs failed to converge")
    assert summary[0].endswith("(first in candidate logistic, fold 1)")  # 3 folds + final fit
    assert "\n" not in summary[0]
    assert outcome.report["library_warnings"] == [summary[0].removeprefix("warning: ")]
    captured = capfd.readouterr()
    assert "Warning" not in captured.err and "Increase the number" not in captured.err


# -- wording ------------------------------------------------------------------------------------


def test_a_share_just_below_a_threshold_never_reads_as_the_threshold() -> None:
    labels = pd.Series([0] * 9503 + [1] * 497)  # class 1 is 4.97% of the rows
    frame = pd.DataFrame({"x": np.arange(len(labels)) % 7, "y": labels})
    schema = infer_schema(frame, "y")
    report = check_dataset(frame, schema, Thresholds(min_class_share=0.05))
    (finding,) = [f for f in report.findings if f.check == "class_imbalance"]
    assert "is 4.97% of rows (below 5%)" in finding.message, finding.message
    assert percent(0.0497, 0.05) == "4.97%"
    assert percent(0.05, 0.05) == "5.0%"
    assert percent(0.5004, 0.5) == "50.04%"


@hsettings(derandomize=True, deadline=None, max_examples=300)
@given(share=st.floats(0, 1), threshold=st.floats(0, 1))
def test_percent_keeps_the_side_of_the_threshold(share: float, threshold: float) -> None:
    text = percent(share, threshold).removesuffix("%")
    limit = round(threshold * 100, 9)
    if share == threshold:
        return
    if text.startswith(("<", ">")):  # within a millionth of a percent
        assert (text[0] == "<") == (share * 100 < limit)
        return
    shown = float(text)
    if share * 100 < limit:
        assert shown < limit
    elif share * 100 > limit:
        assert shown > limit


def test_message_and_hint_are_joined_with_punctuation() -> None:
    error = ConfigError("unknown column 'churned'; the data has ['churn', 'target']",
                        hint="Fix the spelling (column names are case-sensitive).")
    assert str(error) == ("unknown column 'churned'; the data has ['churn', 'target']. "
                          "Fix the spelling (column names are case-sensitive).")
    assert str(ConfigError("Is it?", hint="Yes.")) == "Is it? Yes."
    assert str(ConfigError("Done.", hint="Go on.")) == "Done. Go on."
    assert str(ConfigError("no hint")) == "no hint"
