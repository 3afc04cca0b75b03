"""The ``retrain`` job kind: snapshot the data, train a challenger, validate it.

Steps (each idempotent, see :mod:`mlharbor.pipelines.jobs`), then any rollout steps::

    snapshot  champion's data (lineage, fingerprint-checked) + labelled production rows of the
              policy's window, or a new dataset URI -> one Parquet file in the artifact store,
              recorded as a DatasetSnapshot; the base version (the champion) is fixed here
    train     the base's recipe from its lineage with the policy's overrides, trained on the
              snapshot by the training pipeline; the winner is registered as a version tagged
              ``mlharbor.job=<job id>`` (status ``failed`` when a gate fails), no alias moved;
              with a tracker, the training is a run in the model's experiment with a child
              per candidate and search point, tagged with the job, endpoint and trigger, and
              the version and the run name each other (:mod:`.retrain_runs`)
    validate  the gates judged on one holdout -- the recipe's, the policy's extra ones, and
              always the naive baseline and the champion -- into an EvaluationReport; a
              challenger that fails is tagged ``mlharbor.verdict=rejected`` with the reason and
              the job fails; one that passes gets the ``challenger`` alias (never ``champion``)
    [rollout] steps given to :func:`retrain_kind` (shadow, canary, promote ...) read the
              challenger from ``ctx.results["validate"]["challenger"]`` (``name:N``) and the
              champion it was judged against from ``ctx.results["validate"]["base"]``.

**Crash safety.** ``snapshot`` notes the stored snapshot and reuses it on a re-run (the file is
content-addressed, so writing it twice stores it once). ``train`` notes the version right
after registering and, on a re-run, finds a version registered by this job by its tag even
when the crash fell between registering and noting, so a job registers at most one version;
the run an earlier attempt left open is linked to that version, or ended KILLED when the
re-run has to train again.
``validate`` only tags and sets an alias to the same values again.

The policy (:class:`~mlharbor.pipelines.policy.Policy`) comes from ``policy_for(job)``; the
default is the policy defaults for the job's endpoint.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlharbor.core.errors import (
    ConfigError,
    ConflictError,
    InvalidInputError,
    MlharborError,
    NotFoundError,
)
from mlharbor.core.loop import RetrainRequest, RetrainTrigger
from mlharbor.core.records import (
    DatasetPart,
    EvaluationReport,
    GateResult,
    ModelVersion,
    VersionStatus,
    to_dict,
)
from mlharbor.pipelines.jobs import CancelRequested, Job, JobKind, LeaseLost, Step, StepContext

if TYPE_CHECKING:
    import pandas as pd

    from mlharbor.monitoring.feedback import Feedback
    from mlharbor.pipelines.policy import Policy
    from mlharbor.pipelines.rollout import RolloutTarget
    from mlharbor.pipelines.train_runs import TrainingRecorder
    from mlharbor.registry.service import Registry
    from mlharbor.settings import Settings
    from mlharbor.tracking.fluent import Tracker
    from mlharbor.training.recipe import Recipe

log = logging.getLogger(__name__)

JOB_KIND = "retrain"
RETRAIN_STEPS = ("snapshot", "train", "validate")
#: Tag of a version registered by a job: the job's id. How a re-run finds its registration.
JOB_TAG = "mlharbor.job"
#: Tags the validate step writes: ``validated`` or ``rejected``, and why it was rejected.
VERDICT_TAG = "mlharbor.verdict"
REASON_TAG = "mlharbor.reason"
CHALLENGER_ALIAS = "challenger"
#: Gates every challenger faces, added when the recipe has none of their kind.
BASELINE_GATE = "better than baseline"
CHAMPION_GATE = "not worse than champion by more than 0.01"

PolicyFor = Callable[[Job], "Policy"]


class ValidationFailed(ConflictError):
    """The challenger did not pass validation; it is tagged rejected and nothing moves."""

    code = "validation_failed"


# -- the request ------------------------------------------------------------------------------

def request_of(job: Job) -> RetrainRequest:
    """The job's request as a :class:`RetrainRequest` (InvalidInputError names a bad field).

    Missing fields take defaults: a manual trigger, the job's creator and creation time.
    """
    body = job.request
    try:
        trigger = RetrainTrigger(body.get("trigger", RetrainTrigger.MANUAL.value))
    except ValueError as exc:
        known = ", ".join(t.value for t in RetrainTrigger)
        raise InvalidInputError(f"Job {job.id}: unknown trigger {body.get('trigger')!r}; "
                                f"expected one of {known}.", field="trigger") from exc
    revision = body.get("policy_revision")
    if revision is not None and (isinstance(revision, bool) or not isinstance(revision, int)):
        raise InvalidInputError(f"Job {job.id}: policy_revision must be a whole number; "
                                f"received {revision!r:.40}.", field="policy_revision")
    return RetrainRequest(
        endpoint=job.endpoint, trigger=trigger, reason=_text(body, "reason", job) or "",
        base_ref=_text(body, "base_ref", job), requested_by=_text(body, "requested_by", job)
        or job.created_by, at=_time(body, "at", job) or job.created_at,
        policy_revision=revision, data_since=_time(body, "data_since", job),
        data_until=_time(body, "data_until", job), dataset_uri=_text(body, "dataset_uri", job))


def _text(body: Mapping[str, Any], key: str, job: Job) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise InvalidInputError(f"Job {job.id}: {key} must be text; received "
                                f"{type(value).__name__}.", field=key)
    return value


def _time(body: Mapping[str, Any], key: str, job: Job) -> datetime | None:
    from datetime import UTC

    value = _text(body, key, job)
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise InvalidInputError(f"Job {job.id}: {key} must be an ISO 8601 time; received "
                                f"{value!r:.60}.", field=key) from exc
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def default_policy(job: Job) -> Policy:
    """The policy defaults for the job's endpoint (when no stored policy is given)."""
    from mlharbor.pipelines.policy import Policy

    return Policy(endpoint=job.endpoint)


