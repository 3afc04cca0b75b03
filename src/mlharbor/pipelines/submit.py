"""Submitting a retraining job: the one function every trigger calls.

``mlharbor retrain ENDPOINT`` (manual), the API and the trigger loop (drift, metric floor,
estimate, schedule) all go through :func:`submit_retrain`, so a job always carries a
:class:`~mlharbor.core.loop.RetrainRequest`, the policy revision it runs under and the plan
the ``retrain`` kind will run for that policy. Dedupe is the job store's: while the endpoint
has an active job, submitting returns that job (``created`` False) and queues nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

from mlharbor.core.loop import RetrainRequest, RetrainTrigger

if TYPE_CHECKING:
    from mlharbor.pipelines.jobrecords import Job
    from mlharbor.pipelines.policy import Policy
    from mlharbor.registry.service import Registry

#: The longest reason kept with a request (it is shown in lists and the audit log).
MAX_REASON = 2000


def retrain_plan(policy: Policy, registry: Registry) -> tuple[str, ...]:
    """The step names a ``retrain`` job runs under ``policy``: snapshot, train, validate,
    then the rollout's (shadow, approval, canary-N ..., promote). InvalidInputError when the
    rollout asks for what is not built (the runner could not run the job)."""
    from mlharbor.pipelines.retrain import RETRAIN_STEPS
    from mlharbor.pipelines.rollout import Rollout

    # Step names depend on the spec only; no signal is read while listing them.
    rollout = Rollout(policy.rollout, registry=registry, signals=cast(Any, None))
    return (*RETRAIN_STEPS, *(step.name for step in rollout.steps()))


def submit_retrain(
    registry: Registry, endpoint: str, *, trigger: RetrainTrigger, reason: str, actor: str,
    at: datetime | None = None, plan: Sequence[str] | None = None,
) -> tuple[Job, bool]:
    """Queue a ``retrain`` job for ``endpoint`` under its stored policy (or the defaults).

    Returns ``(job, created)``; ``created`` is False when the endpoint already had an active
    job, which is returned instead (one job per endpoint; a persisting alarm starts one job).
    ``plan`` is the runner's ``retrain`` kind plan when the caller has one.
    """
    from mlharbor.core.clock import utcnow
    from mlharbor.core.errors import InvalidInputError
    from mlharbor.core.names import validate_name
    from mlharbor.core.records import to_dict
    from mlharbor.pipelines.jobstore import JobStore
    from mlharbor.pipelines.policy import Policy, policy_from_dict
    from mlharbor.pipelines.retrain import JOB_KIND
    from mlharbor.registry.endpoints import EndpointService
    from mlharbor.registry.policies import PolicyService

    validate_name(endpoint, kind="endpoint name")
    if len(reason) > MAX_REASON:
        raise InvalidInputError(f"The reason is {len(reason)} characters long; at most "
                                f"{MAX_REASON} are kept.", field="reason")
    EndpointService(registry).get(endpoint)  # NotFoundError naming the known endpoints
    stored = PolicyService(registry).find(endpoint)
    policy = (policy_from_dict(stored.spec, source=f"policy of {endpoint}") if stored
              else Policy(endpoint=endpoint))
    request = RetrainRequest(
        endpoint=endpoint, trigger=trigger, reason=reason, base_ref=None, requested_by=actor,
        at=at or utcnow(), policy_revision=stored.revision if stored else None)
    steps = tuple(plan) if plan is not None else retrain_plan(policy, registry)
    return JobStore(registry.store).submit(JOB_KIND, endpoint, to_dict(request), steps,
                                           actor=actor)
