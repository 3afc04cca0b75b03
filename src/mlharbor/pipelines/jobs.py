"""Durable jobs: ordered, named steps kept in the metadata store, run by exactly one runner.

A job is a kind (a name and an ordered tuple of :class:`Step`) applied to one endpoint with a
JSON request (a :class:`~mlharbor.core.loop.RetrainRequest`, say). Its rows are the only truth,
so any process sharing the database can show, cancel or resume it. This module is the runner
and the contract for step authors; the pieces it stands on, each importable from here too:

- :mod:`mlharbor.pipelines.jobstates`: the job and step state machines, written once as data;
- :mod:`mlharbor.pipelines.jobrecords`: the records (:class:`Job`, :class:`StepView`,
  :class:`Fence`, :class:`PreviousAttempt`, :class:`Approval`, :class:`LeaseLost`);
- :mod:`mlharbor.pipelines.jobstore`: :class:`JobStore`, the jobs in the database (one job per
  endpoint, the lease claimed by compare-and-set, every later write fenced).

**Exactly one runner.** A runner claims a job through :meth:`JobStore.claim`, which bumps its
``attempt``; every later write is fenced on ``(lease_owner, attempt)``, so once another runner
has claimed the job the old one's writes change nothing and it stops (:class:`LeaseLost`). A
heartbeat thread renews the lease while a step runs.

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
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import timedelta
from typing import Any

from mlharbor.core.errors import InvalidInputError, MlharborError
from mlharbor.core.names import validate_name

# The pieces, re-exported: ``from mlharbor.pipelines.jobs import JobStore`` keeps working.
from mlharbor.pipelines.jobrecords import APPROVAL_KEY as APPROVAL_KEY
from mlharbor.pipelines.jobrecords import Approval as Approval
from mlharbor.pipelines.jobrecords import Fence as Fence
from mlharbor.pipelines.jobrecords import Job as Job
from mlharbor.pipelines.jobrecords import LeaseLost as LeaseLost
from mlharbor.pipelines.jobrecords import PreviousAttempt as PreviousAttempt
from mlharbor.pipelines.jobrecords import StepView as StepView
from mlharbor.pipelines.jobrecords import check_json
from mlharbor.pipelines.jobstates import ACTIVE_STATES as ACTIVE_STATES
from mlharbor.pipelines.jobstates import CLAIMABLE_STATES as CLAIMABLE_STATES
from mlharbor.pipelines.jobstates import JOB_TRANSITIONS as JOB_TRANSITIONS
from mlharbor.pipelines.jobstates import STEP_TRANSITIONS as STEP_TRANSITIONS
from mlharbor.pipelines.jobstates import JobState as JobState
from mlharbor.pipelines.jobstates import StepState as StepState
from mlharbor.pipelines.jobstates import check_job_transition as check_job_transition
from mlharbor.pipelines.jobstates import check_step_transition as check_step_transition
from mlharbor.pipelines.jobstates import parse_job_state as parse_job_state
from mlharbor.pipelines.jobstore import MAX_REASON_CHARS as MAX_REASON_CHARS
from mlharbor.pipelines.jobstore import JobStore as JobStore

log = logging.getLogger(__name__)


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
        check_json(merged, what=f"progress of step {self.step.name!r}")
        self._store.note_step(self._fence, self.step.ordinal, merged)
        self._progress = merged

    def check(self) -> None:
        """Raise if the runner lost the job or the job was cancelled; call it in long steps."""
        if self.lease_lost.is_set():
            raise LeaseLost(f"Job {self._fence.job_id} was taken over by another runner.")
        if self.cancel_requested.is_set():
            raise CancelRequested(self._fence.job_id)


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
            check_json(result, what=f"result of step {step.name!r}")
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
            check_json(exc.result, what=f"result of step {step.name!r}")
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
                check_json(result, what=f"cancel result of step {step.name!r}")
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