# -- the steps --------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Retrainer:
    """The three steps over one registry, the settings and the feedback store."""

    registry: Registry
    settings: Settings
    feedback: Feedback | None = None
    policy_for: PolicyFor = default_policy
    tracker: Tracker | None = None  # records the train step's training as a run

    def steps(self) -> tuple[Step, ...]:
        return (Step("snapshot", self.snapshot), Step("train", self.train),
                Step("validate", self.validate))

    # -- snapshot ------------------------------------------------------------------------

    def snapshot(self, ctx: StepContext) -> dict[str, Any]:
        """Assemble, store and record the training rows; fix the base version."""
        from mlharbor.pipelines.snapshot import ARTIFACT_PREFIX, align, store_snapshot

        noted = ctx.progress.get("result")
        if isinstance(noted, dict) and self.registry.artifacts.exists(
                str(noted["snapshot"]["uri"]).removeprefix(ARTIFACT_PREFIX)):
            return noted  # stored before a crash: the same rows, already recorded
        request, policy = request_of(ctx.job), self.policy_for(ctx.job)
        base = self._base(ctx.job, request, policy)
        schema = base.lineage.get("schema")
        if not isinstance(schema, dict) or "target" not in schema:
            raise InvalidInputError(
                f"Version {base.ref} has no stored schema (target and features) in its "
                "lineage; only versions trained by mlharbor can be retrained.")
        target, features = str(schema["target"]), [str(f) for f in schema.get("features", {})]
        parts = self._sources(request, policy, base)
        until = request.data_until or request.at
        since = request.data_since
        if since is None and policy.data.production_delta is not None:
            since = until - policy.data.production_delta
        window = None
        if since is not None:
            rows = self._production(ctx.job.endpoint, since, until, target)
            window = {"start": since.isoformat(), "end": until.isoformat(), "rows": len(rows)}
            if len(rows):
                parts.append((_part("production", f"endpoint:{ctx.job.endpoint}"
                                    f"[{since.isoformat()},{until.isoformat()})", rows), rows))
        if not parts:
            raise InvalidInputError(
                f"No training rows for {ctx.job.endpoint}: no champion data, no dataset URI "
                f"and no labelled production rows in the window ({window}).",
                hint="Send feedback labels, widen data.production_window or set data.uri.")
        ctx.check()
        recorded = (base.lineage.get("dataset") or {}).get("columns") or []
        frame = align(parts, target=target, features=features,
                      columns=[str(c) for c in recorded])
        if len(frame) < policy.data.min_rows:
            raise InvalidInputError(
                f"The snapshot for {ctx.job.endpoint} has {len(frame)} rows; the policy asks "
                f"for at least {policy.data.min_rows} (data.min_rows).",
                hint="Wait for more labelled rows or lower data.min_rows.")
        snapshot = store_snapshot(self.registry, frame, target=target,
                                  parts=[part for part, _ in parts], created_at=_now())
        result = {"snapshot": to_dict(snapshot), "base": base.ref, "model": base.name,
                  "champion_alias": policy.champion_alias, "window": window}
        ctx.note(result=result)
        return result

    def _base(self, job: Job, request: RetrainRequest, policy: Policy) -> ModelVersion:
        """The version whose recipe and data are retrained, resolved once to ``name:N``."""
        ref = request.base_ref
        if ref is None and policy.model is not None:
            ref = f"{policy.model}@{policy.champion_alias}"
        if ref is None:
            from mlharbor.core.refs import ModelRef
            from mlharbor.registry.endpoints import EndpointService

            try:
                endpoint = EndpointService(self.registry).get(job.endpoint)
            except NotFoundError as exc:
                raise NotFoundError(
                    f"Endpoint {job.endpoint!r} is not stored, so its champion is unknown.",
                    hint="Set `model` in the policy or base_ref in the request.") from exc
            route = max(endpoint.spec.routes, key=lambda r: r.weight)
            ref = f"{ModelRef.parse(route.ref).name}@{policy.champion_alias}"
        return self.registry.get_version(ref)

    def _sources(self, request: RetrainRequest, policy: Policy, base: ModelVersion
                 ) -> list[tuple[DatasetPart, pd.DataFrame]]:
        from mlharbor.pipelines.snapshot import champion_data, new_dataset

        uri = request.dataset_uri or policy.data.uri
        if uri is not None:
            dataset = new_dataset(uri, self.settings)
            kind = "dataset_uri"
        elif policy.data.champion_data:
            dataset = champion_data(self.registry, base, self.settings)
            kind = "champion_data"
        else:
            return []
        return [(DatasetPart(kind, dataset.uri, dataset.fingerprint, dataset.rows),
                 dataset.frame)]

    def _production(self, endpoint: str, since: datetime, until: datetime,
                    target: str) -> pd.DataFrame:
        if self.feedback is None:
            raise ConfigError(
                "The policy asks for labelled production rows (data.production_window) but "
                "this job runner has no feedback store.",
                hint="Run jobs in `mlharbor server` or a worker sharing the monitoring store, "
                     "or set data.production_window: null.")
        return self.feedback.labelled_rows(endpoint, start=since, end=until, target=target)

    # -- train ---------------------------------------------------------------------------

    def train(self, ctx: StepContext) -> dict[str, Any]:
        """Train on the snapshot and register the winner once (tagged with the job id); with
        a tracker, the training is a run (:mod:`mlharbor.pipelines.retrain_runs`)."""
        from mlharbor.pipelines.retrain_runs import JobRuns
        from mlharbor.pipelines.train_runs import RUN_ID_TAG

        made = ctx.results["snapshot"]
        base = self.registry.get_version(made["base"])
        version = self._registered(ctx, base.name)
        reused = version is not None
        runs = JobRuns(self.tracker) if self.tracker is not None else None
        if runs is not None:
            runs.settle(ctx, version)  # what an attempt its runner died in left open
        if version is None:
            recorder = runs.recorder(ctx, request_of(ctx.job), base) if runs else None
            try:
                version = self._train_and_register(ctx, base, made, recorder)
            except CancelRequested as exc:
                if recorder is not None:
                    recorder.close(exc, killed=True, reason=f"Job {ctx.job.id} was "
                                   "cancelled while it trained.")
                raise
            except BaseException as exc:
                if recorder is not None:  # a taken-over job's run was KILLED, others FAILED
                    recorder.close(exc, killed=isinstance(exc, LeaseLost))
                raise
            if recorder is not None:
                recorder.close()  # the version exists: the run's work is done
            ctx.note(version=version.ref)
        result = {"version": version.ref, "status": version.status.value, "reused": reused,
                  "winner": version.params.get("candidate"), "base": base.ref}
        if version.tags.get(RUN_ID_TAG):
            result["run_id"] = version.tags[RUN_ID_TAG]
            result["experiment"] = base.name  # the run's experiment (retrain_runs.py)
        return result

    def _train_and_register(self, ctx: StepContext, base: ModelVersion,
                            made: Mapping[str, Any], recorder: TrainingRecorder | None
                            ) -> ModelVersion:
        """Train the challenger on the snapshot (recorded by ``recorder``) and register it."""
        from mlharbor.pipelines import train_job
        from mlharbor.pipelines.snapshot import (
            read_snapshot,
            snapshot_from_dict,
            unseen_by_champion,
        )
        from mlharbor.pipelines.train_runs import version_links
        from mlharbor.training.backend import choose_backend

        snapshot = snapshot_from_dict(made["snapshot"])
        policy = self.policy_for(ctx.job)
        recipe = challenger_recipe(base, policy)
        dataset = read_snapshot(self.registry, snapshot.uri, snapshot.fingerprint)
        # the champion is judged on rows it never trained on (see unseen_by_champion)
        schema = base.lineage.get("schema") or {}
        compared = [c for c in (*schema.get("features", {}), schema.get("target"))
                    if c in dataset.frame.columns]
        unseen = unseen_by_champion(dataset.frame, snapshot.parts, columns=compared,
                                    holdout=recipe.validation.holdout)
        dataset = dataclasses.replace(dataset, holdout_from=unseen)
        champion, error = self._champion(base)
        ctx.check()
        # where the fits run: the recipe's `training` section, else the settings (a
        # retraining job on `mlharbor worker` uses the cluster its settings name)
        backend, scheduler = choose_backend(
            recipe, default_backend=self.settings.training.backend,
            default_scheduler=self.settings.training.scheduler)
        outcome = train_job.run_training(
            recipe, dataset=dataset, champion=champion, champion_ref=base.ref,
            champion_error=error, n_jobs=self.settings.training.n_jobs,
            backend=backend, scheduler=scheduler,
            s3_endpoint_url=self.settings.s3_endpoint_url,
            s3_region=self.settings.s3_region,
            trusted_types=self.settings.formats.skops_trusted_types, recorder=recorder)
        ctx.check()
        run_id = recorder.run_id if recorder is not None else None
        if recorder is not None:
            recorder.finish(outcome)
        failed = outcome.failed_gates
        reason = "; ".join(f"gate {v.gate!r} failed: {v.detail}" for v in failed) or None
        tags, lineage = version_links(run_id)  # with a run: each names the other
        version: ModelVersion = train_job.register_outcome(
            self.registry, base.name, outcome, settings=self.settings,
            actor=_actor(ctx.job), status="failed" if failed else "ready",
            status_reason=reason, tags={JOB_TAG: ctx.job.id, **tags},
            lineage={"retrain": {
                "job": ctx.job.id, "base": base.ref, "snapshot": made["snapshot"],
                # how the holdout mask was made, so the split can be made again from the
                # snapshot: the rows after the champion's whose `compared` columns repeat
                # none of its rows (None: no mask)
                "holdout_from": None if unseen is None else {
                    "rule": "unseen_by_champion", "columns": compared,
                    "rows": int(unseen.sum())}},
                **lineage})
        if recorder is not None:
            recorder.registered(version.ref)
        return version

    def _registered(self, ctx: StepContext, name: str) -> ModelVersion | None:
        """The version this job registered before a crash, if any (noted, else by its tag).

        Only complete registrations count: a version left ``registering`` or failed without
        files by an interrupted upload holds nothing to reuse.
        """
        noted = ctx.progress.get("version")
        if isinstance(noted, str):
            return self.registry.get_version(noted)
        page = self.registry.list_versions(name, tags={JOB_TAG: ctx.job.id})
        done = [v for v in page.items if v.files
                and v.status in (VersionStatus.READY, VersionStatus.FAILED)]
        if done:
            found = max(done, key=lambda v: v.version)
            log.info("job %s: reusing %s, registered before its runner stopped", ctx.job.id,
                     found.ref)
            ctx.note(version=found.ref)
            return found
        return None

    def _champion(self, base: ModelVersion) -> tuple[Any, str | None]:
        """The base version loaded for the comparison, or why it could not be (gates fail)."""
        from mlharbor.registry.bundles import load_predictor

        try:
            return load_predictor(self.registry, base.ref, self.settings), None
        except MlharborError as exc:
            return None, f"loading {base.ref} failed: {exc}"

    # -- validate ------------------------------------------------------------------------

    def validate(self, ctx: StepContext) -> dict[str, Any]:
        """Judge the challenger; reject it (tag + failed job) or give it the challenger alias."""
        made, trained = ctx.results["snapshot"], ctx.results["train"]
        version = self.registry.get_version(trained["version"])
        base = self.registry.get_version(made["base"])
        report = evaluation_report(version)
        problems = [f"gate {g.gate!r} failed: {g.detail}" for g in report.gates if not g.passed]
        problems += self._consistency(version, base, made, report)
        if version.status is not VersionStatus.READY and not problems:
            problems.append(f"{version.ref} is {version.status.value}: "
                            f"{version.status_reason or 'no reason recorded'}")
        actor = _actor(ctx.job)
        if problems:
            reason = "; ".join(problems)
            self.registry.update_version(version.ref, tags={
                VERDICT_TAG: "rejected", REASON_TAG: reason[:5000]}, actor=actor)
            raise ValidationFailed(
                f"Challenger {version.ref} was rejected at validation: {reason}.",
                hint="Nothing was promoted; the champion keeps all traffic.",
                version=version.ref, reason=reason)
        self.registry.update_version(version.ref, tags={VERDICT_TAG: "validated"}, actor=actor)
        model = self.registry.get_model(version.name)
        if model.aliases.get(CHALLENGER_ALIAS) != version.version:
            self.registry.set_alias(
                version.name, CHALLENGER_ALIAS, version.version, actor=actor,
                reason=f"job {ctx.job.id}: passed validation against {base.ref} and the "
                       f"baseline")
        body: dict[str, Any] = to_dict(dataclasses.replace(report, passed=True, reason=None))
        return {**body, "challenger": version.ref, "base": base.ref}

    def _consistency(self, version: ModelVersion, base: ModelVersion, made: Mapping[str, Any],
                     report: EvaluationReport) -> list[str]:
        """What would make the verdict meaningless: the wrong data, rival or champion."""
        from mlharbor.evaluation.gates import parse_gate

        problems = []
        trained_on = (version.lineage.get("dataset") or {}).get("fingerprint")
        if trained_on != made["snapshot"]["fingerprint"]:
            problems.append(f"{version.ref} was trained on {trained_on}, not on the job's "
                            f"snapshot {made['snapshot']['fingerprint']}")
        task = (version.lineage.get("schema") or {}).get("task") or "classification"
        kinds = set()
        for gate in report.gates:
            try:
                kinds.add(parse_gate(gate.gate, task).kind)
            except MlharborError:
                continue
        if "baseline" not in kinds:
            problems.append("no gate compared it with the naive baseline")
        if not kinds & {"champion", "champion_margin"}:
            problems.append("no gate compared it with the champion")
        if report.champion_ref not in (None, base.ref):
            problems.append(f"it was compared with {report.champion_ref}, not {base.ref}")
        alias = str(made.get("champion_alias") or "champion")
        try:
            current = self.registry.get_version(f"{version.name}@{alias}")
        except NotFoundError:
            current = None
        if current is not None and current.version != base.version:
            problems.append(f"the {alias} moved to {current.ref} while the job ran (it was "
                            f"judged against {base.ref}); retrain again")
        return problems


