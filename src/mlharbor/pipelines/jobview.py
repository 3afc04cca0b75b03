"""What people see of a job: its view (timeline, decisions), its log, its notifications.

One module so the API (``/api/v1/jobs``), the CLI (``mlharbor jobs show|logs``) and the alert
webhooks all say the same thing about a job:

* :func:`job_view` -- the stored job with each step's timeline (start, end, seconds, attempts)
  and the rollout decisions its steps recorded, and the job's ``outcome``;
* :func:`job_log` -- each step's events in time order: the job store's own record of the step
  (started, noted, waiting, approved, finished) and every audited change the job made while
  the step ran (a version registered, an alias moved, endpoint weights moved: their actor is
  ``job:<id>``), from the audit chain, so the log is what really happened, not a narrative;
* :func:`job_outcome` / :func:`notification` -- the one word a human wants (``promoted``,
  ``rolled_back``, ``rejected`` ...) and the webhook body for an event of the runner's hook.

Nothing here writes; nothing runs at import.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlharbor.pipelines.jobrecords import Job, StepView
    from mlharbor.registry.audit import AuditEvent
    from mlharbor.registry.store import MetadataStore


# -- the outcome ------------------------------------------------------------------------------

def _verdicts(job: Job) -> list[str]:
    out = []
    for step in job.steps:
        result = step.result
        decision = result.get("decision") if isinstance(result, Mapping) else None
        if isinstance(decision, Mapping) and decision.get("verdict"):
            out.append(str(decision["verdict"]))
    return out


def job_outcome(job: Job) -> str:
    """``promoted`` / ``rolled_back`` (a rollout decided), ``rejected`` (validation refused
    the challenger), else the job's state (``queued``, ``running``, ``waiting``,
    ``succeeded``, ``failed``, ``cancelled``)."""
    from mlharbor.pipelines.jobstates import JobState, StepState

    verdicts = _verdicts(job)
    if job.state is JobState.SUCCEEDED and "promote" in verdicts:
        return "promoted"
    if job.state is JobState.FAILED:
        if "rollback" in verdicts:
            return "rolled_back"
        failed = next((s for s in job.steps if s.state is StepState.FAILED), None)
        if failed is not None and failed.name == "validate" and failed.error and \
                "rejected at validation" in failed.error:
            return "rejected"
    return job.state.value


# -- the view ---------------------------------------------------------------------------------

def _seconds(step: StepView) -> float | None:
    if step.started_at is None or step.finished_at is None:
        return None
    return round((step.finished_at - step.started_at).total_seconds(), 3)


def job_view(job: Job) -> dict[str, Any]:
    """The job as JSON with its outcome, each step's timeline and the rollout decisions."""
    from mlharbor.core.records import to_dict
    from mlharbor.pipelines.rollout import rollout_decisions

    body = job.to_dict()
    body["outcome"] = job_outcome(job)
    body["timeline"] = [
        {"step": s.name, "state": s.state.value, "attempts": s.attempts,
         "started_at": s.started_at.isoformat() if s.started_at else None,
         "finished_at": s.finished_at.isoformat() if s.finished_at else None,
         "seconds": _seconds(s)} for s in job.steps]
    body["decisions"] = to_dict(rollout_decisions([s.result for s in job.steps]))
    return body


# -- the log ----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, slots=True)
class LogEntry:
    """One event of a job: when, in which step (None: the job itself), what, by whom."""

    at: datetime
    step: str | None
    event: str
    message: str
    actor: str | None = None
    details: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "at": self.at.isoformat()}

    def line(self) -> str:
        """``HH:MM:SS  step  event  message`` for a terminal."""
        return (f"{self.at:%Y-%m-%d %H:%M:%S}  {self.step or '-':<12} {self.event:<16} "
                f"{self.message}")


def _step_at(job: Job, moment: datetime) -> str | None:
    """The step running at ``moment`` (the latest started at or before it)."""
    current = None
    for step in job.steps:
        if step.started_at is not None and step.started_at <= moment:
            current = step.name
    return current


def _describe(event: AuditEvent) -> str:
    details = event.details or {}
    reason = details.get("reason")
    extra = {k: v for k, v in details.items() if k != "reason" and not isinstance(v, dict | list)}
    text = f"{event.action} {event.resource}"
    if extra:
        text += " (" + ", ".join(f"{k}={v}" for k, v in list(extra.items())[:6]) + ")"
    if reason:
        text += f": {reason}"
    return text + ("" if event.outcome == "success" else f" [{event.outcome}]")


