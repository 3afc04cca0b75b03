"""Rollout: the steps that take a validated challenger to traffic, then promote or roll back.

:func:`rollout_steps` turns a policy's :class:`~mlharbor.pipelines.policy.RolloutSpec` into
job-runner steps (:mod:`mlharbor.pipelines.jobs`), appended by the retrain job after its
validate step (or run alone, as the tests do)::

    shadow        (optional) the challenger is the endpoint's shadow; agreement, latency and
                  error rate (its failed copies vs the primary's fallbacks: the canary's
                  error-rate test at level ``alpha``)
    approval      (optional) the job waits (``waiting``, no thread held) for `jobs approve`
    canary-5 ...  one step per canary percent: move the weights, hold, judge the guards
    ab-look-1 ... (``mode: ab``, instead of the canary) the looks of an A/B experiment
    promote       the champion alias moves to the challenger, all traffic to the alias

Each step returns a :class:`~mlharbor.core.loop.RolloutDecision` (``decision`` in the step's
result, with the endpoint revision the rollout last wrote). A step that rolls back stores its
decision on the failed step (:class:`~mlharbor.pipelines.jobs.StepFailed`) and the job ends
``failed`` with the reason.

**Endpoint moves.** Every change to the endpoint is one ``EndpointService.update`` with
``expected_revision`` = the revision this rollout wrote last (If-Match), so a human's edit in
between is a conflict that stops the rollout, never a silent overwrite. A move is idempotent:
it first reads the endpoint and does nothing when it already has the wanted routes (the move
committed but the runner died before noting it); a revision newer than the one noted whose
every change was made by this job (its actor in the endpoint's history) is taken as its own,
not as someone else's edit. One update changes all routes at once, so the
weights are never half-moved. During the canary the routes pin the two versions
(``churn:1`` 75, ``churn:2`` 25) and the champion is the challenger's first fallback, so a
challenger that fails costs no request. The ledger (endpoint history, alias history) names the
job in every reason: ``rollout <job id>: ...``. The endpoint as it was before the rollout (its
routes, fallback and shadow) is noted before the first move; a rollback restores it.

**Guards and the decision rule** (stated here, recorded in every decision). Over each canary
step's hold (at least ``hold.requests`` challenger requests AND ``hold.duration``), challenger
vs champion, with ``L`` = number of canary steps:

- *error rate* (requests answered by a fallback): roll back when the one-sided z-test of
  ``p_challenger - p_champion > error_rate_increase`` rejects at level ``alpha / L``
  (Bonferroni over the looks, so the whole canary's false-rollback chance stays <= alpha);
- *p99 latency*: roll back when the challenger's requests slower than ``p99_ratio`` x the
  champion's p99 are too many for a p99 (one-sided binomial test of share <= 1 % at
  ``alpha / L``);
- *accuracy*, ``live`` (predictions joined with feedback labels, cumulative over the canary):
  the group-sequential test of :mod:`mlharbor.pipelines.abtest` (O'Brien-Fleming spending,
  planned before the first step with the champion's validation accuracy as baseline and
  ``accuracy_drop`` as the effect to detect), one look per step, so looking at every step does
  not inflate false positives; roll back when it finds the challenger worse (verdict
  ``challenger_worse``) and the drop is at least ``accuracy_drop``.
- *accuracy*, ``estimated`` (CBPE, for labels that come too late): roll back when the
  challenger's estimated upper bound is below the champion's lower bound minus
  ``accuracy_drop``, intervals at ``1 - alpha / L``; stated in full, with where the estimators
  are fitted, in :mod:`mlharbor.pipelines.abrollout`, which also holds ``mode: ab`` (a fixed
  split, a plan stated up front, one step per planned look; its rule is stated there too).

A step whose hold does not see enough traffic within :data:`MAX_HOLD_FACTOR` times its duration
rolls back (it cannot be judged). After the last step (100 %) the challenger is promoted.

**Cancel** (``mlharbor jobs cancel``) of a job in or before any rollout step undoes the rollout
the way a rollback does (:meth:`Rollout.cancel_step`, each step's ``on_cancel``): the endpoint
as it was before the rollout, the challenger tagged rejected with the reason ``cancelled``, the
decision on the cancelled step; the job ends ``cancelled``. Mid-step (a hold, a shadow phase, an
A/B look) it is the step's ``ctx.check()``; between steps, after a takeover, or for a job that
waited for an approval, the runner that next holds the job does it (see Cancel in
:mod:`mlharbor.pipelines.jobs`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from statistics import NormalDist
from typing import TYPE_CHECKING, Any

from mlharbor.core.clock import utcnow
from mlharbor.core.errors import ConflictError, InvalidInputError
from mlharbor.core.loop import (
    ABDecision,
    ABDesign,
    ABPlan,
    ABVerdict,
    EstimatedPerformance,
    RolloutDecision,
    RolloutPhase,
    RolloutVerdict,
)
from mlharbor.core.records import to_dict
from mlharbor.pipelines.jobs import AwaitApproval, Step, StepContext, StepFailed

# The log-reading signals live in rolloutsignals; their names stay importable from here.
from mlharbor.pipelines.rolloutsignals import LogSignals as LogSignals
from mlharbor.pipelines.rolloutsignals import RolloutSignals as RolloutSignals
from mlharbor.pipelines.rolloutsignals import ShadowStats as ShadowStats
from mlharbor.pipelines.rolloutsignals import VariantStats as VariantStats

if TYPE_CHECKING:
    from mlharbor.pipelines.policy import RolloutSpec
    from mlharbor.registry.endpoints import Endpoint, EndpointService
    from mlharbor.registry.service import Registry

#: A hold that has not seen its requests after this many times its duration is judged
#: impossible (too little traffic) and rolls back.
MAX_HOLD_FACTOR = 10
MIN_HOLD_WAIT = timedelta(minutes=5)
#: Latencies each variant needs before the p99 guard judges anything.
MIN_LATENCIES = 20
P99_SHARE = 0.01
POLL_SECONDS = 0.5
#: Version tags the rollout writes on the challenger: ``promoted`` or ``rejected``, why, by which
#: job. The same keys as the retrain job's validate step (``pipelines.retrain.VERDICT_TAG`` ...),
#: so one tag says whether a version was rejected, at validation or live.
TAG_STATUS, TAG_REASON, TAG_JOB = "mlharbor.verdict", "mlharbor.reason", "mlharbor.job"
#: The reason a cancelled rollout gives (its decision and the challenger's reason tag).
CANCELLED = "cancelled"
_NORMAL = NormalDist()


# -- what the rollout is about ----------------------------------------------------------------

@dataclasses.dataclass(frozen=True, slots=True)
class RolloutTarget:
    """The model, its champion alias and version, and the challenger version to roll out."""

    model: str
    alias: str
    champion: int
    challenger: int

    def ref(self, version: int) -> str:
        return f"{self.model}:{version}"

    @property
    def alias_ref(self) -> str:
        return f"{self.model}@{self.alias}"


TargetResolver = Callable[[StepContext, "Registry"], RolloutTarget]


def target_from_request(ctx: StepContext, registry: Registry) -> RolloutTarget:
    """The default resolver: ``model``, ``challenger`` (version) and optional ``alias`` in the
    job's request; the champion is the version the alias names when the rollout starts."""
    request = ctx.job.request
    model, challenger = request.get("model"), request.get("challenger")
    alias = str(request.get("alias") or "champion")
    if not isinstance(model, str) or isinstance(challenger, bool) or not isinstance(
            challenger, int):
        raise InvalidInputError("A rollout job's request needs 'model' (a name) and "
                                "'challenger' (a version number).", field="request")
    champion = registry.get_version(f"{model}@{alias}").version
    if champion == challenger:
        raise InvalidInputError(f"{model}:{challenger} is already the {alias}; nothing to "
                                "roll out.", field="challenger")
    return RolloutTarget(model, alias, champion, challenger)