def challenger_recipe(base: ModelVersion, policy: Policy) -> Recipe:
    """The base's recipe from its lineage with the policy's overrides deep-merged, registering
    under the base's name, with the baseline, champion and policy gates added."""
    from mlharbor.evaluation.gates import parse_gate
    from mlharbor.training.recipe import recipe_from_dict

    stored = base.lineage.get("recipe")
    if not isinstance(stored, dict):
        raise InvalidInputError(
            f"Version {base.ref} has no stored recipe in its lineage, so it cannot be "
            "retrained; it was not registered by `mlharbor train`.")
    merged = policy.recipe.apply(stored)
    task = (base.lineage.get("schema") or {}).get("task") or "classification"
    gates = [str(g) for g in merged.get("gates") or []]
    kinds = {_kind(g, task) for g in gates}
    if "baseline" not in kinds:
        gates.append(BASELINE_GATE)
    if not kinds & {"champion", "champion_margin"}:
        gates.append(CHAMPION_GATE)
    gates += [g for g in policy.validation.gates if g not in gates]
    for gate in gates:
        parse_gate(gate, task)  # a bad override fails here, before any data is read
    register = dict(merged.get("register") or {})
    register["name"] = base.name
    merged.update(gates=gates, register=register)
    return recipe_from_dict(merged, source=f"recipe of {base.ref} with the policy's overrides",
                            base_dir=Path(base.lineage.get("recipe_base_dir") or "."))


