"""Durable jobs: ordered, named steps kept in the metadata store, run by exactly one runner.

A job is a kind (a name and an ordered tuple of :class:`Step`) applied to one endpoint with a
JSON request (a :class:`~mlharbor.core.loop.RetrainRequest`, say). Its rows (``jobs``,
``job_steps`` in :mod:`mlharbor.registry.schema`, migration ``0005``) are the only truth, so
any process sharing the database can show, cancel or resume it.

**States** are data, written once in :data:`JOB_TRANSITIONS` and :data:`STEP_TRANSITIONS`::

    job:  queued -> running -> succeeded | failed | cancelled      (queued -> cancelled too)
          running -> waiting -> queued (approved) | failed (rejected) | cancelled
    step: pending -> running -> succeeded | failed | cancelled     (running -> running: re-run)
          running -> waiting -> running (approved) | failed (rejected) | cancelled

Any other move raises :class:`~mlharbor.core.errors.ConflictError`.

**One job per endpoint.** A second :meth:`JobStore.submit` for an endpoint that has a queued or
running job returns that job (``created=False``), whatever its kind: a persisting alarm starts
one job, not one per window. The database enforces it (partial unique index
``uq_jobs_active_endpoint``); the code only reads first to answer nicely.

**Exactly one runner.** A runner claims a job by compare-and-set on its lease (``UPDATE ...
WHERE lease free or expired AND attempt = seen``), which bumps ``attempt``. Every later write
of that runner is fenced on ``(lease_owner, attempt)``: once another runner has claimed the job,
the old one's writes change nothing and it stops (:class:`LeaseLost`). A heartbeat thread
renews the lease while a step runs. Lease times come from each runner's clock, so servers
sharing a database need clocks synchronised well within the lease (NTP does it).

**Resuming.** A step's result is committed before the next step starts, so a runner that
claims a dead runner's job skips every succeeded step and starts at the first unfinished one.
The step that was running when its runner died is run again (or, for a step declared
``rerun_after_crash=False``, the job fails cleanly instead). Hence the contract for step
authors: **a step must be idempotent**. It may have done part or all of its effect before the
crash; :attr:`StepContext.previous_attempt` says whether this is such a re-run, and
:meth:`StepContext.note` commits what the step has done so far (``ctx.note(version=4)`` right
after registering) so the re-run can read it back from :attr:`StepContext.progress` and check
its earlier effect instead of repeating it. Effects between the action and the note must be
recognisable in the target system itself (tag a registered version with the job id).

**Cancel** marks the job. A job no runner has claimed yet (queued, attempt 0) has done
nothing and is cancelled at once. Any other job is ended by a runner, so its kind can undo what
it started: a running one by its runner between steps (a long step may call
:meth:`StepContext.check` to stop sooner), or by the runner that takes it over when its own
died; a waiting job (or one approved and queued again) is queued with the cancel asked, and the
next runner to claim it ends it. A step may declare ``on_cancel``: when the job is cancelled
while that step runs, or before it starts (the first unfinished step), the runner calls
``on_cancel(ctx)`` instead of (or after) ``run`` and stores what it returns on the cancelled
step; the rollout steps restore the endpoint and reject the challenger this way. If undoing
fails, the job still ends ``cancelled``, with the error on the step and the job.

**Waiting for a human.** A step that needs an approval raises :class:`AwaitApproval`: its
runner parks the job in ``waiting`` (step ``waiting`` too), releases the lease and moves on, so
no thread is held while someone decides, for minutes or days. :meth:`JobStore.approve` records
the approval (actor, reason, time) in the waiting step's progress and queues the job again;
the runner that claims it re-runs the step, which finds :attr:`StepContext.approval` and
succeeds. :meth:`JobStore.reject` ends the job ``failed`` with the rejection recorded on the
step. A waiting job still holds its endpoint (one job per endpoint). Both are audited
(``job.approve`` / ``job.reject``, with the reason) and refused, writing nothing, for a job
that is not waiting.

**A step that fails with a result.** A step that decided something and must end the job (a
rollout that rolled back) raises :class:`StepFailed` with that decision as ``result``: it is
stored on the failed step beside the error.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, and_, or_, select, update

from mlharbor.core.clock import utcnow
from mlharbor.core.errors import ConflictError, InvalidInputError, MlharborError, NotFoundError
from mlharbor.core.names import validate_name
from mlharbor.registry.schema import job_steps, jobs

if TYPE_CHECKING:
    from mlharbor.registry.store import MetadataStore

log = logging.getLogger(__name__)


class JobState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    WAITING = "waiting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class StepState(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    WAITING = "waiting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


#: The job state machine. ``running -> running`` is not a move: a re-claim keeps the state.
JOB_TRANSITIONS: Mapping[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.CANCELLED}),
    JobState.RUNNING: frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED,
                                 JobState.WAITING}),
    JobState.WAITING: frozenset({JobState.QUEUED, JobState.FAILED, JobState.CANCELLED}),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
}
#: The step state machine; ``running -> running`` is the re-run of a step whose runner died.
STEP_TRANSITIONS: Mapping[StepState, frozenset[StepState]] = {
    StepState.PENDING: frozenset({StepState.RUNNING, StepState.CANCELLED}),
    StepState.RUNNING: frozenset({StepState.RUNNING, StepState.SUCCEEDED, StepState.FAILED,
                                  StepState.CANCELLED, StepState.WAITING}),
    StepState.WAITING: frozenset({StepState.RUNNING, StepState.FAILED, StepState.CANCELLED}),
    StepState.SUCCEEDED: frozenset(),
    StepState.FAILED: frozenset(),
    StepState.CANCELLED: frozenset(),
}
#: States in which a job holds its endpoint (one such job per endpoint).
ACTIVE_STATES = (JobState.QUEUED, JobState.RUNNING, JobState.WAITING)
#: States a runner may claim a job in (a waiting job is queued again by its approval).
CLAIMABLE_STATES = (JobState.QUEUED, JobState.RUNNING)


def check_job_transition(current: JobState, new: JobState, *, job_id: str) -> None:
    """Raise :class:`ConflictError` unless ``current -> new`` is a move of the job machine."""
    if new not in JOB_TRANSITIONS[current]:
        raise ConflictError(f"Job {job_id} is {current.value}; it cannot become {new.value}.",
                            job_id=job_id, state=current.value, wanted=new.value)


def check_step_transition(current: StepState, new: StepState, *, step: str) -> None:
    """Raise :class:`ConflictError` unless ``current -> new`` is a move of the step machine."""
    if new not in STEP_TRANSITIONS[current]:
        raise ConflictError(f"Step {step!r} is {current.value}; it cannot become {new.value}.",
                            step=step, state=current.value, wanted=new.value)


def parse_job_state(value: str) -> JobState:
    """A state filter from a user: one of the job states, or a clear error naming them."""
    try:
        return JobState(value.strip().lower())
    except ValueError as exc:
        known = ", ".join(s.value for s in JobState)
        raise InvalidInputError(f"Unknown job state {value!r}; expected one of: {known}.",
                                field="state", expected=known, received=value) from exc


# -- records ----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, slots=True)
class StepView:
    """One step of a stored job, as last committed."""

    ordinal: int
    name: str
    state: StepState
    attempts: int
    runner: str | None
    started_at: datetime | None
    finished_at: datetime | None
    progress: dict[str, Any] | None
    result: Any
    error: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class Job:
    """A stored job with its steps in order."""

    id: str
    kind: str
    endpoint: str
    state: JobState
    request: dict[str, Any]
    plan: tuple[str, ...]
    created_by: str
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    lease_owner: str | None
    lease_expires_at: datetime | None
    attempt: int
    cancel_requested: bool
    error: str | None
    steps: tuple[StepView, ...]

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (datetimes as ISO strings) for the CLI and the API."""
        body: dict[str, Any] = json.loads(json.dumps(dataclasses.asdict(self), default=_iso))
        return body