@dataclasses.dataclass(frozen=True, slots=True)
class _State:
    """What earlier rollout steps of this job established (or this step noted)."""

    target: RolloutTarget
    baseline: dict[str, Any]  # routes, fallback, shadow before the rollout
    revision: int  # the endpoint revision this rollout wrote (or read) last
    plan: ABPlan | None
    looks: tuple[ABDecision, ...]
    canary_start: datetime | None


class Rollout:
    """The rollout steps of one policy, bound to a registry, its endpoints and the signals."""

    def __init__(self, spec: RolloutSpec, *, registry: Registry, signals: RolloutSignals,
                 endpoints: EndpointService | None = None,
                 target: TargetResolver = target_from_request,
                 poll_seconds: float = POLL_SECONDS) -> None:
        from mlharbor.pipelines.abrollout import EstimateSignals
        from mlharbor.registry.endpoints import EndpointService

        if spec.mode == "canary" and spec.guards.accuracy_source == "estimated":
            if spec.shadow is None:
                raise InvalidInputError(
                    "accuracy_source 'estimated' needs a shadow phase: the challenger's "
                    "accuracy estimator is fitted on its labelled answers as the shadow, and "
                    "a new version has no other production rows before the canary. Add "
                    "rollout.shadow, or use accuracy_source 'live'.",
                    field="rollout.guards.accuracy_source")
            if signals is not None and not isinstance(signals, EstimateSignals):
                raise InvalidInputError(
                    "accuracy_source 'estimated' needs signals that estimate accuracy "
                    "without labels (LogSignals does); these cannot.",
                    field="rollout.guards.accuracy_source")
        self.spec = spec
        self.registry = registry
        self.signals = signals
        self.endpoints = endpoints or EndpointService(registry)
        self.resolve = target
        self.poll_seconds = poll_seconds

    # -- the steps --------------------------------------------------------------------------

    def steps(self) -> list[Step]:
        """The job-runner steps, each with :meth:`cancel_step` as its ``on_cancel``."""
        main = RolloutPhase.AB if self.spec.mode == "ab" else RolloutPhase.CANARY
        out = []
        if self.spec.shadow is not None:
            out.append(Step("shadow", self.shadow_step,
                            on_cancel=self._on_cancel(0, RolloutPhase.SHADOW)))
        if self.spec.approval:
            out.append(Step("approval", self.approval_step, on_cancel=self._on_cancel(0, main)))
        if self.spec.mode == "ab":
            from mlharbor.pipelines.abrollout import look_count, look_names

            assert self.spec.ab is not None
            for k, name in enumerate(look_names(self.spec.ab), start=1):
                out.append(Step(name, self._ab_look(k), on_cancel=self._on_cancel(k, main)))
            last = look_count(self.spec.ab) + 1
        else:
            percents = self.spec.canary.steps
            for index, percent in enumerate(percents):
                out.append(Step(f"canary-{percent}", self._canary(index, percent),
                                on_cancel=self._on_cancel(index + 1, main)))
            last = len(percents) + 1
        out.append(Step("promote", self.promote_step, on_cancel=self._on_cancel(last, main)))
        return out

    def _on_cancel(self, step: int, phase: RolloutPhase) -> Callable[[StepContext],
                                                                      dict[str, Any]]:
        def undo(ctx: StepContext) -> dict[str, Any]:
            return self.cancel_step(ctx, step, phase)
        return undo

    def cancel_step(self, ctx: StepContext, step: int, phase: RolloutPhase) -> dict[str, Any]:
        """The job was cancelled in or before this step: undo the rollout as a rollback does.

        The endpoint goes back to its routes, fallback and shadow from before the rollout (one
        idempotent If-Match move; a human's edit in between is a conflict that leaves it as it
        is), the challenger is tagged rejected with the reason ``cancelled``, and the decision
        (``rollback``, reason ``cancelled``) is the cancelled step's result. A champion alias
        this job already moved (a promote interrupted after its alias move) is moved back.
        Never calls ``ctx.check()``: the cancel is what brought it here.
        """
        state = self._state(ctx)
        target, job_id = state.target, ctx.job.id
        ctx.note(rolling_back=CANCELLED)
        current = self.registry.get_version(target.alias_ref).version
        if current == target.challenger:
            moves = self.registry.alias_history(target.model, target.alias)
            if moves and moves[-1].actor == _actor(job_id) and \
                    moves[-1].from_version == target.champion:
                self.registry.set_alias(target.model, target.alias, target.champion,
                                        actor=_actor(job_id),
                                        reason=f"rollout {job_id}: cancelled; "
                                               f"{target.ref(target.champion)} restored")
        revision = self._move(ctx, state, state.baseline,
                              f"rollout {job_id}: cancelled; the endpoint is restored")
        state = dataclasses.replace(state, revision=revision)
        self._reject(target, job_id, CANCELLED)
        decision = self._decision(ctx, step, phase, RolloutVerdict.ROLLBACK, CANCELLED,
                                  {target.ref(target.champion): 100}, {})
        return self._result(state, decision)

    def shadow_step(self, ctx: StepContext) -> dict[str, Any]:
        spec = self.spec.shadow
        assert spec is not None
        state = self._state(ctx)
        target, job_id = state.target, ctx.job.id
        started = _moment(ctx.progress.get("started")) or utcnow()
        ctx.note(started=started.isoformat())
        revision = self._move(ctx, state, {**state.baseline,
                                           "shadow": target.ref(target.challenger)},
                              f"rollout {job_id}: shadow {target.ref(target.challenger)}")
        deadline = started + spec.duration_delta
        while True:
            now = utcnow()
            stats = self.signals.shadow(ctx.job.endpoint, started, now, target.challenger)
            if stats.shadow_copies >= spec.requests or now >= deadline:
                break
            self._sleep(ctx)
        metrics = {"primary_requests": float(stats.primary_requests),
                   "shadow_requests": float(stats.shadow_requests),
                   "compared_rows": float(stats.compared_rows),
                   "primary_errors": float(stats.primary_errors),
                   "shadow_errors": float(stats.shadow_errors)}
        _put(metrics, "agreement", stats.agreement)
        _put(metrics, "primary_p99_s", stats.primary_p99)
        _put(metrics, "shadow_p99_s", stats.shadow_p99)
        _put(metrics, "primary_error_rate", stats.primary_error_rate)
        _put(metrics, "shadow_error_rate", stats.shadow_error_rate)
        problems = []
        worse = error_rate_worse(
            stats.shadow_errors, stats.shadow_copies, stats.primary_errors,
            stats.primary_requests + stats.primary_errors,
            allowed=self.spec.guards.error_rate_increase, level=self.spec.guards.alpha)
        if worse is not None:
            problems.append(f"shadow {worse}")
        if stats.agreement is None:
            problems.append("no shadow answer could be compared with the primary's")
        elif stats.agreement < spec.min_agreement:
            problems.append(f"agreement {stats.agreement:.3f} is below {spec.min_agreement}")
        if stats.primary_p99 and stats.shadow_p99 and \
                stats.shadow_p99 > self.spec.guards.p99_ratio * stats.primary_p99:
            problems.append(f"shadow p99 {stats.shadow_p99 * 1000:.1f} ms is above "
                            f"{self.spec.guards.p99_ratio} x the primary's "
                            f"{stats.primary_p99 * 1000:.1f} ms")
        # The shadow phase ends either way: the endpoint goes back to its own shadow.
        revision = self._move(ctx, dataclasses.replace(state, revision=revision),
                              state.baseline, f"rollout {job_id}: shadow phase ended")
        state = dataclasses.replace(state, revision=revision)
        weights = {target.ref(target.champion): 100}
        if problems:
            reason = "shadow: " + "; ".join(problems)
            decision = self._decision(ctx, 0, RolloutPhase.SHADOW, RolloutVerdict.ROLLBACK,
                                      reason, weights, metrics)
            self._reject(target, job_id, reason)
            raise StepFailed(f"Rolled back: {reason}.", result=self._result(state, decision))
        decision = self._decision(ctx, 0, RolloutPhase.SHADOW, RolloutVerdict.ADVANCE,
                                  f"shadow: agreement {stats.agreement:.3f} over "
                                  f"{stats.compared_rows} rows, latency within bounds, "
                                  f"{stats.shadow_errors} of {stats.shadow_copies} copies "
                                  "failed (error rate within bounds)",
                                  weights, metrics)
        return self._result(state, decision)

    def approval_step(self, ctx: StepContext) -> dict[str, Any]:
        approval = ctx.approval
        if approval is None:
            raise AwaitApproval(f"The rollout waits for a human: `mlharbor jobs approve "
                                f"{ctx.job.id}` or `mlharbor jobs reject {ctx.job.id}`.")
        state = self._state(ctx)
        return {**self._result(state, None), "approval": approval.to_dict()}

    def _canary(self, index: int, percent: int) -> Callable[[StepContext], dict[str, Any]]:
        def run(ctx: StepContext) -> dict[str, Any]:
            return self.canary_step(ctx, index, percent)
        return run

    def _ab_look(self, k: int) -> Callable[[StepContext], dict[str, Any]]:
        from mlharbor.pipelines.abrollout import look_step

        def run(ctx: StepContext) -> dict[str, Any]:
            return look_step(self, ctx, k)
        return run

    def canary_step(self, ctx: StepContext, index: int, percent: int) -> dict[str, Any]:
        """Move to ``percent`` % challenger, hold, judge the guards: advance or roll back."""
        state = self._state(ctx)
        target, job_id = state.target, ctx.job.id
        total = len(self.spec.canary.steps)
        if state.plan is None:
            state = dataclasses.replace(state, plan=self._plan(target))
        started = _moment(ctx.progress.get("started")) or utcnow()
        canary_start = state.canary_start or started
        state = dataclasses.replace(state, canary_start=canary_start)
        ctx.note(started=started.isoformat())
        if index == 0 and self.spec.guards.accuracy_source == "estimated":
            from mlharbor.pipelines.abrollout import check_estimable

            check_estimable(self.signals, ctx.job.endpoint,
                            (target.champion, target.challenger), canary_start,
                            self.spec.guards, total)
        revision = self._move(ctx, state, self._canary_spec(state, percent),
                              f"rollout {job_id}: canary step {index + 1}/{total}, "
                              f"{percent}% to {target.ref(target.challenger)}")
        state = dataclasses.replace(state, revision=revision)
        ctx.note(revision=revision)
        hold = self.spec.canary.hold
        wait_until = started + max(hold.duration_delta * MAX_HOLD_FACTOR,
                                   hold.duration_delta + MIN_HOLD_WAIT)
        versions = (target.champion, target.challenger)
        while True:
            now = utcnow()
            step_stats = self.signals.variants(ctx.job.endpoint, started, now, versions)
            seen = step_stats[target.challenger].requests
            if now - started >= hold.duration_delta and seen >= hold.requests:
                break
            if now >= wait_until:
                reason = (f"canary step {index + 1}/{total} ({percent}%): only {seen} "
                          f"challenger requests in {now - started}, {hold.requests} needed")
                return self._roll_back(ctx, state, index + 1, reason, {"requests": float(seen)})
            self._sleep(ctx)
        all_stats = self.signals.variants(ctx.job.endpoint, canary_start, now, versions)
        verdict, reason, metrics, look = self._judge(state, step_stats, all_stats, index)
        estimated = None
        if self.spec.guards.accuracy_source == "estimated":
            from mlharbor.pipelines.abrollout import estimated_guard

            assert state.canary_start is not None
            fired, more, estimated, note = estimated_guard(
                self.signals, ctx.job.endpoint, target, (started, now), state.canary_start,
                self.spec.guards, total)
            metrics.update(more)
            if fired:
                reason = f"{reason}; {fired}" if verdict is RolloutVerdict.ROLLBACK else fired
                verdict = RolloutVerdict.ROLLBACK
            else:
                reason += note
        if look is not None:
            state = dataclasses.replace(state, looks=(*state.looks, look))
        if verdict is RolloutVerdict.ROLLBACK:
            return self._roll_back(ctx, state, index + 1,
                                   f"canary step {index + 1}/{total} ({percent}%): {reason}",
                                   metrics, look, estimated=estimated)
        weights = {target.ref(target.champion): 100 - percent,
                   target.ref(target.challenger): percent}
        decision = self._decision(
            ctx, index + 1, RolloutPhase.CANARY, RolloutVerdict.ADVANCE,
            f"canary step {index + 1}/{total} ({percent}%): {reason}",
            {k: v for k, v in weights.items() if v}, metrics, look, estimated)
        return self._result(state, decision)

    def promote_step(self, ctx: StepContext) -> dict[str, Any]:
        """The alias moves to the challenger, then all traffic goes to the alias."""
        state = self._state(ctx)
        target, job_id = state.target, ctx.job.id
        reason = (f"rollout {job_id}: {target.ref(target.challenger)} promoted after "
                  f"{len(self.spec.canary.steps)} canary steps")
        step, phase = len(self.spec.canary.steps) + 1, RolloutPhase.CANARY
        if self.spec.mode == "ab":
            from mlharbor.pipelines.abrollout import concluded_better, look_count

            assert self.spec.ab is not None
            won = concluded_better(state.looks)
            step, phase = look_count(self.spec.ab) + 1, RolloutPhase.AB
            reason = (f"rollout {job_id}: {target.ref(target.challenger)} promoted: the A/B "
                      f"experiment found it better at look {won.look} (effect "
                      f"{won.effect:+.4f}, interval [{won.ci_low:+.4f}, {won.ci_high:+.4f}])")
        current = self.registry.get_version(target.alias_ref).version
        if current != target.challenger:
            if current != target.champion:
                raise ConflictError(
                    f"{target.alias_ref} moved to version {current} during the rollout (it was "
                    f"{target.champion}); not promoting {target.ref(target.challenger)}.")
            self.registry.set_alias(target.model, target.alias, target.challenger,
                                    actor=_actor(job_id), reason=reason)
        final = {**state.baseline, "routes": [{"ref": target.alias_ref, "weight": 100.0}]}
        revision = self._move(ctx, state, final, reason)
        state = dataclasses.replace(state, revision=revision)
        self._tag(target, job_id, "promoted", reason)
        decision = self._decision(ctx, step, phase, RolloutVerdict.PROMOTE, reason,
                                  {target.ref(target.challenger): 100}, {})
        return self._result(state, decision)

    # -- judging ----------------------------------------------------------------------------

    def _plan(self, target: RolloutTarget) -> ABPlan | None:
        from mlharbor.pipelines.abtest import plan_experiment

        guards = self.spec.guards
        if guards.accuracy_source != "live":
            return None
        metrics = self.registry.get_version(target.ref(target.champion)).metrics
        baseline = float(metrics.get("accuracy", 0.8))
        effect = max(guards.accuracy_drop, 0.01)
        baseline = min(max(baseline, effect + 0.01), 0.99)
        return plan_experiment(baseline=baseline, min_detectable_effect=effect,
                               alpha=guards.alpha, design="sequential",
                               looks=len(self.spec.canary.steps))

    def _judge(self, state: _State, step: Mapping[int, VariantStats],
               total: Mapping[int, VariantStats], index: int,
               ) -> tuple[RolloutVerdict, str, dict[str, float], ABDecision | None]:
        """The guards of one step (see the module docstring for the rule)."""
        from scipy.stats import binom

        guards = self.spec.guards
        target = state.target
        looks = len(self.spec.canary.steps)
        level = guards.alpha / looks
        new, old = step[target.challenger], step[target.champion]
        if old.requests < 2:  # the champion had no traffic in this step (100 %): whole canary
            old = total[target.champion]
        metrics: dict[str, float] = {"challenger_requests": float(new.requests),
                                     "champion_requests": float(old.requests)}
        _put(metrics, "challenger_error_rate", new.error_rate)
        _put(metrics, "champion_error_rate", old.error_rate)
        fired: list[str] = []
        worse = error_rate_worse(new.errors, new.requests, old.errors, old.requests,
                                 allowed=guards.error_rate_increase, level=level)
        if worse is not None:
            fired.append(worse)
        p99_new, p99_old = new.p99(), old.p99()
        _put(metrics, "challenger_p99_s", p99_new)
        _put(metrics, "champion_p99_s", p99_old)
        if p99_old and len(new.latencies) >= MIN_LATENCIES and \
                len(old.latencies) >= MIN_LATENCIES:
            bound = guards.p99_ratio * p99_old
            slow = sum(v > bound for v in new.latencies)
            p_value = float(binom.sf(slow - 1, len(new.latencies), P99_SHARE))
            metrics["slow_share"] = slow / len(new.latencies)
            if p_value < level:
                fired.append(f"{slow} of {len(new.latencies)} requests slower than "
                             f"{guards.p99_ratio} x the champion's p99 "
                             f"({p99_old * 1000:.1f} ms): p = {p_value:.2g}")
        look = None
        acc_new, acc_old = total[target.challenger], total[target.champion]
        _put(metrics, "challenger_accuracy", acc_new.accuracy)
        _put(metrics, "champion_accuracy", acc_old.accuracy)
        metrics["challenger_labelled"] = float(acc_new.labelled)
        metrics["champion_labelled"] = float(acc_old.labelled)
        note = ""
        if state.plan is not None:
            look, note = self._look(state, acc_old, acc_new)
            if look is not None and look.verdict is ABVerdict.CHALLENGER_WORSE and \
                    -look.effect >= guards.accuracy_drop:
                fired.append(f"accuracy {acc_new.accuracy:.3f} vs {acc_old.accuracy:.3f}: the "
                             f"sequential test finds the challenger worse (z = {look.z:.2f}, "
                             f"boundary {look.boundary_z:.2f}, look {look.look})")
        if fired:
            return RolloutVerdict.ROLLBACK, "; ".join(fired), metrics, look
        return RolloutVerdict.ADVANCE, "guards passed" + note, metrics, look

    def _look(self, state: _State, control: VariantStats, challenger: VariantStats,
              ) -> tuple[ABDecision | None, str]:
        from mlharbor.pipelines.abtest import Proportion, decide

        assert state.plan is not None
        if any(d.final for d in state.looks):
            return None, "; accuracy test already concluded"
        if min(control.labelled, challenger.labelled) < 2:
            return None, "; accuracy not judged yet (too few labels)"
        try:
            look = decide(state.plan, Proportion(control.correct, control.labelled),
                          Proportion(challenger.correct, challenger.labelled),
                          previous=state.looks)
        except InvalidInputError:  # too little new information since the last look
            return None, "; accuracy not judged at this step (too few new labels)"
        return look, f"; accuracy look {look.look}: {look.verdict.value}"

    # -- effects ----------------------------------------------------------------------------

    def _roll_back(self, ctx: StepContext, state: _State, step: int, reason: str,
                   metrics: dict[str, float], look: ABDecision | None = None, *,
                   phase: RolloutPhase = RolloutPhase.CANARY,
                   estimated: EstimatedPerformance | None = None) -> dict[str, Any]:
        """Weights back to the endpoint as it was, the challenger tagged rejected, job failed."""
        ctx.note(rolling_back=reason)
        target = state.target
        revision = self._move(ctx, state, state.baseline, f"rollout {ctx.job.id}: rolled back "
                              f"({reason})")
        state = dataclasses.replace(state, revision=revision)
        self._reject(target, ctx.job.id, reason)
        decision = self._decision(ctx, step, phase, RolloutVerdict.ROLLBACK, reason,
                                  {target.ref(target.champion): 100}, metrics, look, estimated)
        raise StepFailed(f"Rolled back: {reason}.", result=self._result(state, decision))

    def _move(self, ctx: StepContext, state: _State, wanted: Mapping[str, Any],
              reason: str) -> int:
        """One idempotent, If-Match endpoint update to ``wanted``; the revision after it."""
        name = ctx.job.endpoint
        current = self.endpoints.get(name)
        if _has(current, wanted):
            return current.revision  # already there (a re-run after a crash, or a no-op)
        expected = state.revision
        if current.revision != expected and all(
                change.actor == _actor(ctx.job.id) for change in self.endpoints.history(name)
                if change.revision > expected):
            # Moves of this very job that its runner died before noting: ours, not a human's.
            expected = current.revision
        if current.revision != expected:
            raise ConflictError(
                f"Endpoint {name!r} was changed by someone else during rollout {ctx.job.id} "
                f"(revision {current.revision}, the rollout last wrote {state.revision}); the "
                "rollout stops and leaves the endpoint as it is.",
                expected_revision=state.revision, current_revision=current.revision)
        updated = self.endpoints.update(name, dict(wanted), actor=_actor(ctx.job.id),
                                        reason=reason, expected_revision=expected)
        ctx.note(revision=updated.revision)
        return updated.revision

    def _canary_spec(self, state: _State, percent: int) -> dict[str, Any]:
        target = state.target
        routes = [{"ref": target.ref(target.challenger), "weight": float(percent)}]
        if percent < 100:
            routes.insert(0, {"ref": target.ref(target.champion), "weight": float(100 - percent)})
        fallback = [target.ref(target.champion)] + [
            f for f in state.baseline.get("fallback", []) if f != target.ref(target.champion)]
        return {**state.baseline, "routes": routes, "fallback": fallback[:8]}

    def _reject(self, target: RolloutTarget, job_id: str, reason: str) -> None:
        self._tag(target, job_id, "rejected", reason)

    def _tag(self, target: RolloutTarget, job_id: str, status: str, reason: str) -> None:
        mv = self.registry.get_version(target.ref(target.challenger))
        tags = {TAG_STATUS: status, TAG_REASON: reason[:5000], TAG_JOB: job_id}
        if any(mv.tags.get(k) != v for k, v in tags.items()):
            self.registry.update_version(mv.ref, tags={**mv.tags, **tags}, actor=_actor(job_id))

    # -- state ------------------------------------------------------------------------------

    def _state(self, ctx: StepContext) -> _State:
        """The rollout so far: from this step's notes, else the last rollout step's result,
        else (first rollout step) read now and noted before anything moves."""
        latest: Mapping[str, Any] | None = None
        looks: list[ABDecision] = []
        for result in ctx.results.values():
            if isinstance(result, Mapping) and "rollout" in result:
                latest = result["rollout"]
                decision = result.get("decision") or {}
                if decision.get("test"):
                    looks.append(_ab_decision(decision["test"]))
        noted = ctx.progress.get("rollout")
        if noted is None:
            if latest is None:
                target = self.resolve(ctx, self.registry)
                endpoint = self.endpoints.get(ctx.job.endpoint)
                spec = endpoint.spec.model_dump()
                noted = {"target": dataclasses.asdict(target), "revision": endpoint.revision,
                         "baseline": {k: spec[k] for k in ("routes", "fallback", "shadow")},
                         "plan": None, "canary_start": None}
            else:
                noted = dict(latest)
            ctx.note(rollout=noted)
        revision = int(ctx.progress.get("revision", noted["revision"]))
        plan = noted.get("plan")
        return _State(
            target=RolloutTarget(**noted["target"]), baseline=dict(noted["baseline"]),
            revision=revision, plan=_ab_plan(plan) if plan else None, looks=tuple(looks),
            canary_start=_moment(ctx.progress.get("canary_start") or noted.get("canary_start")))

    def _result(self, state: _State, decision: RolloutDecision | None) -> dict[str, Any]:
        rollout = {"target": dataclasses.asdict(state.target), "revision": state.revision,
                   "baseline": state.baseline,
                   "plan": to_dict(state.plan) if state.plan else None,
                   "canary_start": state.canary_start.isoformat() if state.canary_start
                   else None}
        return {"decision": to_dict(decision) if decision else None, "rollout": rollout}

    def _decision(self, ctx: StepContext, step: int, phase: RolloutPhase,
                  verdict: RolloutVerdict, reason: str, weights: dict[str, int],
                  metrics: dict[str, float], test: ABDecision | None = None,
                  estimated: EstimatedPerformance | None = None) -> RolloutDecision:
        return RolloutDecision(job_id=ctx.job.id, step=step, phase=phase, verdict=verdict,
                               reason=reason, weights=weights, guard_metrics=metrics,
                               at=utcnow(), test=test, estimated=estimated)

    def _sleep(self, ctx: StepContext) -> None:
        ctx.check()
        time.sleep(self.poll_seconds)
        ctx.check()