def _kind(gate: str, task: str) -> str | None:
    from mlharbor.evaluation.gates import parse_gate

    try:
        return parse_gate(gate, task).kind
    except ConfigError:
        return None  # the recipe check names it with its line


def evaluation_report(version: ModelVersion) -> EvaluationReport:
    """The :class:`EvaluationReport` of a version registered by the training pipeline."""
    ev = version.lineage.get("evaluation")
    if not isinstance(ev, dict) or "gates" not in ev:
        raise InvalidInputError(f"Version {version.ref} has no evaluation in its lineage; it "
                                "was not trained by mlharbor.")
    champion = ev.get("champion") or None
    gates = tuple(GateResult(str(g["gate"]), bool(g["passed"]), str(g["detail"]))
                  for g in ev["gates"])
    failed = [g for g in gates if not g.passed]
    return EvaluationReport(
        ref=version.ref, primary_metric=str(ev.get("primary_metric")),
        metrics=_numbers((ev.get("holdout") or {}).get("metrics")),
        baseline=_numbers(((ev.get("baseline") or {}).get("holdout") or {}).get("metrics")),
        champion_ref=champion.get("ref") if champion else None,
        champion=_numbers((champion.get("holdout") or {}).get("metrics"))
        if champion and "holdout" in champion else None,
        gates=gates, passed=not failed,
        reason="; ".join(f"gate {g.gate!r} failed: {g.detail}" for g in failed) or None,
        holdout_rows=(ev.get("splits") or {}).get("holdout_rows"))


