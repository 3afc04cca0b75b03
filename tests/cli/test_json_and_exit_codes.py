"""Scripts can rely on the CLI: every ``--json`` prints JSON and only JSON on stdout, and
every anticipated failure exits with the documented code (2 bad input, 3 not found, ...)
in one line. The commands are enumerated from the Typer app itself, so a new ``--json``
command without a case here fails the first test."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import mlharbor
from mlharbor.settings import Settings
from tests.support import cli_env, run_cli

CHURN = Path(mlharbor.__file__).parent / "demo" / "churn.csv"

RECIPE = """\
data: {path: churn.csv, target: TARGET, id_columns: [customer_id]}
candidates:
  - name: forest
    estimator: sklearn.ensemble.RandomForestClassifier
    params: {n_estimators: 10, max_depth: 4}
validation: {holdout: 0.25, folds: 2, seed: 3, bootstrap: 20}
metrics: {primary: f1}
register: {name: churn, alias: champion}
"""

POLICY = """\
endpoint: churn
model: churn
champion_alias: champion
triggers:
  schedule: "0 3 * * mon"
data:
  champion_data: true
  min_rows: 100
validation:
  gates: ["better than champion"]
"""


def json_commands() -> dict[str, bool]:
    """Every command with a ``--json`` option: its path -> whether ``--json`` is a flag
    (stdout is JSON) rather than a file name (the file is JSON)."""
    import typer

    from mlharbor.cli.main import create_app

    found: dict[str, bool] = {}

    def walk(command: Any, path: list[str]) -> None:
        subcommands = getattr(command, "commands", None)
        if subcommands:
            for name, sub in subcommands.items():
                walk(sub, [*path, name])
            return
        for param in command.params:
            if "--json" in getattr(param, "opts", []):
                found[" ".join(path)] = bool(getattr(param, "is_flag", False))

    walk(typer.main.get_command(create_app()), [])
    return found


class Scene:
    """The home the commands run against, and what earlier commands made."""

    def __init__(self, settings: Settings, folder: Path) -> None:
        self.settings, self.folder = settings, folder
        self.env = {**cli_env(settings), "MLHARBOR_TRAINING__N_JOBS": "1"}
        self.values: dict[str, Any] = {}


Case = Callable[[Scene], list[str]]


def _parked_job(scene: Scene, endpoint: str) -> list[str]:
    """A job waiting for approval (as a rollout's approval step leaves it)."""
    from mlharbor.bootstrap import open_registry
    from mlharbor.pipelines.jobs import Fence, JobStore

    registry = open_registry(scene.settings)
    try:
        store = JobStore(registry.store)
        kind = f"approval-{endpoint}"  # its own kind: claim takes exactly this job
        job, _ = store.submit(kind, endpoint, {}, ["approve"], actor="test")
        claimed = store.claim("runner", [kind], timedelta(minutes=5))
        assert claimed is not None and claimed.id == job.id
        fence = Fence(job.id, "runner", claimed.attempt)
        store.start_step(fence, 0, timedelta(minutes=5))
        store.park(fence, 0, "waiting for a person")
        return [job.id]
    finally:
        registry.close()


def _log_predictions(scene: Scene) -> None:
    from mlharbor.core.records import PredictionRecord
    from mlharbor.monitoring.service import open_prediction_log

    rows = pd.read_csv(scene.folder / "churn.csv").drop(columns=["customer_id", "churn"])
    log = open_prediction_log(scene.settings)
    now = datetime.now(UTC)
    for i, row in enumerate(rows.head(300).to_dict(orient="records")):
        log.emit(PredictionRecord(f"r{i}", "churn", "churn@champion", 1, row, [0], 0.01,
                                  now - timedelta(minutes=30) + timedelta(seconds=i)))
    log.close()


# In the order they run: each may use what an earlier one made.
CASES: dict[str, Case] = {
    "train": lambda s: ["train", str(s.folder / "recipe.yaml")],
    "evaluate": lambda s: ["evaluate", "churn:1", "--data", str(s.folder / "churn.csv")],
    "reproduce": lambda s: ["reproduce", "churn:1"],
    "models register": lambda s: ["models", "register", "other", str(s.folder / "blob.bin"),
                                  "--raw"],
    "models list": lambda s: ["models", "list"],
    "models show": lambda s: ["models", "show", "churn@champion"],
    "models versions": lambda s: ["models", "versions", "churn"],
    "models alias history": lambda s: ["models", "alias", "history", "churn"],
    "monitor reference set": lambda s: ["monitor", "reference", "set", "churn:1", "--data",
                                        str(s.folder / "labelled.csv"), "--target", "churn"],
    "endpoints create": lambda s: ["endpoints", "create", "churn", "--route", "churn@champion"],
    "endpoints update": lambda s: ["endpoints", "update", "churn", "--description", "scores"],
    "endpoints show": lambda s: ["endpoints", "show", "churn"],
    "endpoints list": lambda s: ["endpoints", "list"],
    "endpoints history": lambda s: ["endpoints", "history", "churn"],
    "admin policy": lambda s: ["admin", "policy"],
    "admin users list": lambda s: ["admin", "users", "list"],
    "admin service-accounts list": lambda s: ["admin", "service-accounts", "list"],
    "admin keys list": lambda s: ["admin", "keys", "list"],
    "monitor drift": lambda s: ["monitor", "drift", "churn", "--window", "2h"],
    "monitor attributions": lambda s: ["monitor", "attributions", "churn", "--window", "2h",
                                       "--rows", "50"],
    "monitor performance": lambda s: ["monitor", "performance", "churn"],
    "runs list": lambda s: ["runs", "list"],
    "runs show": lambda s: ["runs", "show", s.values["runs list"]["runs"][0]["run_id"]],
    "runs compare": lambda s: ["runs", "compare", *[r["run_id"] for r in
                                                    s.values["runs list"]["runs"][:2]]],
    "policies apply": lambda s: ["policies", "apply", str(s.folder / "policy.yaml")],
    "policies list": lambda s: ["policies", "list"],
    "policies show": lambda s: ["policies", "show", "churn"],
    "policies history": lambda s: ["policies", "history", "churn"],
    "retrain": lambda s: ["retrain", "churn", "--reason", "test"],
    "jobs list": lambda s: ["jobs", "list"],
    "jobs show": lambda s: ["jobs", "show", s.values["retrain"]["job"]],
    "jobs logs": lambda s: ["jobs", "logs", s.values["retrain"]["job"]],
    "jobs cancel": lambda s: ["jobs", "cancel", s.values["retrain"]["job"]],
    "jobs approve": lambda s: ["jobs", "approve", *_parked_job(s, "waiting-a")],
    "jobs reject": lambda s: ["jobs", "reject", *_parked_job(s, "waiting-b")],
}


@pytest.mark.slow
def test_every_json_option_prints_valid_json(settings: Settings, tmp_path: Path) -> None:
    commands = json_commands()
    assert set(CASES) == set(commands), (
        f"commands with --json but no case here: {sorted(set(commands) - set(CASES))}; "
        f"cases for commands without --json: {sorted(set(CASES) - set(commands))}")
    frame = pd.read_csv(CHURN).head(600)
    frame.to_csv(tmp_path / "churn.csv", index=False)
    frame.drop(columns=["customer_id"]).to_csv(tmp_path / "labelled.csv", index=False)
    (tmp_path / "recipe.yaml").write_text(RECIPE.replace("TARGET", "churn"))
    (tmp_path / "policy.yaml").write_text(POLICY)
    (tmp_path / "blob.bin").write_bytes(b"weights")
    scene = Scene(settings, tmp_path)
    for path, case in CASES.items():
        if path == "monitor drift":
            _log_predictions(scene)
        args = case(scene)
        if commands[path]:
            result = run_cli(*args, "--json", env=scene.env)
            assert result.returncode == 0, (path, result.stderr)
            try:
                scene.values[path] = json.loads(result.stdout)
            except json.JSONDecodeError as exc:
                raise AssertionError(f"`mlharbor {' '.join(args)} --json` printed no JSON "
                                     f"({exc}):\n{result.stdout}") from exc
        else:  # --json FILE: the file holds the JSON
            out = tmp_path / f"{path.replace(' ', '-')}.json"
            result = run_cli(*args, "--json", str(out), env=scene.env)
            assert result.returncode == 0, (path, result.stderr)
            scene.values[path] = json.loads(out.read_text())
    assert scene.values["train"]["version"] == "churn:1"
    assert any("'total_charges' is missing" in w for w in scene.values["train"]["warnings"])
    assert scene.values["reproduce"]["matches"] is True
    assert scene.values["monitor drift"]["window"]["rows"] == 300
    assert scene.values["monitor attributions"]["version"] == 1
    assert len(scene.values["runs list"]["runs"]) >= 2  # the train run and its candidates
    assert scene.values["jobs cancel"]["id"] == scene.values["retrain"]["job"]


# -- exit codes ---------------------------------------------------------------------------------


def _one_error_line(result: Any) -> str:
    lines = [line for line in result.stderr.splitlines()  # progress bars and notes aside
             if line.strip() and not line.startswith("note:") and "━" not in line]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:") and "unexpected" not in lines[0], lines[0]
    assert "Traceback" not in result.stderr
    return lines[0]


def test_output_files_in_missing_folders_are_bad_input(settings: Settings,
                                                       tmp_path: Path) -> None:
    env = cli_env(settings)
    missing = tmp_path / "missing" / "dir"
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules: []\n")
    (tmp_path / "recipe.yaml").write_text(RECIPE.replace("TARGET", "churn"))
    cases = [
        (["monitor", "drift", "churn", "--html", str(missing / "r.html")], missing / "r.html"),
        (["monitor", "drift", "churn", "--json", str(missing / "r.json")], missing / "r.json"),
        (["monitor", "drift", "churn", "--html", str(tmp_path)], tmp_path),
        (["monitor", "export-rules", "--rules", str(rules), "--output",
          str(missing / "rules.yml")], missing / "rules.yml"),
        (["audit", "export", "--output", str(missing / "audit.jsonl")],
         missing / "audit.jsonl"),
        (["train", str(tmp_path / "recipe.yaml"), "--report", str(missing / "report.html")],
         missing / "report.html"),
        # Not routed through cli.output: the CLI's net still makes it bad input.
        (["keys", "generate-master", "--out", str(missing / "master.key")],
         missing / "master.key"),
    ]
    for args, path in cases:
        result = run_cli(*args, env=env)
        assert result.returncode == 2, (args, result.stderr)
        line = _one_error_line(result)
        assert repr(str(path)) in line, line
    assert not (tmp_path / "missing").exists()


def test_a_message_ends_with_punctuation_before_its_hint(settings: Settings,
                                                         tmp_path: Path) -> None:
    pd.read_csv(CHURN).head(50).to_csv(tmp_path / "churn.csv", index=False)
    (tmp_path / "recipe.yaml").write_text(RECIPE.replace("TARGET", "churned"))
    result = run_cli("train", str(tmp_path / "recipe.yaml"), env=cli_env(settings))
    assert result.returncode == 2, result.stderr
    line = _one_error_line(result)
    assert "line 1, data.target: unknown column 'churned'" in line
    assert "'total_charges']. Fix the spelling" in line, line