@dataclasses.dataclass(frozen=True, slots=True)
class PreviousAttempt:
    """What a step's earlier, unfinished attempt left: who ran it, when, what it noted."""

    attempt: int
    runner: str | None
    started_at: datetime | None
    progress: dict[str, Any]


@dataclasses.dataclass(frozen=True, slots=True)
class Fence:
    """A runner's hold on a job: writes count only while ``(owner, attempt)`` still match."""

    job_id: str
    owner: str
    attempt: int


class LeaseLost(ConflictError):
    """Another runner has claimed the job: stop without writing anything more.

    A :class:`ConflictError`, so a fenced write inside an audited transaction rolls back.
    """


class CancelRequested(Exception):
    """Raised by :meth:`StepContext.check` when the job was cancelled while a step ran."""


class AwaitApproval(Exception):
    """Raised by a step that needs a human's approval before it can go on.

    The runner parks the job in ``waiting`` and releases it; ``mlharbor jobs approve`` queues it
    again and the step is re-run with :attr:`StepContext.approval` set.
    """


class StepFailed(Exception):
    """A step ends the job as failed, keeping ``result`` (a JSON-able decision) on the step."""

    def __init__(self, message: str, *, result: Any = None) -> None:
        super().__init__(message)
        self.result = result


@dataclasses.dataclass(frozen=True, slots=True)
class Approval:
    """A human's decision on a waiting job: who, why, when."""

    approved: bool
    actor: str
    reason: str
    at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {"approved": self.approved, "actor": self.actor, "reason": self.reason,
                "at": self.at.isoformat()}

    @classmethod
    def from_dict(cls, body: Mapping[str, Any]) -> Approval:
        return cls(bool(body["approved"]), str(body["actor"]), str(body.get("reason", "")),
                   datetime.fromisoformat(str(body["at"])))