def _numbers(values: Any) -> dict[str, float]:
    if not isinstance(values, dict):
        return {}
    return {str(k): float(v) for k, v in values.items()
            if isinstance(v, int | float) and not isinstance(v, bool)}


def _part(kind: str, uri: str, frame: pd.DataFrame) -> DatasetPart:
    from mlharbor.data.loading import fingerprint_frame

    return DatasetPart(kind, uri, fingerprint_frame(frame), len(frame))


def _actor(job: Job) -> str:
    return f"job:{job.id}"


def _now() -> datetime:
    from mlharbor.core.clock import utcnow

    return utcnow()


# -- the hook for rollout steps ---------------------------------------------------------------

def rollout_target(ctx: StepContext, registry: Registry) -> RolloutTarget:
    """A :data:`~mlharbor.pipelines.rollout.TargetResolver` for rollout steps that follow
    ``validate`` in a retrain job: ``Rollout(spec, ..., target=rollout_target).steps()``."""
    return target_from_results(ctx.results, registry)


def target_from_results(results: Mapping[str, Any], registry: Registry) -> RolloutTarget:
    """The challenger ``validate`` passed and the champion it was judged against."""
    from mlharbor.pipelines.rollout import RolloutTarget

    validated, made = results.get("validate"), results.get("snapshot")
    if not isinstance(validated, Mapping) or not isinstance(made, Mapping):
        raise InvalidInputError("Rollout steps of a retrain job run after 'snapshot' and "
                                "'validate'; their results are missing.")
    challenger = registry.get_version(str(validated["challenger"]))
    base = registry.get_version(str(validated["base"]))
    return RolloutTarget(challenger.name, str(made.get("champion_alias") or "champion"),
                         champion=base.version, challenger=challenger.version)