def job_log(job: Job, audit: Iterable[AuditEvent]) -> list[LogEntry]:
    """Every event of ``job`` in time order: its steps as stored, and what the audit chain
    holds about it (``resource job:<id>``) or by it (``actor job:<id>``).

    ``audit`` is the chain from the job's creation on (``store.iter_audit(since=...)``).
    """
    from mlharbor.pipelines.jobstates import StepState

    entries: list[LogEntry] = []
    own = f"job:{job.id}"  # the job as audited resource, and as the actor of its changes
    for event in audit:
        if event.resource != own and event.actor != own:
            continue
        at = event.at
        named = (event.details or {}).get("step")  # waiting / approve / reject say which
        step = named if isinstance(named, str) and named in job.plan else _step_at(job, at)
        if event.resource == own:
            name = event.action.removeprefix("job.")
            if name == "submit":
                step = None
            entries.append(LogEntry(at, step, name, _describe(event), event.actor,
                                    dict(event.details or {})))
        else:
            entries.append(LogEntry(at, step, "change", _describe(event), event.actor,
                                    dict(event.details or {})))
    for s in job.steps:
        if s.started_at is not None:
            note = f"attempt {s.attempts}" + (f" by {s.runner}" if s.runner else "")
            entries.append(LogEntry(s.started_at, s.name, "step.started", note, s.runner))
        if s.finished_at is not None and s.state in (StepState.SUCCEEDED, StepState.FAILED,
                                                      StepState.CANCELLED):
            message = s.state.value + (f": {s.error}" if s.error else "")
            decision = s.result.get("decision") if isinstance(s.result, Mapping) else None
            if isinstance(decision, Mapping) and decision.get("reason"):
                message += f" ({decision.get('verdict')}: {decision['reason']})"
            entries.append(LogEntry(s.finished_at, s.name, f"step.{s.state.value}", message,
                                    s.runner))
        elif s.state is StepState.WAITING:
            entries.append(LogEntry(job.updated_at, s.name, "step.waiting",
                                    "waiting for an approval (`mlharbor jobs approve`)"))
    # Stable: same-moment entries keep the order above (audit first, then the step's own).
    return sorted(entries, key=lambda e: e.at)


def read_job_log(meta: MetadataStore, job: Job) -> list[LogEntry]:
    """:func:`job_log` over the audit chain from the job's creation on."""
    from datetime import timedelta

    # Audit times come from the same clock as the job's, a moment after its row is made.
    return job_log(job, meta.iter_audit(since=job.created_at - timedelta(seconds=5)))


# -- notifications ----------------------------------------------------------------------------

_SEVERITY = {"started": "info", "waiting": "warning", "promoted": "info",
             "succeeded": "info", "rolled_back": "warning", "rejected": "warning",
             "failed": "critical", "cancelled": "info"}


def notification(job: Job, event: str) -> dict[str, Any]:
    """The alert-webhook body (the shape :class:`mlharbor.monitoring.notify.Webhooks` sends)
    for a runner event on ``job``: started (submitted and picked up), waiting for an
    approval, promoted, rolled back, rejected at validation, failed, cancelled."""
    outcome = job_outcome(job) if event not in ("started", "waiting") else event
    request = job.request
    why = str(request.get("reason") or "")
    trigger = request.get("trigger")
    if outcome == "started":
        summary = (f"job {job.id} ({job.kind}) for {job.endpoint} started: requested by "
                   f"{request.get('requested_by') or job.created_by}"
                   + (f" ({trigger})" if trigger else "") + (f": {why}" if why else ""))
    elif outcome == "waiting":
        summary = (f"job {job.id} for {job.endpoint} waits for an approval: `mlharbor jobs "
                   f"approve {job.id}` or `mlharbor jobs reject {job.id}`")
    elif outcome == "promoted":
        summary = f"job {job.id}: {job.endpoint}'s challenger was promoted"
    elif outcome in ("rolled_back", "rejected", "failed"):
        summary = (f"job {job.id} for {job.endpoint} {outcome.replace('_', ' ')}: "
                   f"{job.error or 'no reason recorded'}")
    else:
        summary = f"job {job.id} for {job.endpoint} {outcome}"
    return {
        "alert": f"job-{job.endpoint}", "kind": "job", "event": outcome,
        # Webhooks draws a red dot for "firing": what needs a human is firing.
        "state": "firing" if outcome in ("waiting", "rolled_back", "rejected", "failed")
        else "resolved",
        "severity": _SEVERITY.get(outcome, "info"), "endpoint": job.endpoint,
        "job_id": job.id, "job_kind": job.kind, "job_state": job.state.value,
        "trigger": trigger, "at": job.updated_at.isoformat(), "summary": summary[:2000],
    }


__all__ = ["LogEntry", "job_log", "job_outcome", "job_view", "notification", "read_job_log"]