def rollout_steps(spec: RolloutSpec, *, registry: Registry, signals: RolloutSignals,
                  endpoints: EndpointService | None = None,
                  target: TargetResolver = target_from_request,
                  poll_seconds: float = POLL_SECONDS) -> list[Step]:
    """The job-runner steps of ``spec``'s rollout, to append after a validate step.

    ``target`` finds the model, champion and challenger (default: from the job's request;
    the retrain job passes one that reads its register step's result). ``signals`` is where
    traffic and accuracy are read (:class:`LogSignals` over the monitor's log and feedback).
    """
    return Rollout(spec, registry=registry, signals=signals, endpoints=endpoints,
                   target=target, poll_seconds=poll_seconds).steps()


# -- helpers ----------------------------------------------------------------------------------

def _actor(job_id: str) -> str:
    return f"job:{job_id}"


def _has(endpoint: Endpoint, wanted: Mapping[str, Any]) -> bool:
    """Whether ``endpoint`` already has every field of ``wanted`` (routes compared by value)."""
    current = endpoint.spec.model_dump()
    for key, value in wanted.items():
        if key == "routes":
            have = [(r["ref"], float(r["weight"])) for r in current["routes"]]
            if have != [(r["ref"], float(r["weight"])) for r in value]:
                return False
        elif current.get(key) != value:
            return False
    return True


