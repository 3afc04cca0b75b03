"""The job kinds a runner runs, built from the job itself, and where job events go.

The ``retrain`` kind's steps depend on the policy's rollout (shadow?, approval?, canary-N,
promote), so it is built per job (:data:`mlharbor.pipelines.jobs.KindFactory`): from the
policy *revision named in the job's request* (the one ``submit_retrain`` planned it under), so
a policy applied while the job runs changes neither its steps nor its gates; the rollout reads
traffic from the monitor's prediction log and feedback (:class:`LogSignals`) and rolls out the
challenger the validate step passed (:func:`rollout_target`). The ``train`` step records its
training as a run (:mod:`mlharbor.pipelines.retrain_runs`) through one tracker per runner.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlharbor.monitoring.service import Monitor
    from mlharbor.pipelines.jobs import Job, JobKind
    from mlharbor.pipelines.policy import Policy
    from mlharbor.registry.service import Registry
    from mlharbor.settings import Settings
    from mlharbor.tracking.fluent import Tracker


def policy_at(registry: Registry, endpoint: str, revision: int | None) -> Policy:
    """The endpoint's policy as it was at ``revision`` (None: the policy defaults, which is
    what a job submitted while the endpoint had no policy runs under)."""
    from mlharbor.core.errors import InvalidInputError
    from mlharbor.pipelines.policy import Policy, policy_from_dict
    from mlharbor.registry.policies import PolicyService

    if revision is None:
        return Policy(endpoint=endpoint)
    stored = PolicyService(registry).revision(endpoint, revision)
    if stored.spec is None:
        raise InvalidInputError(f"Revision {revision} of {endpoint}'s policy is a delete; a "
                                "job cannot run under it.", field="policy_revision")
    return policy_from_dict(stored.spec, source=f"policy of {endpoint} at revision {revision}")


class RetrainKinds:
    """``kind_for(job)`` of the ``retrain`` kind: snapshot, train, validate, then the rollout
    of the job's own policy revision, over one registry and (on first use) one monitor and
    one tracker, which records each job's training as a run in the registry's database, as
    ``mlharbor train`` does."""

    def __init__(self, registry: Registry, settings: Settings,
                 monitor: Callable[[], Monitor], *, poll_seconds: float | None = None) -> None:
        self.registry = registry
        self.settings = settings
        self.monitor = monitor
        self.poll_seconds = poll_seconds
        self._tracker: Tracker | None = None
        self._lock = threading.Lock()

    @property
    def tracker(self) -> Tracker:
        """The tracker of the jobs' runs, opened on the registry on first use, once."""
        with self._lock:
            if self._tracker is None:
                from mlharbor.bootstrap.tracking import open_tracker

                self._tracker = open_tracker(self.settings, registry=self.registry)
            return self._tracker

    def __call__(self, job: Job) -> JobKind:
        from mlharbor.pipelines.retrain import request_of, retrain_kind, rollout_target
        from mlharbor.pipelines.rollout import POLL_SECONDS, LogSignals, Rollout
        from mlharbor.registry.endpoints import EndpointService

        request = request_of(job)
        policy = policy_at(self.registry, job.endpoint, request.policy_revision)
        monitor = self.monitor()
        rollout = Rollout(policy.rollout, registry=self.registry,
                          signals=LogSignals(monitor.log, monitor.feedback),
                          endpoints=EndpointService(self.registry), target=rollout_target,
                          poll_seconds=self.poll_seconds or POLL_SECONDS)

        def policy_for(_job: Job, policy: Policy = policy) -> Policy:
            return policy

        return retrain_kind(self.registry, self.settings, feedback=monitor.feedback,
                            policy_for=policy_for, rollout=rollout.steps(),
                            tracker=self.tracker)


def job_notifier(settings: Settings) -> Callable[[Job, str], Any] | None:
    """The runner hook sending job events (started, waiting, promoted, rolled back, rejected,
    failed, cancelled) to the alert webhooks; None when no webhook is configured."""
    mon = settings.monitoring
    if not (mon.webhooks or mon.slack_webhooks):
        return None
    from mlharbor.monitoring.notify import Webhooks

    hooks = Webhooks(mon.webhooks, mon.slack_webhooks)

    def notify(job: Job, event: str) -> Any:
        from mlharbor.pipelines.jobview import notification

        return hooks(notification(job, event))

    return notify