# -- step definitions -------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, slots=True)
class Step:
    """A named step: ``run(ctx)`` does the work and returns a JSON-able result.

    ``rerun_after_crash=False`` declares a step that cannot check its own earlier effect; if
    its runner dies mid-way the job fails cleanly on restart instead of running it twice.
    ``on_cancel`` (optional) undoes what the job did when it is cancelled in or before this
    step; it must be idempotent too and must not call :meth:`StepContext.check`.
    """

    name: str
    run: Callable[[StepContext], Any]
    rerun_after_crash: bool = True
    #: Undoes the job's effects when it is cancelled in or before this step (see Cancel in
    #: the module docstring); returns a JSON-able result kept on the cancelled step.
    on_cancel: Callable[[StepContext], Any] | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class JobKind:
    """A kind of job: its name and its steps in order (names unique)."""

    name: str
    steps: tuple[Step, ...]

    def __post_init__(self) -> None:
        validate_name(self.name, kind="job kind")
        names = [step.name for step in self.steps]
        if not names:
            raise InvalidInputError(f"Job kind {self.name!r} has no steps.")
        for name in names:
            validate_name(name, kind="step name")
        if len(set(names)) != len(names):
            raise InvalidInputError(f"Job kind {self.name!r} repeats a step name: {names}.")

    @property
    def plan(self) -> tuple[str, ...]:
        return tuple(step.name for step in self.steps)


class StepContext:
    """What a running step sees: its job, earlier results, its own earlier attempt, the lease."""

    def __init__(
        self, store: JobStore, fence: Fence, job: Job, step: StepView, attempt: int,
        previous_attempt: PreviousAttempt | None, lease_lost: threading.Event,
        cancel_requested: threading.Event,
    ) -> None:
        self._store = store
        self._fence = fence
        self.job = job
        self.step = step
        self.attempt = attempt
        self.previous_attempt = previous_attempt
        self.lease_lost = lease_lost
        self.cancel_requested = cancel_requested
        self._progress = dict(previous_attempt.progress) if previous_attempt else {}

    @property
    def results(self) -> dict[str, Any]:
        """Results of the steps before this one, by step name."""
        return {s.name: s.result for s in self.job.steps[: self.step.ordinal]}

    @property
    def progress(self) -> dict[str, Any]:
        """Everything noted so far by this step, across attempts."""
        return dict(self._progress)

    @property
    def approval(self) -> Approval | None:
        """The approval recorded while this step waited (:class:`AwaitApproval`), if any."""
        body = self._progress.get(APPROVAL_KEY)
        return Approval.from_dict(body) if isinstance(body, Mapping) else None

    def note(self, **progress: Any) -> None:
        """Commit what this step has done so far, for an idempotent re-run to read back."""
        merged = {**self._progress, **progress}
        _check_json(merged, what=f"progress of step {self.step.name!r}")
        self._store.note_step(self._fence, self.step.ordinal, merged)
        self._progress = merged

    def check(self) -> None:
        """Raise if the runner lost the job or the job was cancelled; call it in long steps."""
        if self.lease_lost.is_set():
            raise LeaseLost(f"Job {self._fence.job_id} was taken over by another runner.")
        if self.cancel_requested.is_set():
            raise CancelRequested(self._fence.job_id)


APPROVAL_KEY = "approval"
MAX_REASON_CHARS = 2000


# -- the store --------------------------------------------------------------------------------

