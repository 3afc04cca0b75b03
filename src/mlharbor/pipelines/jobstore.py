"""The job store: durable jobs and their steps in the metadata database.

A job's rows (``jobs``, ``job_steps`` in :mod:`mlharbor.registry.schema`, migration ``0005``)
are the only truth, so any process sharing the database can show, cancel or resume it. Every
change is one transaction; the state moves are checked against
:mod:`mlharbor.pipelines.jobstates`, the records it returns are in
:mod:`mlharbor.pipelines.jobrecords`. The runner and the step contract are in
:mod:`mlharbor.pipelines.jobs`.

**One job per endpoint.** A second :meth:`JobStore.submit` for an endpoint that has a queued or
running job returns that job (``created=False``), whatever its kind: a persisting alarm starts
one job, not one per window. The database enforces it (partial unique index
``uq_jobs_active_endpoint``); the code only reads first to answer nicely.

**Exactly one runner.** A runner claims a job by compare-and-set on its lease (``UPDATE ...
WHERE lease free or expired AND attempt = seen``), which bumps ``attempt``. Every later write
of that runner is fenced on ``(lease_owner, attempt)``: once another runner has claimed the job,
the old one's writes change nothing and it stops (:class:`LeaseLost`). Lease times come from
each runner's clock, so servers sharing a database need clocks synchronised well within the
lease (NTP does it).

**Approvals.** :meth:`JobStore.approve` records the approval (actor, reason, time) in the
waiting step's progress and queues the job again; :meth:`JobStore.reject` ends the job
``failed`` with the rejection recorded on the step. Both are audited (``job.approve`` /
``job.reject``, with the reason) and refused, writing nothing, for a job that is not waiting.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, and_, or_, select, update

from mlharbor.core.clock import utcnow
from mlharbor.core.errors import ConflictError, InvalidInputError, NotFoundError
from mlharbor.core.names import validate_name
from mlharbor.pipelines.jobrecords import (
    APPROVAL_KEY,
    Approval,
    Fence,
    Job,
    LeaseLost,
    PreviousAttempt,
    StepView,
    check_json,
)
from mlharbor.pipelines.jobstates import (
    ACTIVE_STATES,
    CLAIMABLE_STATES,
    JobState,
    StepState,
    check_job_transition,
    check_step_transition,
)
from mlharbor.registry.schema import job_steps, jobs

if TYPE_CHECKING:
    from mlharbor.registry.store import MetadataStore

log = logging.getLogger(__name__)

#: The longest reason an approval, rejection or cancel may keep.
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
        check_json(payload, what="job request")
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
        end (a waiting one is queued again with the cancel asked): see Cancel in
        :mod:`mlharbor.pipelines.jobs`."""
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
        with self.db.read() as conn:  # an idle runner polls without taking the write lock
            if conn.execute(select(jobs.c.id).where(jobs.c.kind.in_(list(kinds)), active, free)
                            .limit(1)).first() is None:
                return None
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
