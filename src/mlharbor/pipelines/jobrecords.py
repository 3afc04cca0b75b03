"""The records of durable jobs: a stored :class:`Job` and its :class:`StepView` steps, a
runner's :class:`Fence`, a step's :class:`PreviousAttempt`, a human's :class:`Approval`.

Plain data, read from and written to the metadata database by
:class:`~mlharbor.pipelines.jobstore.JobStore` and used by the runner in
:mod:`mlharbor.pipelines.jobs`; everything a job keeps (request, progress, results) is JSON
(:func:`check_json`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from mlharbor.core.errors import ConflictError, InvalidInputError
from mlharbor.pipelines.jobstates import ACTIVE_STATES, JobState, StepState

#: The key of a step's progress under which its :class:`Approval` is recorded.
APPROVAL_KEY = "approval"


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


def _iso(value: object) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)


def check_json(value: Any, *, what: str) -> None:
    """Raise :class:`InvalidInputError` unless ``value`` is JSON (no NaN): ``what`` names it."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"The {what} is not JSON ({exc}).",
                                hint="Return numbers, strings, lists and dicts only.") from exc