class JobStore:
    """Jobs and steps in the metadata database; every change is one transaction."""

    def __init__(self, store: MetadataStore) -> None:
        self.meta = store
        self.db = store.db

    def submit(
        self, kind: str, endpoint: str, request: Mapping[str, Any], plan: Iterable[str], *,
        actor: str,
    ) -> tuple[Job, bool]:
        """Queue a job, or return the endpoint's active one (``created`` is then False)."""
        endpoint = validate_name(endpoint, kind="endpoint name")
        steps = tuple(plan)
        payload = dict(request)
        _check_json(payload, what="job request")
        for _ in range(3):
            existing = self._active_for(endpoint)
            if existing is not None:
                return existing, False
            job_id = uuid.uuid4().hex
            now = utcnow()

            def work(conn: Connection, job_id: str = job_id, now: datetime = now) -> tuple[
                    None, dict[str, Any]]:
                # The index holds queued and running jobs; a waiting one is checked here too,
                # inside the write transaction (and by the index from migration 0007).
                if conn.execute(select(jobs.c.id).where(
                        jobs.c.endpoint == endpoint,
                        jobs.c.state.in_([s.value for s in ACTIVE_STATES]))).first():
                    raise ConflictError(f"Endpoint {endpoint!r} already has an active job.")
                conn.execute(jobs.insert().values(
                    id=job_id, kind=kind, endpoint=endpoint, state=JobState.QUEUED.value,
                    request=payload, plan=list(steps), created_by=actor, created_at=now,
                    updated_at=now, attempt=0, cancel_requested=False))
                conn.execute(job_steps.insert(), [
                    {"job_id": job_id, "ordinal": i, "name": name,
                     "state": StepState.PENDING.value, "attempts": 0}
                    for i, name in enumerate(steps)])
                return None, {"kind": kind, "endpoint": endpoint, "steps": list(steps)}

            try:
                self.meta.mutate("job.submit", f"job:{job_id}", work, actor=actor)
            except ConflictError:
                continue  # another submit won the endpoint's unique index: return its job
            return self.get(job_id), True
        raise ConflictError(f"Endpoint {endpoint!r} keeps changing jobs; submit again.")

    def get(self, job_id: str) -> Job:
        with self.db.read() as conn:
            job = _load(conn, job_id)
        if job is None:
            raise NotFoundError(f"No job with id {job_id!r}.",
                                hint="List jobs with `mlharbor jobs list`.", job_id=job_id)
        return job

    def list_jobs(
        self, *, state: JobState | None = None, endpoint: str | None = None, limit: int = 100,
    ) -> list[Job]:
        """Newest first."""
        query = select(jobs.c.id).order_by(jobs.c.created_at.desc()).limit(limit)
        if state is not None:
            query = query.where(jobs.c.state == state.value)
        if endpoint is not None:
            query = query.where(jobs.c.endpoint == endpoint)
        with self.db.read() as conn:
            ids = [row.id for row in conn.execute(query)]
            return [job for job in (_load(conn, i) for i in ids) if job is not None]

    def cancel(self, job_id: str, *, actor: str, reason: str = "") -> Job:
        """Cancel a never-claimed queued job now; mark any other active job for a runner to
        end (a waiting one is queued again with the cancel asked): see Cancel above."""
        _check_reason(reason)
        current = self.get(job_id)
        if not current.active:
            check_job_transition(current.state, JobState.CANCELLED, job_id=job_id)

        def work(conn: Connection) -> tuple[None, dict[str, Any]]:
            now = utcnow()
            row = conn.execute(select(jobs.c.state, jobs.c.attempt)
                               .where(jobs.c.id == job_id)).first()
            state = JobState(row.state) if row else current.state
            claimed = int(row.attempt) > 0 if row else current.attempt > 0
            if state is JobState.QUEUED and not claimed:  # it has done nothing yet
                conn.execute(update(jobs).where(jobs.c.id == job_id).values(
                    state=JobState.CANCELLED.value, cancel_requested=True, updated_at=now,
                    finished_at=now))
                _cancel_open_steps(conn, job_id, now)
            elif state in (JobState.QUEUED, JobState.WAITING):
                # It has run: the next runner ends it, undoing through its steps' on_cancel.
                if state is JobState.WAITING:
                    check_job_transition(state, JobState.QUEUED, job_id=job_id)
                conn.execute(update(jobs).where(jobs.c.id == job_id).values(
                    state=JobState.QUEUED.value, cancel_requested=True, updated_at=now))
            elif state is JobState.RUNNING:
                conn.execute(update(jobs).where(jobs.c.id == job_id).values(
                    cancel_requested=True, updated_at=now))
            else:
                check_job_transition(state, JobState.CANCELLED, job_id=job_id)
            return None, {"state_before": state.value, **({"reason": reason} if reason else {})}

        self.meta.mutate("job.cancel", f"job:{job_id}", work, actor=actor)
        return self.get(job_id)

    def approve(self, job_id: str, *, actor: str, reason: str = "") -> Job:
        """Approve a waiting job: record who and why on its waiting step, queue it again."""
        return self._decide(job_id, approved=True, actor=actor, reason=reason)

    def reject(self, job_id: str, *, actor: str, reason: str = "") -> Job:
        """Reject a waiting job: it ends ``failed``, the rejection recorded on its step."""
        return self._decide(job_id, approved=False, actor=actor, reason=reason)

    def _decide(self, job_id: str, *, approved: bool, actor: str, reason: str) -> Job:
        _check_reason(reason)
        current = self.get(job_id)  # NotFoundError for an unknown id, before any write
        target = JobState.QUEUED if approved else JobState.FAILED
        if current.state is not JobState.WAITING:
            raise ConflictError(
                f"Job {job_id} is {current.state.value}, not waiting for an approval; "
                "nothing was changed.", job_id=job_id, state=current.state.value)
        verb = "approved" if approved else "rejected"

        def work(conn: Connection) -> tuple[None, dict[str, Any]]:
            now = utcnow()
            row = conn.execute(select(jobs.c.state).where(jobs.c.id == job_id)).one()
            if JobState(row.state) is not JobState.WAITING:  # decided meanwhile
                raise ConflictError(f"Job {job_id} is {row.state}, not waiting for an "
                                    "approval; nothing was changed.", job_id=job_id)
            check_job_transition(JobState.WAITING, target, job_id=job_id)
            step = conn.execute(select(job_steps).where(
                job_steps.c.job_id == job_id,
                job_steps.c.state == StepState.WAITING.value)).one()
            record = Approval(approved, actor, reason, now).to_dict()
            step_values: dict[str, Any] = {
                "progress": {**dict(step.progress or {}), APPROVAL_KEY: record}}
            job_values: dict[str, Any] = {"state": target.value, "updated_at": now}
            if not approved:
                check_step_transition(StepState.WAITING, StepState.FAILED, step=step.name)
                error = f"Rejected by {actor}" + (f": {reason}" if reason else ".")
                step_values.update(state=StepState.FAILED.value, finished_at=now,
                                   error=error, result={APPROVAL_KEY: record})
                job_values.update(error=error, finished_at=now)
            conn.execute(update(job_steps).where(
                job_steps.c.job_id == job_id, job_steps.c.ordinal == step.ordinal,
            ).values(**step_values))
            conn.execute(update(jobs).where(jobs.c.id == job_id).values(**job_values))
            if not approved:
                _cancel_open_steps(conn, job_id, now)
            return None, {"step": step.name, "reason": reason, "state": target.value}

        self.meta.mutate(f"job.{'approve' if approved else 'reject'}", f"job:{job_id}", work,
                         actor=actor)
        log.info("job %s %s by %s", job_id, verb, actor)
        return self.get(job_id)

    # -- used by the runner; every write after the claim is fenced ---------------------------

    def claim(self, owner: str, kinds: Iterable[str], lease: timedelta) -> Job | None:
        """Take the oldest active job of ``kinds`` whose lease is free or expired, or None."""
        now = utcnow()
        free = or_(jobs.c.lease_owner.is_(None), jobs.c.lease_expires_at < now)
        active = jobs.c.state.in_([s.value for s in CLAIMABLE_STATES])
        with self.db.write() as conn:
            rows = conn.execute(
                select(jobs.c.id, jobs.c.state, jobs.c.attempt)
                .where(jobs.c.kind.in_(list(kinds)), active, free)
                .order_by(jobs.c.created_at).limit(20)).all()
            for row in rows:
                if JobState(row.state) is JobState.QUEUED:
                    check_job_transition(JobState.QUEUED, JobState.RUNNING, job_id=row.id)
                # Compare-and-set: only if nobody claimed it since we looked.
                done = conn.execute(update(jobs).where(
                    jobs.c.id == row.id, jobs.c.attempt == row.attempt, active, free,
                ).values(state=JobState.RUNNING.value, lease_owner=owner,
                         lease_expires_at=now + lease, attempt=row.attempt + 1, updated_at=now))
                if done.rowcount == 1:
                    return _load(conn, row.id)
        return None

    def renew(self, fence: Fence, lease: timedelta) -> bool:
        """Extend the lease; returns whether the job has been asked to cancel."""
        with self.db.write() as conn:
            _hold(conn, fence, lease)
            row = conn.execute(select(jobs.c.cancel_requested)
                               .where(jobs.c.id == fence.job_id)).one()
            return bool(row.cancel_requested)

    def start_step(self, fence: Fence, ordinal: int, lease: timedelta) -> tuple[
            Job, int, PreviousAttempt | None]:
        """Mark step ``ordinal`` running (again); the job as now stored, the attempt, the last."""
        with self.db.write() as conn:
            _hold(conn, fence, lease)
            step = conn.execute(select(job_steps).where(
                job_steps.c.job_id == fence.job_id, job_steps.c.ordinal == ordinal)).one()
            state = StepState(step.state)
            check_step_transition(state, StepState.RUNNING, step=step.name)
            previous = None
            if state in (StepState.RUNNING, StepState.WAITING):
                previous = PreviousAttempt(step.attempts, step.runner, _utc(step.started_at),
                                           dict(step.progress or {}))
            attempt = int(step.attempts) + 1
            conn.execute(update(job_steps).where(
                job_steps.c.job_id == fence.job_id, job_steps.c.ordinal == ordinal,
            ).values(state=StepState.RUNNING.value, attempts=attempt, runner=fence.owner,
                     started_at=utcnow(), error=None))
            job = _load(conn, fence.job_id)
            assert job is not None
            return job, attempt, previous

    def note_step(self, fence: Fence, ordinal: int, progress: dict[str, Any]) -> None:
        with self.db.write() as conn:
            _hold(conn, fence, None)
            conn.execute(update(job_steps).where(
                job_steps.c.job_id == fence.job_id, job_steps.c.ordinal == ordinal,
                job_steps.c.state == StepState.RUNNING.value).values(progress=progress))

    def finish_step(self, fence: Fence, ordinal: int, state: StepState, *, result: Any = None,
                    error: str | None = None) -> None:
        with self.db.write() as conn:
            _hold(conn, fence, None)
            row = conn.execute(select(job_steps.c.state, job_steps.c.name).where(
                job_steps.c.job_id == fence.job_id, job_steps.c.ordinal == ordinal)).one()
            check_step_transition(StepState(row.state), state, step=row.name)
            conn.execute(update(job_steps).where(
                job_steps.c.job_id == fence.job_id, job_steps.c.ordinal == ordinal,
            ).values(state=state.value, result=result, error=error, finished_at=utcnow()))

    def park(self, fence: Fence, ordinal: int, message: str) -> None:
        """Step ``ordinal`` waits for an approval: job and step ``waiting``, lease released."""

        def work(conn: Connection) -> tuple[None, dict[str, Any]]:
            _hold(conn, fence, None)
            row = conn.execute(select(job_steps.c.state, job_steps.c.name).where(
                job_steps.c.job_id == fence.job_id, job_steps.c.ordinal == ordinal)).one()
            check_step_transition(StepState(row.state), StepState.WAITING, step=row.name)
            check_job_transition(JobState.RUNNING, JobState.WAITING, job_id=fence.job_id)
            now = utcnow()
            conn.execute(update(job_steps).where(
                job_steps.c.job_id == fence.job_id, job_steps.c.ordinal == ordinal,
            ).values(state=StepState.WAITING.value, error=None))
            conn.execute(update(jobs).where(jobs.c.id == fence.job_id).values(
                state=JobState.WAITING.value, updated_at=now, lease_owner=None,
                lease_expires_at=None))
            return None, {"step": row.name, "message": message, "attempt": fence.attempt}

        self.meta.mutate("job.waiting", f"job:{fence.job_id}", work, actor=fence.owner)

    def finish_job(self, fence: Fence, state: JobState, *, error: str | None = None) -> None:
        """End the job (audited); open steps become cancelled; the lease is released."""

        def work(conn: Connection) -> tuple[None, dict[str, Any]]:
            _hold(conn, fence, None)
            check_job_transition(JobState.RUNNING, state, job_id=fence.job_id)
            now = utcnow()
            conn.execute(update(jobs).where(jobs.c.id == fence.job_id).values(
                state=state.value, error=error, finished_at=now, updated_at=now,
                lease_owner=None, lease_expires_at=None))
            _cancel_open_steps(conn, fence.job_id, now)
            return None, {"state": state.value, "attempt": fence.attempt,
                          **({"error": error} if error else {})}

        self.meta.mutate(f"job.{state.value}", f"job:{fence.job_id}", work, actor=fence.owner)

    def _active_for(self, endpoint: str) -> Job | None:
        with self.db.read() as conn:
            row = conn.execute(select(jobs.c.id).where(
                jobs.c.endpoint == endpoint,
                jobs.c.state.in_([s.value for s in ACTIVE_STATES]))).first()
            return _load(conn, row.id) if row else None


