"""Trigger evaluation: when a policy's drift, metric, estimate or schedule asks for a retrain.

:func:`evaluate_triggers` reads one endpoint's signals under its policy and answers a typed
:class:`TriggerVerdict`: for each configured trigger, whether it fired and the evidence (drifted
windows k of N and their features; the live metric against its floor with the labelled rows;
the estimated metric with its interval against its floor; the schedule's due time), or why it
could not be judged. :class:`TriggerLoop` evaluates every stored policy on a timer and submits
a ``retrain`` job through :func:`mlharbor.pipelines.submit.submit_retrain` when a verdict is due,
then notifies the alert webhooks (one message per job).

**Cooldown and dedupe.** A persisting alarm starts one job, not one per window:

* no job while the endpoint has an active one (queued, running or waiting): the job store's
  one-job-per-endpoint rule, enforced by its unique index, so two servers submitting at once
  create one job;
* none within ``triggers.cooldown`` after the endpoint's last job started, whatever its outcome
  or trigger (manual jobs count too). A job *starts* when it is asked for: its request's ``at``
  (the trigger's ``now``), so the arithmetic never mixes the evaluator's clock with another's;
* across processes, a loop that evaluated before another loop's job was created, and submits
  after that job already ended, would slip past both checks: after creating its job the loop
  looks for a job of the same endpoint created before its own and started within the cooldown,
  and if there is one cancels its own (the earlier job wins, whichever process made it).

**Windows.** Drift is judged over the last ``of`` *complete* windows on a grid of ``window``
(the epoch split in ``window`` steps), so repeated evaluations read the same windows (their
counts are cached by the monitor) and a window is judged once it has ended. The metric and
estimate read the last ``window`` up to ``now``.

**Schedule.** Due at the cron's first time after the last scheduled job's ``at`` (before the
first one: after the policy was last applied); it fires once per due time. A due run blocked
by an active job or the cooldown fires once when the block ends, not once per missed time.

Layering: pipelines may import monitoring and registry; nothing here runs at import.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

from mlharbor.core.errors import MlharborError
from mlharbor.core.loop import EstimatedPerformance, RetrainTrigger

if TYPE_CHECKING:
    import pandas as pd

    from mlharbor.monitoring.service import Monitor
    from mlharbor.pipelines.jobrecords import Job
    from mlharbor.pipelines.jobstore import JobStore
    from mlharbor.pipelines.policy import (
        DriftTrigger,
        EstimatedTrigger,
        MetricTrigger,
        Policy,
    )
    from mlharbor.registry.service import Registry

log = logging.getLogger(__name__)

#: Who the trigger loop's jobs are requested by (audit and job lists).
ACTOR = "mlharbor-triggers"
#: How many of an endpoint's newest jobs are searched for its last scheduled one.
SCHEDULE_LOOKBACK = 500

Notify = Callable[[dict[str, Any]], Any]


# -- the verdict ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, slots=True)
class DriftEvidence:
    """``drifted`` of the last ``of`` complete ``window``-long windows drifted (M of N rule);
    ``features`` the drifted features, most often first; windows without rows are not drifted."""

    window: str
    of: int
    at_least: int
    drifted: int
    with_rows: int
    features: tuple[str, ...]
    version: int | None
    start: datetime
    end: datetime


@dataclasses.dataclass(frozen=True, slots=True)
class MetricEvidence:
    """The live ``metric`` from feedback over ``[start, end)`` against its bound."""

    metric: str
    value: float | None
    bound: float
    direction: str  # "below" (a floor) or "above" (a ceiling)
    labelled_rows: int
    min_labels: int
    version: int | None
    start: datetime
    end: datetime


@dataclasses.dataclass(frozen=True, slots=True)
class EstimatedEvidence:
    """The CBPE estimate of ``metric`` over ``[start, end)``: fires when ``upper`` < ``below``."""

    metric: str
    value: float
    lower: float
    upper: float
    below: float
    rows: int
    min_rows: int
    version: int | None
    reference_rows: int
    calibration_error: float
    calibrator: str
    start: datetime
    end: datetime


@dataclasses.dataclass(frozen=True, slots=True)
class ScheduleEvidence:
    """The cron ``expression`` was due at ``due`` (first time after ``since``)."""

    expression: str
    due: datetime
    since: datetime
    last_run: datetime | None


Evidence = DriftEvidence | MetricEvidence | EstimatedEvidence | ScheduleEvidence


@dataclasses.dataclass(frozen=True, slots=True)
class TriggerCheck:
    """One trigger's outcome: ``fired``; else ``inactive`` (could not be judged) or quiet.

    ``reason`` says in one sentence why it fired, stayed quiet or could not be judged.
    """

    trigger: RetrainTrigger
    fired: bool
    reason: str
    evidence: Evidence | None = None
    inactive: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class TriggerVerdict:
    """What the triggers of one endpoint's policy say at ``at``.

    ``blocked`` says why no job may start now (disabled policy, an active job, the cooldown);
    the checks are then not evaluated unless asked (``always=True``). ``due`` is whether a job
    should be submitted: a trigger fired and nothing blocks.
    """

    endpoint: str
    at: datetime
    checks: tuple[TriggerCheck, ...]
    blocked: str | None = None
    active_job: str | None = None
    last_started: datetime | None = None
    cooldown_until: datetime | None = None

    @property
    def fired(self) -> tuple[TriggerCheck, ...]:
        return tuple(c for c in self.checks if c.fired)

    @property
    def due(self) -> bool:
        return self.blocked is None and bool(self.fired)

    @property
    def trigger(self) -> RetrainTrigger | None:
        """The trigger a submitted job is recorded under: the first that fired."""
        return self.fired[0].trigger if self.fired else None

    def reason(self) -> str:
        """One line for the job's request: every fired trigger's reason."""
        return "; ".join(c.reason for c in self.fired)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe (datetimes as ISO strings), with ``due`` and the fired triggers."""
        from mlharbor.core.records import to_dict

        body: dict[str, Any] = to_dict(self)
        body["due"] = self.due
        body["fired"] = [c.trigger.value for c in self.fired]
        return body