def error_rate_worse(errors: int, requests: int, base_errors: int, base_requests: int, *,
                     allowed: float, level: float) -> str | None:
    """The error-rate guard (canary steps and the shadow phase): the one-sided z-test of
    ``p - p_base > allowed`` at ``level``; the reason when it rejects, else None (also when
    either side has no requests)."""
    if not requests or not base_requests:
        return None
    p_t, p_c = errors / requests, base_errors / base_requests
    excess = p_t - p_c - allowed
    se = math.sqrt(p_t * (1 - p_t) / requests + p_c * (1 - p_c) / base_requests)
    z = excess / se if se > 0 else (math.inf if excess > 0 else -math.inf)
    if z <= _NORMAL.inv_cdf(1 - level):
        return None
    return (f"error rate {p_t:.3f} vs {p_c:.3f} exceeds the allowed increase {allowed} "
            f"(one-sided z-test at {level:.4f})")


def _put(metrics: dict[str, float], key: str, value: float | None) -> None:
    if value is not None and math.isfinite(value):
        metrics[key] = float(value)


def _moment(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else None


def _ab_plan(body: Mapping[str, Any]) -> ABPlan:
    return ABPlan(**{**body, "design": ABDesign(body["design"]),
                     "look_sizes": tuple(body["look_sizes"])})


def _ab_decision(body: Mapping[str, Any]) -> ABDecision:
    return ABDecision(**{**body, "verdict": ABVerdict(body["verdict"]),
                         "design": ABDesign(body["design"])})


def rollout_decisions(results: Sequence[Any]) -> list[RolloutDecision]:
    """The decisions stored in step results (for the CLI, the API and the dashboard)."""
    out = []
    for result in results:
        body = result.get("decision") if isinstance(result, Mapping) else None
        if body:
            out.append(RolloutDecision(**{
                **body, "phase": RolloutPhase(body["phase"]),
                "verdict": RolloutVerdict(body["verdict"]),
                "at": datetime.fromisoformat(body["at"]),
                "test": _ab_decision(body["test"]) if body.get("test") else None,
                "estimated": EstimatedPerformance(**body["estimated"])
                if body.get("estimated") else None}))
    return out
