"""The demo's narrator: one line per step of a stored job, each said once, in loop order."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

from mlharbor.demo.watch import describe
from mlharbor.pipelines.jobs import Job, JobState, StepState, StepView

T0 = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
REASON = ("drift in 3 of the last 4 30s windows (monthly_charges, contract); the policy "
          "retrains at 3")
SNAPSHOT = {"snapshot": {"uri": "artifact:sha256:" + "ab" * 32,
                         "fingerprint": "sha256:" + "cd" * 32, "format": "parquet",
                         "rows": 7100, "columns": {}, "target": "churn",
                         "parts": [{"kind": "champion_data", "uri": "file:churn.csv",
                                    "fingerprint": "sha256:1", "rows": 5000},
                                   {"kind": "production", "uri": "endpoint:churn",
                                    "fingerprint": "sha256:2", "rows": 2100}]},
            "base": "churn:1", "model": "churn", "champion_alias": "champion", "window": None}
VALIDATE = {"primary_metric": "f1", "metrics": {"f1": 0.6712}, "champion": {"f1": 0.6501},
            "baseline": {"f1": 0.0}, "challenger": "churn:2", "base": "churn:1"}


def _decision(step: int, verdict: str, reason: str, weights: dict[str, int]) -> dict[str, Any]:
    return {"decision": {"job_id": "j1", "step": step, "phase": "canary", "verdict": verdict,
                         "reason": reason, "weights": weights,
                         "guard_metrics": {"challenger_requests": 31.0,
                                           "challenger_accuracy": 0.74,
                                           "champion_accuracy": 0.69,
                                           "challenger_labelled": 24.0},
                         "at": T0.isoformat()}}


def _step(ordinal: int, name: str, state: StepState, result: Any = None,
          error: str | None = None) -> StepView:
    return StepView(ordinal, name, state, 1, "runner", T0 + timedelta(seconds=ordinal),
                    T0 + timedelta(seconds=ordinal + 1), None, result, error)


def _job(state: JobState, steps: list[StepView], **request: Any) -> Job:
    plan = ("snapshot", "train", "validate", "canary-25", "canary-100", "promote")
    names = {s.name for s in steps}
    pending = [StepView(i, n, StepState.PENDING, 0, None, None, None, None, None, None)
               for i, n in enumerate(plan) if n not in names]
    return Job("j1", "retrain", "churn", state,
               {"trigger": "drift", "reason": REASON, **request}, plan, "mlharbor-triggers",
               T0, T0, None, None, None, 1, False, None, (*steps, *pending))


def _promoted() -> Job:
    return _job(JobState.SUCCEEDED, [
        _step(0, "snapshot", StepState.SUCCEEDED, SNAPSHOT),
        _step(1, "train", StepState.SUCCEEDED, {"version": "churn:2", "winner": "forest"}),
        _step(2, "validate", StepState.SUCCEEDED, VALIDATE),
        _step(3, "canary-25", StepState.SUCCEEDED, _decision(
            1, "advance", "canary step 1/2 (25%): guards passed; accuracy look 1: continue",
            {"churn:1": 75, "churn:2": 25})),
        _step(4, "canary-100", StepState.SUCCEEDED, _decision(
            2, "advance", "canary step 2/2 (100%): guards passed", {"churn:2": 100})),
        _step(5, "promote", StepState.SUCCEEDED, _decision(
            3, "promote", "promoted", {"churn:2": 100}))])


def test_a_promoted_job_is_told_step_by_step_once() -> None:
    said: set[str] = set()
    lines = describe(_promoted(), said, ui="http://h:1/ui", traffic=lambda: "90 requests, 0 failed")
    link = "http://h:1/ui#/jobs/j1"
    assert lines == [
        f"drift detected in 3 of 4 30s windows -> retraining job j1 started: {link}",
        "snapshot: 7100 rows (5000 champion + 2100 labelled production rows; fingerprint "
        "sha256:cdcdcdcdcdcd)",
        "trained churn:2 (winner: forest)",
        "challenger churn:2 validated (f1 0.671 vs champion 0.650 vs baseline 0.000)",
        "canary 25%: guards passed; accuracy look 1: continue (challenger 31 requests, live "
        "accuracy 0.740 vs 0.690 on 24 labels)",
        "canary 100%: guards passed (challenger 31 requests, live accuracy 0.740 vs 0.690 on "
        "24 labels)",
        f"promoted churn:2 to @champion (job j1; demo traffic: 90 requests, 0 failed): {link}",
    ]
    assert describe(_promoted(), said, ui="http://h:1/ui") == []  # nothing is said twice


def test_a_running_job_is_told_as_far_as_it_went() -> None:
    job = _job(JobState.RUNNING, [_step(0, "snapshot", StepState.SUCCEEDED, SNAPSHOT),
                                  _step(1, "train", StepState.RUNNING)],
               trigger="manual", reason="")
    said: set[str] = set()
    lines = describe(job, said)
    assert lines[0] == "manual request -> retraining job j1 started"
    assert lines[1].startswith("snapshot: 7100 rows") and len(lines) == 2
    finished = dataclasses.replace(job, state=JobState.SUCCEEDED)
    assert describe(finished, said) == ["job j1 succeeded"]


def test_a_rollback_and_a_rejection_say_why() -> None:
    reason = "accuracy 0.520 vs 0.700: the sequential test finds the challenger worse"
    rolled = _job(JobState.FAILED, [
        _step(0, "snapshot", StepState.SUCCEEDED, SNAPSHOT),
        _step(1, "train", StepState.SUCCEEDED, {"version": "churn:2", "winner": "forest"}),
        _step(2, "validate", StepState.SUCCEEDED, VALIDATE),
        _step(3, "canary-25", StepState.FAILED, _decision(1, "rollback", reason,
                                                          {"churn:1": 100}),
              error=f"Rolled back: {reason}.")])
    lines = describe(rolled, set())
    assert lines[-1] == f"rolled back: {reason} (job j1)"
    assert not any(line.startswith("canary 25%") for line in lines)  # it did not pass

    error = "Challenger churn:2 was rejected at validation: gate 'f1 >= 0.9' failed"
    rejected = _job(JobState.FAILED, [
        _step(0, "snapshot", StepState.SUCCEEDED, SNAPSHOT),
        _step(1, "train", StepState.SUCCEEDED, {"version": "churn:2", "winner": "forest"}),
        _step(2, "validate", StepState.FAILED, None, error=error)])
    assert describe(rejected, set())[-1] == (
        f"challenger rejected at validation: {error} (job j1)")
