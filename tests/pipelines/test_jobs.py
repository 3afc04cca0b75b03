"""The durable job runner: resume after SIGKILL, exactly-once steps across runner processes on
SQLite and PostgreSQL, one job per endpoint (enforced by the database), cancel, fencing, and
the CLI on bad input. Runner processes are real (``tests/pipelines/jobworker.py``); nothing
asserts wall-clock speed, states are awaited with a deadline loop."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert

from mlharbor.core.errors import ConflictError, InvalidInputError, NotFoundError
from mlharbor.pipelines.jobs import (
    Fence,
    Job,
    JobKind,
    JobRunner,
    JobState,
    JobStore,
    LeaseLost,
    Step,
    StepContext,
    StepState,
    check_job_transition,
    check_step_transition,
)
from mlharbor.registry.schema import jobs as jobs_table
from mlharbor.registry.service import Registry
from mlharbor.settings import Settings
from tests.pipelines import jobworker
from tests.support import cli_env, run_cli

ROOT = Path(__file__).resolve().parents[2]


def wait_for(check: Callable[[], bool], what: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def registry(settings: Settings) -> Iterator[Registry]:
    reg = Registry.from_settings(settings)
    yield reg
    reg.close()


@pytest.fixture
def store(registry: Registry) -> JobStore:
    return JobStore(registry.store)


@pytest.fixture
def db_registry(db_settings: Settings) -> Iterator[Registry]:
    """The registry on SQLite, then on PostgreSQL."""
    reg = Registry.from_settings(db_settings)
    yield reg
    reg.close()


def effects(workdir: Path) -> collections.Counter[str]:
    path = workdir / "effects.log"
    lines = path.read_text().splitlines() if path.exists() else []
    # "three JOB by OWNER" counts as "three JOB".
    return collections.Counter(" ".join(line.split()[:2]) for line in lines)


def start_worker(url: str, home: Path, workdir: Path, *extra: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.pipelines.jobworker", url, str(home), str(workdir),
         *extra], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def finish(proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    _, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err.decode()[-2000:]


def counting_kind(calls: list[str], *, on: dict[str, Callable[[StepContext], Any]] | None = None,
                  name: str = "count") -> JobKind:
    def make(step: str) -> Callable[[StepContext], Any]:
        def run(ctx: StepContext) -> Any:
            calls.append(step)
            if on and step in on:
                return on[step](ctx)
            return {"step": step}
        return run
    return JobKind(name, tuple(Step(s, make(s)) for s in ("a", "b", "c")))


# -- (1) SIGKILL during step 2 ----------------------------------------------------------------

def test_a_runner_killed_in_step_two_is_resumed_there_by_another_process(
    settings: Settings, tmp_path: Path, store: JobStore,
) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    url = settings.database_url_value
    job, created = store.submit(jobworker.KIND, "churn", {"reason": "drift"},
                                ["one", "two", "three"], actor="test")
    assert created

    first = start_worker(url, settings.home, workdir, "--lease", "1", "--block",
                         "--owner", "first")
    second = None
    try:
        wait_for(lambda: (workdir / "blocked").exists() or first.poll() is not None,
                 "the first runner to block in step two")
        assert first.poll() is None, first.stderr.read().decode() if first.stderr else ""
        second = start_worker(url, settings.home, workdir, "--lease", "1", "--owner", "second")
        # While the first runner lives, its heartbeat keeps the job: the second one, polling
        # all along, claims nothing (seen over three renewals after it went idle).
        wait_for(lambda: (workdir / "idle-second").exists(), "the second runner to poll")
        for _ in range(3):
            seen = store.get(job.id).lease_expires_at

            def renewed(seen: datetime | None = seen) -> bool:
                return store.get(job.id).lease_expires_at != seen

            wait_for(renewed, "a lease renewal")
        held = store.get(job.id)
        assert held.state is JobState.RUNNING
        assert held.lease_owner == "first" and held.attempt == 1
        assert [s.state for s in held.steps] == [StepState.SUCCEEDED, StepState.RUNNING,
                                                 StepState.PENDING]
        assert held.steps[1].progress == {"half": True}
        assert effects(workdir)[f"two-start {job.id}"] == 1
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        # The second runner takes over once the dead runner's lease lapses.
        finish(second)
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()

    done = store.get(job.id)
    assert done.state is JobState.SUCCEEDED, done.error
    assert done.attempt == 2
    assert [s.attempts for s in done.steps] == [1, 2, 1]
    assert done.steps[1].result == {"used": 10}
    assert done.steps[1].runner == "second" and done.steps[0].runner == "first"
    assert done.steps[1].progress == {"half": True}
    count = effects(workdir)
    assert count[f"one {job.id}"] == 1          # step one was never re-run
    assert count[f"two-start {job.id}"] == 2    # step two was re-run after the crash ...
    assert count[f"two {job.id}"] == 1          # ... and finished once
    assert count[f"three {job.id}"] == 1
    lines = (workdir / "effects.log").read_text().splitlines()
    rerun = [line for line in lines if line.startswith(f"two-start {job.id} attempt=2")]
    # The re-run knew it was one, and read back what the killed attempt had noted.
    assert rerun == [f"two-start {job.id} attempt=2 previous=1 noted=True"]


# -- (2), (3) two runner processes, several jobs, each step once ----------------------------

def _two_runners_run_each_step_once(url: str, home: Path, workdir: Path,
                                    store: JobStore) -> None:
    workdir.mkdir()
    ids = [store.submit(jobworker.KIND, f"ep{i}", {"i": i}, ["one", "two", "three"],
                        actor="test")[0].id for i in range(6)]
    workers = [start_worker(url, home, workdir, "--lease", "2", "--pause", "0.05",
                            "--owner", f"runner-{n}") for n in range(2)]
    for proc in workers:
        finish(proc)
    count = effects(workdir)
    for job_id in ids:
        job = store.get(job_id)
        assert job.state is JobState.SUCCEEDED, job.error
        assert job.attempt == 1
        assert [s.attempts for s in job.steps] == [1, 1, 1]
        for step in ("one", "two-start", "two", "three"):
            assert count[f"{step} {job_id}"] == 1, (step, job_id, count)
    assert sum(count.values()) == 4 * len(ids)


def test_two_runner_processes_on_postgresql_run_each_step_once(
    pg_url: str, tmp_path: Path,
) -> None:
    reg = Registry.from_settings(Settings(home=tmp_path / "home", database_url=pg_url))
    try:
        _two_runners_run_each_step_once(pg_url, tmp_path / "home", tmp_path / "work",
                                        JobStore(reg.store))
    finally:
        reg.close()


def test_two_runner_processes_on_sqlite_run_each_step_once(
    settings: Settings, tmp_path: Path, store: JobStore,
) -> None:
    _two_runners_run_each_step_once(settings.database_url_value, settings.home,
                                    tmp_path / "work", store)


def test_a_runner_whose_job_was_taken_over_can_write_nothing_more(store: JobStore) -> None:
    job, _ = store.submit("count", "churn", {}, ["a", "b", "c"], actor="test")
    claimed = store.claim("slow", ["count"], timedelta(seconds=-1))  # expired at once
    assert claimed is not None and claimed.attempt == 1
    slow = Fence(job.id, "slow", 1)
    store.start_step(slow, 0, timedelta(seconds=-1))
    taken = store.claim("fast", ["count"], timedelta(seconds=60))
    assert taken is not None and taken.lease_owner == "fast" and taken.attempt == 2
    for write in (lambda: store.finish_step(slow, 0, StepState.SUCCEEDED, result=1),
                  lambda: store.note_step(slow, 0, {"x": 1}),
                  lambda: store.renew(slow, timedelta(seconds=60)),
                  lambda: store.finish_job(slow, JobState.SUCCEEDED)):
        with pytest.raises(LeaseLost):
            write()
    after = store.get(job.id)
    assert after.state is JobState.RUNNING and after.lease_owner == "fast"
    assert after.steps[0].state is StepState.RUNNING and after.steps[0].progress is None
    # A live lease is not claimed by anyone else.
    assert store.claim("third", ["count"], timedelta(seconds=60)) is None


# -- (4) one job per endpoint -----------------------------------------------------------------

def test_one_active_job_per_endpoint_and_the_database_enforces_it(
    db_registry: Registry,
) -> None:
    registry = db_registry
    store = JobStore(registry.store)
    calls: list[str] = []
    runner = JobRunner(store, [counting_kind(calls)], owner="r1", lease_seconds=30)
    first, created = runner.submit("count", "churn", {"why": "drift"}, actor="test")
    again, created_again = runner.submit("count", "churn", {"why": "drift again"}, actor="t")
    assert created and not created_again and again.id == first.id
    other, other_created = runner.submit("count", "fraud", {}, actor="test")
    assert other_created and other.id != first.id

    # Racing submits from threads: one job.
    results: list[Job] = []
    threads = [threading.Thread(target=lambda: results.append(
        runner.submit("count", "race", {}, actor="t")[0])) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({job.id for job in results}) == 1

    # Past the code, the partial unique index refuses a second active job ...
    now = first.created_at
    row = {"kind": "count", "endpoint": "churn", "request": {}, "plan": [], "created_by": "x",
           "created_at": now, "updated_at": now, "attempt": 0, "cancel_requested": False}
    with pytest.raises(ConflictError), registry.store.db.write() as conn:
        conn.execute(insert(jobs_table).values(id="b" * 32, state="running", **row))
    # ... but not a finished one.
    with registry.store.db.write() as conn:
        conn.execute(insert(jobs_table).values(id="c" * 32, state="succeeded", **row))

    # Once the job ends, the endpoint takes a new one.
    while runner.run_once() is not None:
        pass
    assert store.get(first.id).state is JobState.SUCCEEDED
    newer, created_newer = runner.submit("count", "churn", {}, actor="test")
    assert created_newer and newer.id != first.id


# -- (5) cancel --------------------------------------------------------------------------------

def test_cancel_a_queued_job_and_a_running_one_between_steps(db_registry: Registry) -> None:
    store = JobStore(db_registry.store)
    calls: list[str] = []

    def cancel_self(ctx: StepContext) -> Any:
        store.cancel(ctx.job.id, actor="test")
        return "cancel asked"

    runner = JobRunner(store, [counting_kind(calls, on={"a": cancel_self})], owner="r1")
    queued, _ = runner.submit("count", "queued", {}, actor="test")
    cancelled = store.cancel(queued.id, actor="test")
    assert cancelled.state is JobState.CANCELLED
    assert {s.state for s in cancelled.steps} == {StepState.CANCELLED}
    assert runner.run_once() is None and calls == []

    running, _ = runner.submit("count", "running", {}, actor="test")
    ended = runner.run_once()
    assert ended is not None and ended.id == running.id
    assert ended.state is JobState.CANCELLED
    assert calls == ["a"]  # b and c never ran
    assert [s.state for s in ended.steps] == [StepState.SUCCEEDED, StepState.CANCELLED,
                                              StepState.CANCELLED]
    with pytest.raises(ConflictError, match="cancelled; it cannot become cancelled"):
        store.cancel(running.id, actor="test")
    with pytest.raises(NotFoundError):
        store.cancel("nope", actor="test")


def test_a_long_step_stops_at_its_check_when_cancelled(store: JobStore) -> None:
    calls: list[str] = []

    def long_step(ctx: StepContext) -> Any:
        store.cancel(ctx.job.id, actor="test")
        wait_for(ctx.cancel_requested.is_set, "the heartbeat to see the cancel")
        ctx.check()
        return "not reached"

    runner = JobRunner(store, [counting_kind(calls, on={"b": long_step})], owner="r1",
                       lease_seconds=0.3)
    runner.submit("count", "churn", {}, actor="test")
    ended = runner.run_once()
    assert ended is not None and ended.state is JobState.CANCELLED
    assert [s.state for s in ended.steps] == [StepState.SUCCEEDED, StepState.CANCELLED,
                                              StepState.CANCELLED]
    assert calls == ["a", "b"]


def test_on_cancel_undoes_a_step_cancelled_mid_way_before_it_started_or_while_waiting(
        store: JobStore) -> None:
    """Each path a cancel can take ends the job ``cancelled`` through the step's on_cancel,
    its result kept on the cancelled step; a failing undo still cancels, with the error."""
    from mlharbor.pipelines.jobs import AwaitApproval

    undone: list[tuple[str, str]] = []

    def undo(ctx: StepContext) -> Any:
        undone.append((ctx.job.id, ctx.step.name))
        if ctx.job.request.get("undo_fails"):
            raise ConflictError("someone else moved it")
        return {"undone": ctx.step.name}

    def hold(ctx: StepContext) -> Any:
        if ctx.job.request.get("cancel_in") == ctx.step.name:
            store.cancel(ctx.job.id, actor="test")
            wait_for(ctx.cancel_requested.is_set, "the heartbeat to see the cancel")
            ctx.check()
        if ctx.job.request.get("wait_in") == ctx.step.name and ctx.approval is None:
            raise AwaitApproval("a human decides")
        return "held"

    kind = JobKind("undoable", (Step("a", hold, on_cancel=undo), Step("b", hold, on_cancel=undo)))
    runner = JobRunner(store, [kind], owner="r1", lease_seconds=0.3)

    mid, _ = runner.submit("undoable", "mid", {"cancel_in": "b"}, actor="test")
    ended = runner.run_once()
    assert ended is not None and ended.state is JobState.CANCELLED and ended.error is None
    assert [s.state for s in ended.steps] == [StepState.SUCCEEDED, StepState.CANCELLED]
    assert ended.steps[1].result == {"undone": "b"} and undone[-1] == (mid.id, "b")

    waiting, _ = runner.submit("undoable", "waits", {"wait_in": "a"}, actor="test")
    assert runner.run_once().state is JobState.WAITING  # type: ignore[union-attr]
    asked = store.cancel(waiting.id, actor="test")
    assert asked.state is JobState.QUEUED and asked.cancel_requested  # a runner ends it
    ended = runner.run_once()
    assert ended is not None and ended.state is JobState.CANCELLED
    assert ended.steps[0].result == {"undone": "a"} and ended.steps[0].attempts == 2
    assert ended.steps[1].state is StepState.CANCELLED and ended.steps[1].attempts == 0

    failing, _ = runner.submit("undoable", "fails", {"cancel_in": "a", "undo_fails": True},
                               actor="test")
    ended = runner.run_once()
    assert ended is not None and ended.state is JobState.CANCELLED
    assert "undoing step 'a' failed: someone else moved it" in (ended.error or "")
    assert ended.steps[0].error == ended.error and ended.steps[0].result is None
    assert [j for j, _ in undone] == [mid.id, waiting.id, failing.id]


# -- states, failures, definitions -------------------------------------------------------------

def test_the_state_machines_refuse_illegal_moves() -> None:
    check_job_transition(JobState.QUEUED, JobState.RUNNING, job_id="j")
    for current, new in ((JobState.SUCCEEDED, JobState.RUNNING),
                         (JobState.QUEUED, JobState.SUCCEEDED),
                         (JobState.FAILED, JobState.CANCELLED)):
        with pytest.raises(ConflictError):
            check_job_transition(current, new, job_id="j")
    with pytest.raises(ConflictError):
        check_step_transition(StepState.SUCCEEDED, StepState.RUNNING, step="s")
    with pytest.raises(ConflictError):
        check_step_transition(StepState.PENDING, StepState.SUCCEEDED, step="s")


def test_a_failing_step_fails_the_job_and_later_steps_do_not_run(store: JobStore) -> None:
    calls: list[str] = []

    def boom(ctx: StepContext) -> Any:
        raise ValueError("no data in the window")

    runner = JobRunner(store, [counting_kind(calls, on={"b": boom})], owner="r1")
    job, _ = runner.submit("count", "churn", {}, actor="test")
    ended = runner.run_once()
    assert ended is not None and ended.state is JobState.FAILED
    assert ended.error is not None and "no data in the window" in ended.error
    assert [s.state for s in ended.steps] == [StepState.SUCCEEDED, StepState.FAILED,
                                              StepState.CANCELLED]
    assert calls == ["a", "b"]
    assert store.get(job.id).lease_owner is None


def test_a_step_not_safe_to_rerun_fails_cleanly_after_a_crash(store: JobStore) -> None:
    job, _ = store.submit("once", "churn", {}, ["a", "b"], actor="test")
    # A runner claims it, starts step a and dies (its lease lapses at once).
    assert store.claim("dead", ["once"], timedelta(seconds=-1)) is not None
    store.start_step(Fence(job.id, "dead", 1), 0, timedelta(seconds=-1))
    ran: list[str] = []
    kind = JobKind("once", (Step("a", lambda ctx: ran.append("a"), rerun_after_crash=False),
                            Step("b", lambda ctx: ran.append("b"))))
    ended = JobRunner(store, [kind], owner="r2").run_once()
    assert ended is not None and ended.state is JobState.FAILED
    assert ended.error is not None and "not safe to re-run" in ended.error
    assert ran == []


def test_bad_definitions_and_requests_are_refused(store: JobStore) -> None:
    with pytest.raises(InvalidInputError, match="repeats"):
        JobKind("k", (Step("a", lambda ctx: 1), Step("a", lambda ctx: 2)))
    with pytest.raises(InvalidInputError):
        JobKind("k", ())
    runner = JobRunner(store, [counting_kind([])], owner="r1")
    with pytest.raises(InvalidInputError, match="Unknown job kind"):
        runner.submit("nope", "churn", {}, actor="test")
    with pytest.raises(InvalidInputError, match="not JSON"):
        runner.submit("count", "churn", {"when": object()}, actor="test")
    with pytest.raises(InvalidInputError):
        runner.submit("count", "../etc", {}, actor="test")
    assert store.list_jobs() == []


# -- (6) the CLI ---------------------------------------------------------------------------------

def test_cli_lists_shows_and_cancels_and_answers_bad_input_with_one_line(
    settings: Settings, store: JobStore,
) -> None:
    env = cli_env(settings)
    job, _ = store.submit("count", "churn", {"why": "drift"}, ["a", "b"], actor="test")

    listed = run_cli("jobs", "list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    assert job.id in listed.stdout and '"queued"' in listed.stdout
    shown = run_cli("jobs", "show", job.id, env=env)
    assert shown.returncode == 0 and "churn" in shown.stdout and "pending" in shown.stdout
    cancelled = run_cli("jobs", "cancel", job.id, env=env)
    assert cancelled.returncode == 0 and "cancelled" in cancelled.stdout
    assert store.get(job.id).state is JobState.CANCELLED

    for args, code in ((("jobs", "show", "0" * 32), 3), (("jobs", "cancel", "nope"), 3),
                       (("jobs", "list", "--state", "bogus"), 2),
                       (("jobs", "cancel", job.id), 4)):
        result = run_cli(*args, env=env)
        assert result.returncode == code, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr


def test_a_job_whose_runners_keep_dying_is_abandoned_not_retried_forever(
    store: JobStore,
) -> None:
    calls: list[str] = []
    job, _ = store.submit("count", "churn", {}, ["a", "b", "c"], actor="test")
    for n in range(3):  # three runners claim it and die before finishing a step
        claimed = store.claim(f"dead-{n}", ["count"], timedelta(seconds=-1))
        assert claimed is not None and claimed.attempt == n + 1
        store.start_step(Fence(job.id, f"dead-{n}", n + 1), 0, timedelta(seconds=-1))
    ended = JobRunner(store, [counting_kind(calls)], owner="r", max_attempts=3).run_once()
    assert ended is not None and ended.state is JobState.FAILED
    assert ended.error is not None and "Abandoned" in ended.error
    assert calls == []


def test_submit_cancel_and_the_end_of_a_job_are_audited(
    store: JobStore, registry: Registry,
) -> None:
    from mlharbor.registry.audit import iter_events, verify_chain

    runner = JobRunner(store, [counting_kind([])], owner="runner-1")
    done, _ = runner.submit("count", "churn", {}, actor="alice")
    runner.run_once()
    cancelled, _ = runner.submit("count", "fraud", {}, actor="bob")
    store.cancel(cancelled.id, actor="carol")
    with registry.store.db.read() as conn:
        chain = list(iter_events(conn))
    assert verify_chain(chain).ok
    events = [(e.actor, e.action, e.resource, e.outcome) for e in chain]
    assert events == [
        ("alice", "job.submit", f"job:{done.id}", "success"),
        ("runner-1", "job.succeeded", f"job:{done.id}", "success"),
        ("bob", "job.submit", f"job:{cancelled.id}", "success"),
        ("carol", "job.cancel", f"job:{cancelled.id}", "success"),
    ]
