"""`mlharbor worker` runs jobs without HTTP: a retrain queued by `mlharbor retrain` runs to a
promotion and `mlharbor jobs logs` shows it; SIGTERM mid-canary abandons the step and another
worker resumes the job (one registration); bad input to the commands writes nothing."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mlharbor.pipelines.jobs import Job, JobState, JobStore, StepState
from mlharbor.settings import Settings
from tests.pipelines.loophome import apply_policy, build_champion_home, copy_home, fast_policy
from tests.support import VENV_BIN, cli_env, run_cli


@pytest.fixture(scope="module")
def base_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_champion_home(tmp_path_factory.mktemp("worker"))


def prepared(base_home: Path, tmp_path: Path, policy: str) -> tuple[Settings, dict[str, str]]:
    from mlharbor.bootstrap import open_registry

    settings = Settings(home=copy_home(base_home, tmp_path / "home"))
    registry = open_registry(settings)
    try:
        apply_policy(registry, policy)
    finally:
        registry.close()
    env = {**cli_env(settings), "MLHARBOR_PIPELINES__JOB_POLL_S": "0.2",
           "MLHARBOR_PIPELINES__JOB_LEASE_S": "3", "MLHARBOR_TRAINING__N_JOBS": "1",
           "MLHARBOR_PIPELINES__TRIGGERS": "false"}
    return settings, env


def start_worker(env: dict[str, str]) -> subprocess.Popen[str]:
    exe = shutil.which("mlharbor", path=str(VENV_BIN)) or "mlharbor"
    return subprocess.Popen([exe, "worker"], env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def stop_worker(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output
    assert "worker: stopped." in output and "Traceback" not in output
    return output


def job_of(settings: Settings, job_id: str) -> Job:
    from mlharbor.bootstrap import open_registry

    registry = open_registry(settings)
    try:
        return JobStore(registry.store).get(job_id)
    finally:
        registry.close()


def wait_job(settings: Settings, job_id: str, done: Callable[[Job], bool],
             proc: subprocess.Popen[str] | None = None, deadline_s: float = 240) -> Job:
    """Poll the job until ``done`` (a hang guard with a deadline, not a speed check)."""
    end = time.monotonic() + deadline_s
    while True:
        job = job_of(settings, job_id)
        if done(job):
            return job
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the worker exited: {proc.communicate()[0]}")
        if time.monotonic() > end:
            raise AssertionError(f"job not done before the deadline: {job}")
        time.sleep(0.3)


def retrain(env: dict[str, str]) -> str:
    import json

    queued = run_cli("retrain", "churn", "--reason", "from the CLI", "--json", env=env)
    assert queued.returncode == 0, queued.stderr
    body: dict[str, Any] = json.loads(queued.stdout)
    assert body["created"] is True
    return str(body["job"])


@pytest.mark.slow
def test_a_worker_runs_a_job_the_cli_queued_and_stops_on_sigterm(
        base_home: Path, tmp_path: Path) -> None:
    settings, env = prepared(base_home, tmp_path, fast_policy())
    job_id = retrain(env)
    proc = start_worker(env)
    try:
        job = wait_job(settings, job_id, lambda j: not j.active, proc)
    finally:
        output = stop_worker(proc)
    assert job.state is JobState.SUCCEEDED, job.error
    assert job.lease_owner is None and job.steps[-1].name == "promote"
    assert "running jobs of kinds retrain" in output

    logs = run_cli("jobs", "logs", job_id, env=env)
    assert logs.returncode == 0, logs.stderr
    lines = logs.stdout.strip().splitlines()
    assert lines[-1] == f"job {job_id}: promoted"
    assert any("submit" in line for line in lines)
    assert any(" promote " in line and "alias" in line for line in lines), logs.stdout
    as_json = run_cli("jobs", "logs", job_id, "--json", env=env)
    assert '"outcome": "promoted"' in as_json.stdout


@pytest.mark.slow
def test_sigterm_mid_canary_abandons_the_step_and_another_worker_finishes_the_job(
        base_home: Path, tmp_path: Path) -> None:
    from mlharbor.bootstrap import open_registry

    settings, env = prepared(base_home, tmp_path, fast_policy("8s"))
    job_id = retrain(env)
    first = start_worker(env)
    try:
        wait_job(settings, job_id, lambda j: j.steps[3].state is StepState.RUNNING, first)
    finally:
        stop_worker(first)  # exits 0 while the canary holds: the step is abandoned
    stopped = job_of(settings, job_id)
    assert stopped.state is JobState.RUNNING and stopped.steps[3].state is StepState.RUNNING
    assert [s.state for s in stopped.steps[:3]] == [StepState.SUCCEEDED] * 3

    second = start_worker(env)
    try:
        done = wait_job(settings, job_id, lambda j: not j.active, second)
    finally:
        stop_worker(second)
    assert done.state is JobState.SUCCEEDED, done.error
    assert done.steps[3].attempts == 2 and done.steps[1].attempts == 1  # train ran once
    registry = open_registry(settings)
    try:
        assert sorted(v.version for v in registry.list_versions("churn").items) == [1, 2]
        assert registry.get_version("churn@champion").version == 2
    finally:
        registry.close()


def test_bad_input_to_the_worker_and_job_commands_writes_nothing(
        settings: Settings, tmp_path: Path) -> None:
    from mlharbor.bootstrap import open_registry
    from mlharbor.registry.endpoints import EndpointService

    registry = open_registry(settings)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "model.bin").write_bytes(b"weights")
    registry.register_version("churn", bundle)
    EndpointService(registry).create({"name": "churn", "routes": [{"ref": "churn:1"}]},
                                     actor="setup")
    store = JobStore(registry.store)
    job, _ = store.submit("review", "churn", {}, ("review",), actor="test")

    def snapshot() -> tuple[list[Any], int]:
        return ([j.to_dict() for j in store.list_jobs()],
                sum(1 for _ in registry.store.iter_audit()))

    before = snapshot()
    env = cli_env(settings)
    try:
        cases = [
            (("jobs", "logs", "nope"), 3, "nope"),
            (("retrain", "nope"), 3, "nope"),
            (("retrain", "Bad Name!"), 2, "endpoint"),
            (("jobs", "cancel", job.id, "--reason", "x" * 2001), 2, "reason"),
            (("jobs", "approve", job.id), 4, "not waiting"),
        ]
        for args, code, says in cases:
            result = run_cli(*args, env=env)
            assert result.returncode == code, (args, result.stderr)
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1 and says in lines[0], (args, result.stderr)
        bad_lease = run_cli("worker", env={**env, "MLHARBOR_PIPELINES__JOB_LEASE_S": "0"})
        assert bad_lease.returncode != 0
        assert "pipelines.job_lease_s" in bad_lease.stderr
        assert "Traceback" not in bad_lease.stderr
        assert snapshot() == before
    finally:
        registry.close()