def _check_reason(reason: Any) -> None:
    if not isinstance(reason, str) or len(reason) > MAX_REASON_CHARS:
        raise InvalidInputError(f"The reason must be text of at most {MAX_REASON_CHARS} "
                                "characters.", field="reason")


def _hold(conn: Connection, fence: Fence, lease: timedelta | None) -> None:
    """Check the fence inside ``conn``'s transaction (and extend the lease); else LeaseLost."""
    now = utcnow()
    values: dict[str, Any] = {"updated_at": now}
    if lease is not None:
        values["lease_expires_at"] = now + lease
    done = conn.execute(update(jobs).where(and_(
        jobs.c.id == fence.job_id, jobs.c.lease_owner == fence.owner,
        jobs.c.attempt == fence.attempt, jobs.c.state == JobState.RUNNING.value,
    )).values(**values))
    if done.rowcount != 1:
        raise LeaseLost(f"Job {fence.job_id} is no longer held by {fence.owner} "
                              f"(attempt {fence.attempt}).")


def _cancel_open_steps(conn: Connection, job_id: str, now: datetime) -> None:
    conn.execute(update(job_steps).where(
        job_steps.c.job_id == job_id,
        job_steps.c.state.in_([StepState.PENDING.value, StepState.RUNNING.value,
                               StepState.WAITING.value]),
    ).values(state=StepState.CANCELLED.value, finished_at=now))


