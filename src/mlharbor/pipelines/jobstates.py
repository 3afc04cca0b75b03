"""The job and step state machines of the durable jobs (:mod:`mlharbor.pipelines.jobs`).

**States** are data, written once in :data:`JOB_TRANSITIONS` and :data:`STEP_TRANSITIONS`::

    job:  queued -> running -> succeeded | failed | cancelled      (queued -> cancelled too)
          running -> waiting -> queued (approved) | failed (rejected) | cancelled
    step: pending -> running -> succeeded | failed | cancelled     (running -> running: re-run)
          running -> waiting -> running (approved) | failed (rejected) | cancelled

Any other move raises :class:`~mlharbor.core.errors.ConflictError`
(:func:`check_job_transition`, :func:`check_step_transition`).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

from mlharbor.core.errors import ConflictError, InvalidInputError


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
