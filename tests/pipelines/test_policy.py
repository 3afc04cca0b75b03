"""Retraining policies: the schema (errors name file, line and field) and the stored revisions
(apply, update, history, a stale revision refused, every attempt audited) on SQLite and
PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from mlharbor.cli.admin import cli_actor
from mlharbor.core.errors import ConfigError, ConflictError, InvalidInputError, NotFoundError
from mlharbor.pipelines.policy import Policy, load_policy, policy_from_dict, policy_from_yaml
from mlharbor.registry.audit import verify_chain
from mlharbor.registry.endpoints import EndpointService
from mlharbor.registry.policies import PolicyService
from mlharbor.registry.service import Registry
from mlharbor.settings import Settings

FULL = """\
endpoint: churn
model: churn
champion_alias: champion
triggers:
  drift: {window: 1h, of: 6, at_least: 4}
  metric: {name: accuracy, below: 0.80, window: 24h, min_labels: 200}
  estimated: {metric: accuracy, below: 0.80, window: 6h, min_rows: 200}
  schedule: "0 3 * * mon"
  cooldown: 6h
data:
  champion_data: true
  production_window: 7d
  min_rows: 100
recipe:
  overrides: {validation: {folds: 3}}
validation:
  gates: ["accuracy >= 0.7", "better than champion"]
rollout:
  approval: true
  shadow: {requests: 200, duration: 5m, min_agreement: 0.9}
  canary: {steps: [5, 25, 50, 100], hold: {requests: 100, duration: 2m}}
  guards: {error_rate_increase: 0.01, p99_ratio: 1.5, accuracy_drop: 0.02}
