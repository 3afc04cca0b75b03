"""Job routes: list, show, logs, cancel, approve, reject, and the manual retrain trigger.

``GET /api/v1/jobs`` (``state``, ``endpoint``, ``limit``), ``GET /api/v1/jobs/{id}`` (the job
with each step's timeline, results and the rollout decisions: :func:`job_view`),
``GET /api/v1/jobs/{id}/logs`` (each step's events, what ``mlharbor jobs logs`` prints),
``POST /api/v1/jobs/{id}/cancel|approve|reject`` with an optional ``{"reason": "..."}``, and
``POST /api/v1/endpoints/{name}/retrain`` (``{"reason": "..."}``: a manual trigger through
:func:`mlharbor.pipelines.submit.submit_retrain`; 202 with the new job, or 200 with the
endpoint's active job and ``created: false``). Authorisation is in the one route table
(:mod:`mlharbor.security.routemap`). Bad input is a 4xx naming the field and writes nothing.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from mlharbor.api.context import actor_of, registry_of
from mlharbor.pipelines.jobstore import MAX_REASON_CHARS, JobStore

router = APIRouter(prefix="/api/v1", tags=["jobs"])


class Reason(BaseModel):
    """Why a person cancels, approves, rejects or asks for a job (kept in the audit trail)."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field("", max_length=MAX_REASON_CHARS)


#: The body is optional: no body (or ``{}``) is an empty reason.
REASON_BODY = Body(None, description='{"reason": "why"}; optional.')
JOB_ID = "A job id (as `mlharbor jobs list` shows it)."


def _store(request: Request) -> JobStore:
    services = getattr(request.app.state, "services", None)
    return services.jobs if services is not None else JobStore(registry_of(request).store)


def _reason(body: Reason | None) -> str:
    return body.reason if body is not None else ""


@router.get("/jobs")
def list_jobs(
    request: Request,
    state: str | None = Query(None, max_length=40, description="queued, running, waiting, "
                              "succeeded, failed or cancelled."),
    endpoint: str | None = Query(None, max_length=200, description="Only this endpoint's."),
    limit: int = Query(50, ge=1, le=1000),
) -> dict[str, Any]:
    """Jobs, newest first, each with its outcome and steps."""
    from mlharbor.core.names import validate_name
    from mlharbor.pipelines.jobstates import parse_job_state
    from mlharbor.pipelines.jobview import job_view

    wanted = parse_job_state(state) if state is not None else None
    if endpoint is not None:
        validate_name(endpoint, kind="endpoint name")
    found = _store(request).list_jobs(state=wanted, endpoint=endpoint, limit=limit)
    return {"items": [job_view(job) for job in found], "total": len(found)}


@router.get("/jobs/{job_id}")
def get_job(request: Request, job_id: str) -> dict[str, Any]:
    """The job, its steps with their timeline and results, and the rollout decisions."""
    from mlharbor.pipelines.jobview import job_view

    return job_view(_store(request).get(job_id))


@router.get("/jobs/{job_id}/logs")
def job_logs(request: Request, job_id: str) -> dict[str, Any]:
    """Each step's events in time order (the job store's and the audit chain's)."""
    from mlharbor.pipelines.jobview import job_outcome, read_job_log

    store = _store(request)
    job = store.get(job_id)
    entries = read_job_log(store.meta, job)
    return {"job": job.id, "state": job.state.value, "outcome": job_outcome(job),
            "events": [e.to_dict() for e in entries]}


@router.post("/jobs/{job_id}/cancel")
def cancel_job(request: Request, job_id: str, body: Reason | None = REASON_BODY
               ) -> dict[str, Any]:
    """Cancel a job: one not yet started now; any other is ended by a runner, which undoes
    what it started (a rollout restores the endpoint)."""
    from mlharbor.pipelines.jobview import job_view

    job = _store(request).cancel(job_id, actor=actor_of(request), reason=_reason(body))
    return job_view(job)


@router.post("/jobs/{job_id}/approve")
def approve_job(request: Request, job_id: str, body: Reason | None = REASON_BODY
                ) -> dict[str, Any]:
    """Approve a job waiting for a human: it is queued again and goes on."""
    from mlharbor.pipelines.jobview import job_view

    return job_view(_store(request).approve(job_id, actor=actor_of(request),
                                            reason=_reason(body)))


@router.post("/jobs/{job_id}/reject")
def reject_job(request: Request, job_id: str, body: Reason | None = REASON_BODY
               ) -> dict[str, Any]:
    """Reject a job waiting for a human: it ends failed; nothing more is done."""
    from mlharbor.pipelines.jobview import job_view

    return job_view(_store(request).reject(job_id, actor=actor_of(request),
                                           reason=_reason(body)))


@router.post("/endpoints/{name}/retrain")
def retrain_endpoint(request: Request, response: Response, name: str,
                     body: Reason | None = REASON_BODY) -> dict[str, Any]:
    """Queue a retraining job for the endpoint under its policy (a manual trigger)."""
    from mlharbor.core.loop import RetrainTrigger
    from mlharbor.pipelines.jobview import job_view
    from mlharbor.pipelines.submit import submit_retrain

    job, created = submit_retrain(registry_of(request), name, trigger=RetrainTrigger.MANUAL,
                                  reason=_reason(body) or "manual", actor=actor_of(request))
    response.status_code = 202 if created else 200
    return {"created": created, "job": job_view(job)}