def _load(conn: Connection, job_id: str) -> Job | None:
    row = conn.execute(select(jobs).where(jobs.c.id == job_id)).first()
    if row is None:
        return None
    steps = conn.execute(select(job_steps).where(job_steps.c.job_id == job_id)
                         .order_by(job_steps.c.ordinal)).all()
    return Job(
        id=row.id, kind=row.kind, endpoint=row.endpoint, state=JobState(row.state),
        request=dict(row.request), plan=tuple(row.plan), created_by=row.created_by,
        created_at=_utc_req(row.created_at), updated_at=_utc_req(row.updated_at),
        finished_at=_utc(row.finished_at), lease_owner=row.lease_owner,
        lease_expires_at=_utc(row.lease_expires_at), attempt=int(row.attempt),
        cancel_requested=bool(row.cancel_requested), error=row.error,
        steps=tuple(StepView(
            ordinal=int(s.ordinal), name=s.name, state=StepState(s.state),
            attempts=int(s.attempts), runner=s.runner, started_at=_utc(s.started_at),
            finished_at=_utc(s.finished_at), progress=s.progress, result=s.result,
            error=s.error) for s in steps))


def _utc(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; everything is stored in UTC.
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _utc_req(value: datetime) -> datetime:
    result = _utc(value)
    assert result is not None
    return result


def _iso(value: object) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)


def _check_json(value: Any, *, what: str) -> None:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"The {what} is not JSON ({exc}).",
                                hint="Return numbers, strings, lists and dicts only.") from exc


# -- the runner -------------------------------------------------------------------------------