"""


def _problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        policy_from_yaml(text, source="policy.yaml")
    problems = info.value.details["problems"]
    assert isinstance(problems, list)
    return problems


# -- schema ---------------------------------------------------------------------------------


def test_a_full_policy_reads_back_with_durations_as_text_and_timedeltas() -> None:
    policy = policy_from_yaml(FULL, source="policy.yaml")
    assert policy.triggers.drift is not None and policy.triggers.drift.window == "1h"
    assert policy.triggers.drift.window_delta == timedelta(hours=1)
    assert policy.triggers.cooldown_delta == timedelta(hours=6)
    assert policy.triggers.schedule == "0 3 * * mon"
    assert policy.data.production_delta == timedelta(days=7)
    assert policy.rollout.canary.hold.duration_delta == timedelta(minutes=2)
    assert policy.rollout.shadow is not None and policy.rollout.approval
    assert policy.recipe.apply({"validation": {"folds": 5, "seed": 1}, "gates": ["x"]}) == {
        "validation": {"folds": 3, "seed": 1}, "gates": ["x"]}
    # The stored form is self-contained and reads back to the same policy.
    assert policy_from_dict(policy.to_dict()) == policy


def test_the_smallest_policy_takes_defaults() -> None:
    policy = policy_from_yaml("endpoint: churn\n")
    assert policy.rollout.canary.steps == [5, 25, 50, 100]
    assert policy.rollout.mode == "canary" and policy.rollout.ab is None
    assert not policy.triggers.automatic
    assert policy_from_yaml("endpoint: churn\nrollout: {mode: ab}\n").rollout.ab is not None


@pytest.mark.parametrize(("text", "expected"), [
    ("endpoint: churn\nrollout:\n  canary:\n    steps: [5, 50, 25, 100]\n",
     "policy.yaml line 4, rollout.canary.steps: steps must be strictly increasing"),
    ("endpoint: churn\nrollout:\n  canary:\n    steps: [5, 50]\n",
     "policy.yaml line 4, rollout.canary.steps: the last step must be 100"),
    ("endpoint: churn\nrollout:\n  canary:\n    steps: [0, 100]\n",
     "policy.yaml line 4, rollout.canary.steps: each step is a traffic percent within 1..100"),
    ("endpoint: churn\ntriggers:\n  drift: {of: 3, at_least: 4}\n",
     "policy.yaml line 3, triggers.drift: at_least (4) must be at most `of` (3)"),
    ("endpoint: churn\ntriggers:\n  cooldown: soon\n",
     "policy.yaml line 3, triggers.cooldown: The duration 'soon' is not understood"),
    ("endpoint: churn\ntriggers:\n  schedule: '0 25 * * *'\n",
     "policy.yaml line 3, triggers.schedule: The schedule '0 25 * * *': the hour value 25"),
    ("endpoint: churn\nrollout:\n  mode: ab\n  ab: {alpha: 1.5}\n",
     "policy.yaml line 4, rollout.ab.alpha: Input should be less than 1"),
    ("endpoint: churn\nrollout:\n  ab: {split: 50}\n",
     "policy.yaml line 2, rollout: `ab` settings are given but `mode` is canary"),
    ("endpoint: churn\nvalidation:\n  gates:\n    - f1 >= 0.8\n    - faster than light\n",
     "policy.yaml line 5, validation.gates[1]: Cannot read the gate 'faster than light'"),
    ("endpoint: churn\ntriggers:\n  metric: {name: rmse, below: 3}\n",
     "policy.yaml line 3, triggers.metric: rmse is an error (lower is better): give `above`"),
    ("endpoint: churn\ntriggers:\n  estimated: {metric: rmse}\n",
     "policy.yaml line 3, triggers.estimated.metric: cannot estimate 'rmse' without labels"),
    ("endpoint: churn\ndata: {uri: s3://bucket/new.csv, champion_data: true}\n",
     "policy.yaml line 2, data: `uri` replaces the champion's data"),
    ("endpoint: churn\ndata: {champion_data: false, production_window: null}\n",
     "policy.yaml line 2, data: no data"),
    ("endpoint: churn\nrolout: {}\n", "policy.yaml line 2, rolout: unknown field"),
    ("endpoint: ../etc\n", "policy.yaml line 1, endpoint: The name '../etc' is not allowed"),
    ("model: churn\n", "policy.yaml, endpoint: this field is required"),
])
def test_each_mistake_names_the_line_and_the_field(text: str, expected: str) -> None:
    problems = _problems(text)
    assert any(p.startswith(expected) for p in problems), problems


def test_every_problem_is_listed_at_once() -> None:
    problems = _problems("endpoint: churn\ntriggers:\n  cooldown: 0s\n"
                         "rollout:\n  guards: {alpha: 0}\n")
    assert [p.split(":")[0] for p in problems] == [
        "policy.yaml line 3, triggers.cooldown", "policy.yaml line 5, rollout.guards.alpha"]


def test_not_yaml_and_not_a_mapping_are_config_errors_with_the_line() -> None:
    with pytest.raises(ConfigError, match=r"policy.yaml line 2: not valid YAML"):
        policy_from_yaml("endpoint: churn\n  bad: [\n", source="policy.yaml")
    with pytest.raises(ConfigError, match="a policy must be a mapping"):
        policy_from_yaml("- endpoint\n", source="policy.yaml")
    with pytest.raises(ConfigError, match="a policy must be a mapping"):
        policy_from_yaml("", source="policy.yaml")


def test_an_alias_bomb_is_refused_not_expanded() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 8)]
    with pytest.raises(ConfigError, match="aliases"):
        policy_from_yaml("\n".join(lines) + "\n")


def test_a_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"Cannot read the policy .*nope.yaml"):
        load_policy(tmp_path / "nope.yaml")
    (tmp_path / "policy.yaml").write_text(FULL)
    assert load_policy(tmp_path / "policy.yaml").endpoint == "churn"


# -- storage --------------------------------------------------------------------------------


@pytest.fixture
def registry(db_settings: Settings, tmp_path: Path) -> Iterator[Registry]:
    reg = Registry.from_settings(db_settings)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "model.bin").write_bytes(b"weights")
    reg.register_version("churn", bundle)
    EndpointService(reg).create({"name": "churn", "routes": [{"ref": "churn:1"}]},
                                actor="setup")
    yield reg
    reg.close()


def _policy(**changes: object) -> Policy:
    return policy_from_dict({"endpoint": "churn", **changes})


def _audit(registry: Registry, action: str) -> list[tuple[str, dict[str, object]]]:
    return [(e.outcome, e.details) for e in registry.store.iter_audit()
            if e.action == action and e.resource == "policy/churn"]


def test_apply_update_history_and_revisions(registry: Registry) -> None:
    service = PolicyService(registry)
    first = service.apply(_policy(), actor="alice", reason="first")
    assert (first.outcome, first.policy.revision) == ("created", 1)
    same = service.apply(_policy(), actor="alice")
    assert (same.outcome, same.policy.revision) == ("unchanged", 1)
    second = service.apply(_policy(rollout={"approval": True}), actor="bob", reason="approve",
                           expected_revision=1)
    assert (second.outcome, second.policy.revision) == ("updated", 2)
    assert service.get("churn").spec["rollout"]["approval"] is True
    assert service.get("churn").updated_by == "bob"
    assert [(r.revision, r.action, r.actor, r.reason) for r in service.history("churn")] == [
        (1, "apply", "alice", "first"), (2, "apply", "bob", "approve")]
    assert service.revision("churn", 1).spec == _policy().to_dict()
    assert policy_from_dict(service.revision("churn", 2).spec).rollout.approval
    assert [p.endpoint for p in service.list_policies()] == ["churn"]
    # Deleting keeps the history; applying again continues the revisions, never repeats one.
    service.delete("churn", actor="carol", expected_revision=2)
    assert service.find("churn") is None
    with pytest.raises(NotFoundError, match="has no policy"):
        service.get("churn")
    again = service.apply(_policy(), actor="alice")
    assert (again.outcome, again.policy.revision) == ("created", 4)
    assert [r.action for r in service.history("churn")] == ["apply", "apply", "delete", "apply"]
    with pytest.raises(NotFoundError, match="no revision 9"):
        service.revision("churn", 9)
    # Every change is audited with its revision; the chain verifies.
    assert [(o, d["revision"], d["outcome"]) for o, d in _audit(registry, "policy.apply")] == [
        ("success", 1, "created"), ("success", 1, "unchanged"), ("success", 2, "updated"),
        ("success", 4, "created")]
    assert [o for o, _ in _audit(registry, "policy.delete")] == ["success"]
    assert verify_chain(registry.store.iter_audit()).ok


def test_a_stale_revision_is_refused_audited_and_writes_nothing(registry: Registry) -> None:
    service = PolicyService(registry)
    service.apply(_policy(), actor="alice")
    service.apply(_policy(enabled=False), actor="bob")
    with pytest.raises(ConflictError, match="at revision 2, not 1") as info:
        service.apply(_policy(rollout={"approval": True}), actor="carol", expected_revision=1)
    assert info.value.details["current_revision"] == 2
    with pytest.raises(ConflictError):
        service.delete("churn", actor="carol", expected_revision=1)
    assert service.get("churn").revision == 2
    assert service.get("churn").spec["rollout"]["approval"] is False
    assert len(service.history("churn")) == 2
    failures = [d for o, d in _audit(registry, "policy.apply") + _audit(registry, "policy.delete")
                if o == "failure"]
    assert [d["error"] for d in failures] == ["conflict", "conflict"]
    assert verify_chain(registry.store.iter_audit()).ok


def test_two_writers_from_one_revision_exactly_one_wins(registry: Registry) -> None:
    service = PolicyService(registry)
    service.apply(_policy(), actor="setup")
    barrier = threading.Barrier(2)
    results: list[str] = ["", ""]

    def writer(i: int) -> None:
        barrier.wait()
        try:
            service.apply(_policy(data={"min_rows": 200 + i}), actor=f"w{i}",
                          expected_revision=1)
            results[i] = "won"
        except ConflictError:
            results[i] = "conflict"

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results) == ["conflict", "won"]
    assert [r.revision for r in service.history("churn")] == [1, 2]


def test_a_policy_needs_its_endpoint_and_model_and_failures_are_audited(
    registry: Registry,
) -> None:
    service = PolicyService(registry)
    with pytest.raises(NotFoundError, match="Endpoint 'fraud' does not exist"):
        service.apply(policy_from_dict({"endpoint": "fraud"}), actor="alice")
    with pytest.raises(NotFoundError, match="Model 'nope' is not registered"):
        service.apply(_policy(model="nope"), actor="alice")
    with pytest.raises(ConflictError, match="does not exist"):
        service.apply(_policy(), actor="alice", expected_revision=3)
    with pytest.raises(InvalidInputError, match="positive whole number"):
        service.apply(_policy(), actor="alice", expected_revision=0)
    assert service.list_policies() == []
    with pytest.raises(NotFoundError, match="never had a policy"):
        service.history("churn")
    assert [d["error"] for _, d in _audit(registry, "policy.apply")] == ["not_found", "conflict"]
    assert all(o == "failure" for o, _ in _audit(registry, "policy.apply"))


# -- CLI ------------------------------------------------------------------------------------


@pytest.fixture
def cli_home(settings: Settings, tmp_path: Path) -> dict[str, str]:
    from tests.support import cli_env

    reg = Registry.from_settings(settings)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "model.bin").write_bytes(b"weights")
    reg.register_version("churn", bundle)
    EndpointService(reg).create({"name": "churn", "routes": [{"ref": "churn:1"}]},
                                actor="setup")
    reg.close()
    return cli_env(settings)


def test_cli_apply_show_history_and_a_stale_revision(cli_home: dict[str, str],
                                                     tmp_path: Path) -> None:
    import json

    from tests.support import run_cli

    file = tmp_path / "policy.yaml"
    file.write_text(FULL)
    first = run_cli("policies", "apply", str(file), "--reason", "first", "--json", env=cli_home)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["revision"] == 1
    file.write_text(FULL.replace("approval: true", "approval: false"))
    second = run_cli("policies", "apply", str(file), "--revision", "1", env=cli_home)
    assert second.returncode == 0 and "revision 2" in second.stdout, second.stderr
    stale = run_cli("policies", "apply", str(file.with_name("policy.yaml")), "--revision", "1",
                    env=cli_home)
    assert stale.returncode == 4 and stale.stderr.count("\n") == 1, stale.stderr
    assert "at revision 2, not 1" in stale.stderr
    # `show` prints YAML that `apply` reads back (unchanged: no new revision).
    shown = run_cli("policies", "show", "churn", "--revision", "1", env=cli_home)
    assert shown.returncode == 0 and "approval: true" in shown.stdout
    (tmp_path / "back.yaml").write_text(
        run_cli("policies", "show", "churn", env=cli_home).stdout)
    back = run_cli("policies", "apply", str(tmp_path / "back.yaml"), "--json", env=cli_home)
    assert json.loads(back.stdout)["outcome"] == "unchanged"
    history = json.loads(run_cli("policies", "history", "churn", "--json", env=cli_home).stdout)
    assert [(h["revision"], h["reason"]) for h in history] == [(1, "first"), (2, "")]
    assert {h["actor"] for h in history} == {cli_actor()}  # the user who applied it
    listed = json.loads(run_cli("policies", "list", "--json", env=cli_home).stdout)
    assert [p["endpoint"] for p in listed] == ["churn"]
    gone = run_cli("policies", "delete", "churn", "--yes", env=cli_home)
    assert gone.returncode == 0
    missing = run_cli("policies", "show", "churn", "--json", env=cli_home)
    assert missing.returncode == 3 and missing.stdout == ""


@pytest.mark.parametrize(("text", "code", "expected"), [
    ("endpoint: churn\nrollout:\n  canary:\n    steps: [5, 50, 25]\n", 2,
     "policy.yaml line 4, rollout.canary.steps: steps must be strictly increasing"),
    ("endpoint: churn\n  oops: [\n", 2, "policy.yaml line 2: not valid YAML"),
    ("endpoint: fraud\n", 3, "Endpoint 'fraud' does not exist"),
])
def test_cli_bad_input_is_one_line_and_writes_nothing(
    cli_home: dict[str, str], tmp_path: Path, text: str, code: int, expected: str,
) -> None:
    from tests.support import run_cli

    file = tmp_path / "policy.yaml"
    file.write_text(text)
    result = run_cli("policies", "apply", str(file), "--json", env=cli_home)
    assert result.returncode == code and result.stdout == ""
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert expected in result.stderr
    assert run_cli("policies", "list", "--json", env=cli_home).stdout.strip() == "[]"
    assert run_cli("policies", "apply", str(tmp_path / "nope.yaml"),
                   env=cli_home).returncode == 2


def test_cli_retrain_queues_one_job_and_a_second_call_returns_it(
    cli_home: dict[str, str], settings: Settings,
) -> None:
    import json

    from mlharbor.pipelines.jobs import JobStore
    from mlharbor.pipelines.retrain import RETRAIN_STEPS
    from tests.support import run_cli

    first = run_cli("retrain", "churn", "--reason", "labels look off", "--json", env=cli_home)
    assert first.returncode == 0, first.stderr
    job = json.loads(first.stdout)
    assert job["created"] is True and job["state"] == "queued" and job["kind"] == "retrain"
    assert tuple(job["plan"][:3]) == RETRAIN_STEPS and job["plan"][-1] == "promote"
    second = run_cli("retrain", "churn", env=cli_home)
    assert second.returncode == 0 and job["job"] in second.stdout
    assert "no new job was queued" in second.stdout
    reg = Registry.from_settings(settings)
    try:
        jobs = JobStore(reg.store).list_jobs(endpoint="churn")
        assert [j.id for j in jobs] == [job["job"]]
        request = jobs[0].request
        assert (request["trigger"], request["reason"], request["policy_revision"]) == (
            "manual", "labels look off", None)
    finally:
        reg.close()
    unknown = run_cli("retrain", "fraud", env=cli_home)
    assert unknown.returncode == 3 and unknown.stderr.count("\n") == 1
    assert "Endpoint 'fraud' does not exist" in unknown.stderr


def test_a_submitted_job_runs_under_the_stored_policy_revision(registry: Registry) -> None:
    from mlharbor.core.loop import RetrainTrigger
    from mlharbor.pipelines.submit import submit_retrain

    PolicyService(registry).apply(
        _policy(rollout={"approval": True, "shadow": {"requests": 10},
                         "canary": {"steps": [50, 100]}}), actor="alice")
    job, created = submit_retrain(registry, "churn", trigger=RetrainTrigger.DRIFT,
                                  reason="drift in 4 of 6 windows", actor="monitor")
    assert created and job.request["policy_revision"] == 1
    assert job.plan == ("snapshot", "train", "validate", "shadow", "approval", "canary-50",
                        "canary-100", "promote")
    again, created = submit_retrain(registry, "churn", trigger=RetrainTrigger.DRIFT,
                                    reason="still drifting", actor="monitor")
    assert (again.id, created) == (job.id, False)