# -- the kind ---------------------------------------------------------------------------------

def retrain_steps(retrainer: Retrainer, rollout: Sequence[Step] = ()) -> tuple[Step, ...]:
    """snapshot, train, validate, then ``rollout`` (the hook for pipelines/rollout.py)."""
    steps = retrainer.steps()
    clash = {s.name for s in rollout} & set(RETRAIN_STEPS)
    if clash:
        raise InvalidInputError(f"Rollout steps may not reuse the names {sorted(clash)}.")
    return (*steps, *rollout)


def retrain_kind(
    registry: Registry, settings: Settings, *, feedback: Feedback | None = None,
    policy_for: PolicyFor | None = None, rollout: Sequence[Step] = (),
    tracker: Tracker | None = None,
) -> JobKind:
    """The ``retrain`` :class:`JobKind` for a :class:`~mlharbor.pipelines.jobs.JobRunner`.

    ``feedback`` gives labelled production rows (none: a policy asking for them fails the
    job clearly); ``policy_for(job)`` the endpoint's policy (default: the policy defaults);
    ``rollout`` the steps that follow validation, e.g.
    ``Rollout(policy.rollout, registry=..., signals=..., target=rollout_target).steps()``
    (:mod:`mlharbor.pipelines.rollout`), which then roll out the challenger ``validate``
    passed instead of one named in the request. With ``tracker``, each job's training is
    recorded as a run (:mod:`mlharbor.pipelines.retrain_runs`), as ``mlharbor train``'s is.
    """
    retrainer = Retrainer(registry, settings, feedback, policy_for or default_policy, tracker)
    return JobKind(JOB_KIND, retrain_steps(retrainer, rollout))


__all__ = [
    "BASELINE_GATE", "CHALLENGER_ALIAS", "CHAMPION_GATE", "JOB_KIND", "JOB_TAG", "REASON_TAG",
    "RETRAIN_STEPS", "VERDICT_TAG", "Retrainer", "ValidationFailed", "challenger_recipe",
    "evaluation_report", "request_of", "retrain_kind", "retrain_steps", "rollout_target",
    "target_from_results",
]