def default_owner() -> str:
    """A name for this runner unique across hosts and processes: host, pid and a nonce."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


#: Builds the kind of one job from the job itself (its request names what it runs under).
KindFactory = Callable[[Job], JobKind]
#: Told what became of a job this runner ran: ``(job as stored, event)`` with event
#: ``started`` (first claim), ``waiting``, ``succeeded``, ``failed`` or ``cancelled``.
JobHook = Callable[[Job, str], Any]


class JobRunner:
    """Claims jobs of the kinds it knows and runs their steps, one job at a time.

    ``kinds`` have fixed steps. ``kind_for`` maps a kind name to a :data:`KindFactory` for
    kinds whose steps depend on the job (a retrain's rollout follows the policy revision named
    in its request): the runner builds the kind from the job when it claims it, so a policy
    changed mid-job does not change the job's steps. ``on_event`` hears each job this runner
    started, parked or ended, exactly once (the runner holding the lease tells), for
    notifications; a failing hook is logged and never stops the runner.
    """

    def __init__(
        self, store: JobStore, kinds: Iterable[JobKind], *, owner: str | None = None,
        lease_seconds: float = 30.0, poll_seconds: float = 1.0, max_attempts: int = 3,
        kind_for: Mapping[str, KindFactory] | None = None, on_event: JobHook | None = None,
    ) -> None:
        if lease_seconds <= 0 or poll_seconds <= 0 or max_attempts < 1:
            raise InvalidInputError("lease_seconds and poll_seconds must be positive and "
                                    "max_attempts at least 1.")
        self.store = store
        self.kinds = {kind.name: kind for kind in kinds}
        self.kind_for = dict(kind_for or {})
        clash = set(self.kinds) & set(self.kind_for)
        if clash:
            raise InvalidInputError(f"Job kinds {sorted(clash)} are given twice (as kinds and "
                                    "as factories).")
        self.on_event = on_event
        self.owner = owner or default_owner()
        self.lease = timedelta(seconds=lease_seconds)
        self.poll_seconds = poll_seconds
        self.max_attempts = max_attempts
        self._lost: threading.Event | None = None

    def abandon(self) -> None:
        """Give up the job now running (a server stopping): its step stops at its next
        :meth:`StepContext.check` without writing anything more, as if the lease were lost,
        and another runner resumes the job once the lease expires."""
        lost = self._lost
        if lost is not None:
            lost.set()

    @property
    def kind_names(self) -> tuple[str, ...]:
        """Every kind this runner claims jobs of."""
        return tuple(sorted({*self.kinds, *self.kind_for}))

    def submit(self, kind: str, endpoint: str, request: Mapping[str, Any], *,
               actor: str, plan: Iterable[str] | None = None) -> tuple[Job, bool]:
        """Queue a job of a known kind (or get the endpoint's active job, ``created=False``).

        A kind built per job (``kind_for``) needs its ``plan`` (the step names the factory
        will build for this request); a fixed kind's plan is its own.
        """
        if kind in self.kind_for:
            if plan is None:
                raise InvalidInputError(f"Job kind {kind!r} is built per job; give its plan.")
            return self.store.submit(kind, endpoint, request, plan, actor=actor)
        if kind not in self.kinds:
            known = ", ".join(self.kind_names) or "none"
            raise InvalidInputError(f"Unknown job kind {kind!r}; this runner knows: {known}.")
        return self.store.submit(kind, endpoint, request, self.kinds[kind].plan, actor=actor)

    def run_once(self) -> Job | None:
        """Claim one job and run it until it ends or this runner loses it; None if idle."""
        job = self.store.claim(self.owner, self.kind_names, self.lease)
        if job is None:
            return None
        if job.attempt == 1:
            self._tell(job, "started")
        try:
            self._execute(job, Fence(job.id, self.owner, job.attempt))
        except LeaseLost:
            log.warning("job %s: lease lost by %s; another runner has it", job.id, self.owner)
            return self.store.get(job.id)
        done = self.store.get(job.id)
        if done.state is not JobState.RUNNING:
            self._tell(done, done.state.value)
        return done

    def _tell(self, job: Job, event: str) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(job, event)
        except Exception:  # a notification outage never stops the runner
            log.exception("job %s: the %s hook failed", job.id, event)

    def run_forever(self, stop: threading.Event) -> None:
        """Run jobs until ``stop`` is set (``mlharbor server`` or a worker calls this)."""
        while not stop.is_set():
            try:
                job = self.run_once()
            except MlharborError as exc:  # the database is down, say: wait and try again
                log.warning("job runner %s: %s", self.owner, exc)
                job = None
            if job is None:
                stop.wait(self.poll_seconds)

    def _kind(self, job: Job, fence: Fence) -> JobKind | None:
        """The job's kind; a factory that cannot build it fails the job (None)."""
        factory = self.kind_for.get(job.kind)
        if factory is None:
            return self.kinds[job.kind]
        try:
            return factory(job)
        except Exception as exc:  # a kind that cannot be built can never run: end the job
            message = exc.message if isinstance(exc, MlharborError) else str(exc)
            log.warning("job %s: its %r steps cannot be built: %s", job.id, job.kind, message)
            self.store.finish_job(fence, JobState.FAILED, error=(
                f"The {job.kind!r} steps of this job cannot be built: {message}"))
            return None

    def _execute(self, job: Job, fence: Fence) -> None:
        kind = self._kind(job, fence)
        if kind is None:
            return
        if job.plan != kind.plan:
            self.store.finish_job(fence, JobState.FAILED, error=(
                f"The job was planned as {list(job.plan)} but this runner's {kind.name!r} "
                f"has steps {list(kind.plan)}; it cannot resume safely."))
            return
        # A claim after an approval is not a runner that stopped: do not count it.
        resumed = sum(1 for s in job.steps if s.progress and APPROVAL_KEY in s.progress)
        if job.attempt - resumed > self.max_attempts:
            self.store.finish_job(fence, JobState.FAILED, error=(
                f"Abandoned: its runner stopped {job.attempt - 1 - resumed} times before it "
                "finished."))
            return
        lost, cancel = threading.Event(), threading.Event()
        self._lost = lost
        beat = _Heartbeat(self.store, fence, self.lease, lost, cancel)
        beat.start()
        try:
            for step in kind.steps:
                if not self._run_step(step, job, fence, lost, cancel):
                    return
                job = self.store.get(job.id)
            self.store.finish_job(fence, JobState.SUCCEEDED)
        finally:
            beat.stop()

    def _run_step(self, step: Step, job: Job, fence: Fence, lost: threading.Event,
                  cancel: threading.Event) -> bool:
        """Run one step; False when the job ended (failed or cancelled) instead."""
        view = job.steps[job.plan.index(step.name)]
        if view.state is StepState.SUCCEEDED:
            return True
        if lost.is_set():  # taken over, or abandoned: start nothing more
            raise LeaseLost(f"Job {fence.job_id} is no longer run by {fence.owner}.")
        if job.cancel_requested or cancel.is_set():
            if step.on_cancel is None:
                self.store.finish_job(fence, JobState.CANCELLED)
                return False
            job, attempt, previous = self.store.start_step(fence, view.ordinal, self.lease)
            ctx = StepContext(self.store, fence, job, job.steps[view.ordinal], attempt,
                              previous, lost, cancel)
            self._cancel(step, ctx, fence, view.ordinal)
            return False
        if view.state is StepState.RUNNING and not step.rerun_after_crash:
            self.store.finish_step(fence, view.ordinal, StepState.FAILED,
                                   error="interrupted; not safe to re-run")
            self.store.finish_job(fence, JobState.FAILED, error=(
                f"Step {step.name!r} was interrupted (its runner stopped) and is declared "
                "not safe to re-run."))
            return False
        job, attempt, previous = self.store.start_step(fence, view.ordinal, self.lease)
        ctx = StepContext(self.store, fence, job, job.steps[view.ordinal], attempt, previous,
                          lost, cancel)
        try:
            result = step.run(ctx)
            _check_json(result, what=f"result of step {step.name!r}")
        except LeaseLost:
            raise
        except CancelRequested:
            self._cancel(step, ctx, fence, view.ordinal)
            return False
        except AwaitApproval as exc:
            log.info("job %s step %s waits for an approval: %s", job.id, step.name, exc)
            self.store.park(fence, view.ordinal, str(exc))
            return False
        except StepFailed as exc:
            _check_json(exc.result, what=f"result of step {step.name!r}")
            log.warning("job %s step %s failed: %s", job.id, step.name, exc)
            self.store.finish_step(fence, view.ordinal, StepState.FAILED, result=exc.result,
                                   error=str(exc))
            self.store.finish_job(fence, JobState.FAILED,
                                  error=f"Step {step.name!r} failed: {exc}")
            return False
        except Exception as exc:
            message = f"{type(exc).__name__}: {exc}"
            log.warning("job %s step %s failed: %s", job.id, step.name, message)
            self.store.finish_step(fence, view.ordinal, StepState.FAILED, error=message)
            self.store.finish_job(fence, JobState.FAILED,
                                  error=f"Step {step.name!r} failed: {message}")
            return False
        if lost.is_set():
            raise LeaseLost(f"Job {fence.job_id} was taken over while step {step.name!r} ran.")
        self.store.finish_step(fence, view.ordinal, StepState.SUCCEEDED, result=result)
        return True


    def _cancel(self, step: Step, ctx: StepContext, fence: Fence, ordinal: int) -> None:
        """End the job cancelled in ``step``, after its ``on_cancel`` undid what it could."""
        result, error = None, None
        if step.on_cancel is not None:
            try:
                result = step.on_cancel(ctx)
                _check_json(result, what=f"cancel result of step {step.name!r}")
            except LeaseLost:
                raise
            except Exception as exc:
                message = exc.message if isinstance(exc, MlharborError) else str(exc)
                error = f"Cancelled; undoing step {step.name!r} failed: {message}"
                log.warning("job %s: %s", ctx.job.id, error)
                result = None
        self.store.finish_step(fence, ordinal, StepState.CANCELLED, result=result, error=error)
        self.store.finish_job(fence, JobState.CANCELLED, error=error)


class _Heartbeat:
    """Renews a lease every third of its length while a job runs; flags loss and cancel."""

    def __init__(self, store: JobStore, fence: Fence, lease: timedelta,
                 lost: threading.Event, cancel: threading.Event) -> None:
        self._store, self._fence, self._lease = store, fence, lease
        self._lost, self._cancel = lost, cancel
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True,
                                        name=f"job-heartbeat-{fence.job_id[:8]}")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        interval = self._lease.total_seconds() / 3
        while not self._stop.wait(interval):
            try:
                if self._store.renew(self._fence, self._lease):
                    self._cancel.set()
            except LeaseLost:
                self._lost.set()
                return
            except MlharborError as exc:  # keep trying; the fenced writes decide
                log.warning("job %s: lease renewal failed: %s", self._fence.job_id, exc)