# -- evaluation -------------------------------------------------------------------------------

def evaluate_triggers(policy: Policy, monitor: Monitor, jobs: JobStore, now: datetime, *,
                      always: bool = False) -> TriggerVerdict:
    """Judge every trigger of ``policy`` at ``now`` (cooldown and active job first).

    A trigger that cannot be judged (no predictions, no reference profile, too few labels,
    an uncalibrated model ...) is ``inactive`` with the reason; it never raises for that. With
    ``always`` the triggers are judged even when a job may not start (for a dashboard).
    """
    now = _utc(now)
    endpoint = policy.endpoint
    spec = policy.triggers
    active, last = _active_and_last(jobs, endpoint)
    last_started = _started(last) if last is not None else None
    cooldown_until = last_started + spec.cooldown_delta if last_started else None
    blocked = None
    if not policy.enabled:
        blocked = "the policy is disabled"
    elif active is not None:
        blocked = f"job {active.id} is {active.state.value} for {endpoint}"
    elif cooldown_until is not None and now < cooldown_until:
        blocked = (f"cooldown: the last job ({last.id if last else '?'}) started "
                   f"{last_started:%Y-%m-%d %H:%M:%S} UTC; no new job before "
                   f"{cooldown_until:%Y-%m-%d %H:%M:%S} UTC")
    checks: list[TriggerCheck] = []
    if blocked is None or always:
        if spec.drift is not None:
            checks.append(_guarded(RetrainTrigger.DRIFT, partial(
                drift_check, spec.drift, monitor, endpoint, now)))
        if spec.metric is not None:
            checks.append(_guarded(RetrainTrigger.METRIC_FLOOR, partial(
                metric_check, spec.metric, monitor, endpoint, now)))
        if spec.estimated is not None:
            checks.append(_guarded(RetrainTrigger.ESTIMATED_FLOOR, partial(
                estimated_check, spec.estimated, monitor, endpoint, now)))
        if spec.schedule is not None:
            checks.append(_guarded(RetrainTrigger.SCHEDULE, partial(
                schedule_check, spec.schedule, jobs, monitor.registry, endpoint, now)))
    return TriggerVerdict(endpoint=endpoint, at=now, checks=tuple(checks), blocked=blocked,
                          active_job=active.id if active else None, last_started=last_started,
                          cooldown_until=cooldown_until)


def _guarded(trigger: RetrainTrigger, check: Callable[[], TriggerCheck]) -> TriggerCheck:
    """A check whose mlharbor error (a missing profile, a refused window) makes it inactive."""
    try:
        return check()
    except MlharborError as exc:
        return TriggerCheck(trigger, False, f"{trigger.value}: {exc.message}", inactive=True)


def grid_end(now: datetime, window: timedelta) -> datetime:
    """The end of the last complete ``window``-long window on the epoch grid at ``now``."""
    from mlharbor.monitoring.windows import MICROSECOND, moment_of

    step = max(window // MICROSECOND, 1)
    # Exact integer microseconds (epoch_micros goes through a float timestamp, 1 us off for
    # some moments, which would put ``now`` before its own window's end).
    micros = (_utc(now) - moment_of(0)) // MICROSECOND
    return moment_of(micros // step * step)


def drift_check(spec: DriftTrigger, monitor: Monitor, endpoint: str, now: datetime
                ) -> TriggerCheck:
    """The drift verdict of each of the last ``of`` complete windows; fires at ``at_least``."""
    from mlharbor.monitoring.windows import check_time_windows

    window = spec.window_delta
    end = grid_end(now, window)
    start = end - spec.of * window
    check_time_windows(end - start, window, monitor.max_windows)  # WindowLimitError: inactive
    report = monitor.drift(endpoint, start=start, end=end, step=window)
    series = report.get("series", [])
    drifted = [w for w in series if w.get("drifted")]
    counts: dict[str, int] = {}
    for w in drifted:
        for name in w.get("drifted_features", []):
            counts[name] = counts.get(name, 0) + 1
    features = tuple(sorted(counts, key=lambda n: (-counts[n], n)))
    evidence = DriftEvidence(window=spec.window, of=spec.of, at_least=spec.at_least,
                             drifted=len(drifted), with_rows=len(series), features=features,
                             version=report.get("version"), start=start, end=end)
    fired = len(drifted) >= spec.at_least
    named = f" ({', '.join(features[:5])})" if features else ""
    reason = (f"drift in {len(drifted)} of the last {spec.of} {spec.window} windows"
              f"{named}; the policy retrains at {spec.at_least}")
    return TriggerCheck(RetrainTrigger.DRIFT, fired, reason, evidence)


def metric_check(spec: MetricTrigger, monitor: Monitor, endpoint: str, now: datetime
                 ) -> TriggerCheck:
    """Live ``spec.name`` from feedback over the last ``window``: below the floor (above the
    ceiling for errors) fires, only with at least ``min_labels`` labelled rows."""
    window = spec.window_delta
    start, end = now - window, now
    rows = monitor.performance(endpoint, start=start, end=end, window=window)
    floor = spec.below is not None
    limit = spec.below if floor else spec.above
    assert limit is not None  # the schema gives exactly one of below / above
    bound = float(limit)
    direction = "below" if floor else "above"
    if not rows:
        evidence = MetricEvidence(spec.name, None, bound, direction, 0, spec.min_labels, None,
                                  start, end)
        return TriggerCheck(RetrainTrigger.METRIC_FLOOR, False,
                            f"{spec.name}: no labelled rows in the last {spec.window}",
                            evidence, inactive=True)
    row = max(rows, key=lambda r: r["labelled_rows"])  # the version most of traffic went to
    value = row["metrics"].get(spec.name)
    labelled = int(row["labelled_rows"])
    evidence = MetricEvidence(spec.name, None if value is None else float(value), bound,
                              direction, labelled, spec.min_labels, row["version"], start, end)
    if labelled < spec.min_labels:
        return TriggerCheck(RetrainTrigger.METRIC_FLOOR, False,
                            f"{spec.name}: {labelled} labelled rows in the last {spec.window}; "
                            f"at least {spec.min_labels} are needed to judge", evidence,
                            inactive=True)
    if value is None:
        return TriggerCheck(RetrainTrigger.METRIC_FLOOR, False,
                            f"{spec.name} cannot be computed on the last {spec.window}'s "
                            "labels", evidence, inactive=True)
    fired = value < bound if floor else value > bound
    reason = (f"live {spec.name} {value:.4f} over {labelled} labelled rows "
              f"{'is' if fired else 'is not'} {direction} {bound:g} (last {spec.window})")
    return TriggerCheck(RetrainTrigger.METRIC_FLOOR, fired, reason, evidence)


def estimated_check(spec: EstimatedTrigger, monitor: Monitor, endpoint: str, now: datetime
                    ) -> TriggerCheck:
    """CBPE over the last ``window``: fires when the estimate's UPPER bound is below the floor,
    so the estimate's stated error (sampling and calibration) cannot explain the drop.

    The estimator is fitted on the labelled reference: the same version's production rows
    logged before the window, with their logged probability and their feedback label
    (:meth:`mlharbor.monitoring.feedback.Feedback.scored_labels`), and must pass the
    calibration bound (:func:`mlharbor.monitoring.estimation.fit_estimator`); otherwise the
    trigger is inactive with the reason. Only two-class models are estimated: the log keeps
    the positive class's probability for them and only the top class's for more classes.

    Validation: the estimator is the one ``tests/monitoring/test_estimation.py`` checks under
    covariate shift (``test_cbpe_tracks_accuracy_under_covariate_shift``: the estimate lies
    within its stated error of the realised accuracy on shifted windows, where the reference's
    own accuracy is off several times more); ``tests/pipelines/test_triggers.py`` checks this
    trigger end to end on the log: a shift that lowers the model's confidence fires, an A/A
    window does not.
    """
    window = spec.window_delta
    start, end = now - window, now
    current = monitor.feedback.scored_rows(endpoint, start=start, end=end, labelled=False)
    current = current[current["score"].notna()]
    if current.empty:
        return TriggerCheck(RetrainTrigger.ESTIMATED_FLOOR, False,
                            f"estimated {spec.metric}: no predictions with probabilities in the "
                            f"last {spec.window}", inactive=True)
    version = _main_version(current)
    if version is not None:
        current = current[current["version"] == version]
    if len(current) < spec.min_rows:
        return TriggerCheck(RetrainTrigger.ESTIMATED_FLOOR, False,
                            f"estimated {spec.metric}: {len(current)} predictions in the last "
                            f"{spec.window}; at least {spec.min_rows} are needed",
                            inactive=True)
    reference = monitor.feedback.scored_rows(endpoint, start=None, end=start, labelled=True)
    found = production_estimate(monitor, endpoint, current, reference, version=version,
                                metric=spec.metric)
    if isinstance(found, str):
        return TriggerCheck(RetrainTrigger.ESTIMATED_FLOOR, False,
                            f"estimated {spec.metric}: {found}", inactive=True)
    estimate = found.estimate
    evidence = EstimatedEvidence(
        metric=spec.metric, value=estimate.value, lower=estimate.lower, upper=estimate.upper,
        below=spec.below, rows=estimate.n, min_rows=spec.min_rows, version=version,
        reference_rows=found.reference_rows, calibration_error=found.calibration_error,
        calibrator=found.calibrator, start=start, end=end)
    fired = estimate.upper < spec.below
    reason = (f"estimated {spec.metric} {estimate.value:.4f} "
              f"[{estimate.lower:.4f}, {estimate.upper:.4f}] over {estimate.n} unlabelled rows: "
              f"{'the whole interval is' if fired else 'the interval is not all'} below "
              f"{spec.below:g} (last {spec.window})")
    return TriggerCheck(RetrainTrigger.ESTIMATED_FLOOR, fired, reason, evidence)


@dataclasses.dataclass(frozen=True, slots=True)
class ProductionEstimate:
    """A CBPE estimate of one version's rows and the labelled reference it was fitted on."""

    estimate: EstimatedPerformance
    reference_rows: int
    calibration_error: float
    calibrator: str


def production_estimate(monitor: Monitor, endpoint: str, current: pd.DataFrame,
                        reference: pd.DataFrame, *, version: int | None, metric: str
                        ) -> ProductionEstimate | str:
    """CBPE of ``metric`` on ``current`` (scored rows, :meth:`Feedback.scored_rows`), fitted
    on ``reference`` (labelled scored rows logged before them), both narrowed to ``version``
    and to rows with a probability; or the reason it cannot be estimated: no labelled
    reference rows, not two classes, or the estimator refused (too few rows, calibration).

    The one fitting of the estimator on production rows: the estimated trigger and the
    ``/estimated`` monitoring route both call it.
    """
    import numpy as np

    from mlharbor.monitoring.estimation import fit_estimator

    current = current[current["score"].notna()]
    reference = reference[reference["score"].notna()]
    if version is not None:
        current = current[current["version"] == version]
        reference = reference[reference["version"] == version]
    if reference.empty:
        return (f"no labelled production rows of version {version} before the window to "
                "check calibration on")
    classes = _classes(monitor, endpoint, reference, current)
    if len(classes) != 2:
        return f"only two-class models are estimated (this one has {len(classes)} classes)"
    try:
        estimator = fit_estimator(_texts(reference["label"]),
                                  reference["score"].to_numpy(dtype=np.float64),
                                  classes=classes, pos_label=classes[-1],
                                  predictions=_texts(reference["prediction"]))
        estimate = estimator.estimate(current["score"].to_numpy(dtype=np.float64), metric,
                                      predictions=_texts(current["prediction"]))
    except MlharborError as exc:
        return f"the estimate was refused: {exc.message}"
    return ProductionEstimate(estimate, estimator.check.reference_rows, estimator.check.error,
                              estimator.check.calibrator)


def schedule_check(expression: str, jobs: JobStore, registry: Registry | None, endpoint: str,
                   now: datetime) -> TriggerCheck:
    """Due once the cron's first time after the last scheduled job (else after the policy was
    last applied) has come."""
    from mlharbor.pipelines.cron import parse_cron

    last_run = last_scheduled(jobs, endpoint)
    since = last_run
    if since is None:
        since = _policy_time(registry, endpoint) or now
    due = parse_cron(expression).next_after(since)
    evidence = ScheduleEvidence(expression, due, since, last_run)
    fired = due <= now
    reason = (f"schedule {expression!r} was due at {due:%Y-%m-%d %H:%M} UTC" if fired else
              f"schedule {expression!r} is next due at {due:%Y-%m-%d %H:%M} UTC")
    return TriggerCheck(RetrainTrigger.SCHEDULE, fired, reason, evidence)


def last_scheduled(jobs: JobStore, endpoint: str) -> datetime | None:
    """When the endpoint's newest scheduled job was asked for (its request's ``at``)."""
    for job in jobs.list_jobs(endpoint=endpoint, limit=SCHEDULE_LOOKBACK):
        if job.request.get("trigger") == RetrainTrigger.SCHEDULE.value:
            return _started(job)
    return None


# -- helpers ----------------------------------------------------------------------------------

def _active_and_last(jobs: JobStore, endpoint: str) -> tuple[Job | None, Job | None]:
    """The endpoint's active job (if any) and the job that started last (by request time)."""
    from mlharbor.pipelines.jobstates import ACTIVE_STATES

    recent = jobs.list_jobs(endpoint=endpoint, limit=20)
    active = next((j for j in recent if j.state in ACTIVE_STATES), None)
    last = max(recent, key=_started, default=None)
    return active, last


def _started(job: Job) -> datetime:
    """When a job was asked for: its request's ``at`` (the trigger's clock), else its row's."""
    text = job.request.get("at")
    if isinstance(text, str):
        try:
            return _utc(datetime.fromisoformat(text))
        except ValueError:
            pass
    return _utc(job.created_at)


def _policy_time(registry: Registry | None, endpoint: str) -> datetime | None:
    if registry is None:
        return None
    from mlharbor.registry.policies import PolicyService

    stored = PolicyService(registry).find(endpoint)
    return _utc(stored.updated_at) if stored else None


def _main_version(frame: pd.DataFrame) -> int | None:
    versions = frame["version"].dropna()
    return None if versions.empty else int(versions.value_counts().idxmax())


def _classes(monitor: Monitor, endpoint: str, reference: pd.DataFrame, current: pd.DataFrame
             ) -> tuple[str, ...]:
    """The classifier's classes as canonical text, in the model's order (the logged score is
    the probability of the last); without a declared order, sorted as scikit-learn sorts."""
    from mlharbor.monitoring.labels import expected_labels, label_text

    spec = expected_labels(monitor.registry, endpoint, monitor.log)
    if spec is not None and spec.classes:
        return tuple(label_text(c) for c in spec.classes)
    values = set(_texts(reference["label"])) | set(_texts(reference["prediction"])) | set(
        _texts(current["prediction"]))
    return tuple(sorted(values))


def _texts(values: Iterable[Any]) -> Any:
    import numpy as np

    from mlharbor.monitoring.labels import label_text

    return np.asarray([label_text(v) for v in values], dtype=object)


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


# -- the loop ---------------------------------------------------------------------------------

class TriggerLoop:
    """Evaluates every stored policy every ``interval_s`` and submits the jobs that are due.

    One bad policy (unreadable spec, a failing read) is logged and skipped; the others are
    still evaluated. Several servers may run a loop on one database: the job store's unique
    index lets one of simultaneous submissions create a job, and the cooldown re-check after
    creation cancels a job that slipped past (see the module docstring).
    """

    def __init__(self, registry: Registry, monitor: Monitor, *, interval_s: float,
                 notify: Notify | None = None, plan: Iterable[str] | None = None,
                 clock: Callable[[], datetime] | None = None) -> None:
        from mlharbor.core.clock import utcnow
        from mlharbor.core.errors import InvalidInputError
        from mlharbor.pipelines.jobstore import JobStore

        if not interval_s > 0:
            raise InvalidInputError(f"interval_s must be positive; received {interval_s!r}.",
                                    field="pipelines.trigger_interval_s")
        self.registry = registry
        self.monitor = monitor
        self.jobs = JobStore(registry.store)
        self.interval_s = float(interval_s)
        self.notify = notify
        self.plan = tuple(plan) if plan is not None else None
        self.clock = clock or utcnow
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def from_settings(cls, settings: Any, registry: Registry, monitor: Monitor, *,
                      plan: Iterable[str] | None = None) -> TriggerLoop:
        """The loop of ``settings``: its interval, and the alert webhooks as notifier."""
        from mlharbor.monitoring.notify import Webhooks

        mon = settings.monitoring
        hooks = Webhooks(mon.webhooks, mon.slack_webhooks)
        notify = hooks if (mon.webhooks or mon.slack_webhooks) else None
        return cls(registry, monitor, interval_s=settings.pipelines.trigger_interval_s,
                   notify=notify, plan=plan)

    # -- one pass -------------------------------------------------------------------------

    def tick(self, now: datetime | None = None) -> list[TriggerVerdict]:
        """Evaluate every stored policy at ``now`` and submit what is due; the verdicts."""
        from mlharbor.pipelines.policy import policy_from_dict
        from mlharbor.registry.policies import PolicyService

        now = _utc(now or self.clock())
        verdicts = []
        for stored in PolicyService(self.registry).list_policies():
            try:
                policy = policy_from_dict(stored.spec, source=f"policy of {stored.endpoint}")
                if not policy.triggers.automatic:
                    continue
                verdict = evaluate_triggers(policy, self.monitor, self.jobs, now)
                verdicts.append(verdict)
                if verdict.due:
                    self.submit(policy, verdict)
            except Exception:  # one bad policy never stops the others
                log.exception("trigger loop: the policy of %s could not be evaluated; "
                              "skipped", stored.endpoint)
        return verdicts

    def submit(self, policy: Policy, verdict: TriggerVerdict) -> Job | None:
        """Submit the job ``verdict`` asks for; the new job, or None when none was created."""
        from mlharbor.pipelines.submit import submit_retrain

        trigger = verdict.trigger
        if trigger is None:
            return None
        job, created = submit_retrain(self.registry, policy.endpoint, trigger=trigger,
                                      reason=verdict.reason()[:2000], actor=ACTOR,
                                      at=verdict.at, plan=self.plan)
        if not created:
            log.info("trigger loop: %s already has job %s; nothing submitted",
                     policy.endpoint, job.id)
            return None
        earlier = self._earlier_within_cooldown(job, policy, verdict.at)
        if earlier is not None:
            log.info("trigger loop: job %s of %s cancelled: job %s started within the "
                     "cooldown (submitted by another process)", job.id, policy.endpoint,
                     earlier.id)
            self.jobs.cancel(job.id, actor=ACTOR)
            return None
        log.info("trigger loop: job %s submitted for %s (%s)", job.id, policy.endpoint,
                 verdict.reason())
        self._notify(job, verdict)
        return job

    def _earlier_within_cooldown(self, job: Job, policy: Policy, now: datetime) -> Job | None:
        """A job of the endpoint created before ``job`` that started within the cooldown."""
        since = now - policy.triggers.cooldown_delta
        for other in self.jobs.list_jobs(endpoint=policy.endpoint, limit=20):
            if other.id == job.id:
                continue
            before = (other.created_at, other.id) < (job.created_at, job.id)
            if before and _started(other) > since:
                return other
        return None

    def _notify(self, job: Job, verdict: TriggerVerdict) -> None:
        if self.notify is None:
            return
        from mlharbor.core.loop import RetrainRequest

        trigger = verdict.trigger or RetrainTrigger.MANUAL
        key = RetrainRequest(verdict.endpoint, trigger, "", None, ACTOR, verdict.at).dedupe_key
        event = {
            "alert": f"retrain-{verdict.endpoint}", "kind": "retrain", "state": "firing",
            "severity": "info", "endpoint": verdict.endpoint, "job_id": job.id,
            "trigger": trigger.value, "dedupe_key": key, "at": verdict.at.isoformat(),
            "summary": f"retraining {verdict.endpoint}: job {job.id} submitted "
                       f"({verdict.reason()})",
            "verdict": verdict.to_dict(),
        }
        try:
            self.notify(event)
        except Exception:  # a webhook outage never stops the loop
            log.exception("trigger loop: notifying job %s failed", job.id)

    # -- the thread -----------------------------------------------------------------------

    def start(self) -> TriggerLoop:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self.run, args=(self._stop,), daemon=True,
                                            name="mlharbor-triggers")
            self._thread.start()
        return self

    def stop(self, timeout: float | None = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def run(self, stop: threading.Event) -> None:
        """Tick every ``interval_s`` until ``stop`` is set; an error in a tick is logged."""
        while not stop.is_set():
            try:
                self.tick()
            except Exception:  # the database is down, say: try again next time
                log.exception("trigger loop: a pass failed; retrying in %.0f s",
                              self.interval_s)
            stop.wait(self.interval_s)
