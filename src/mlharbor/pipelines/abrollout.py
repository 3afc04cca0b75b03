"""The rollout's A/B experiment (``mode: ab``) and its estimated-accuracy guard.

Both are parts of :class:`mlharbor.pipelines.rollout.Rollout` (its state, endpoint moves and
ledger); they live here to keep that module small.

**A/B mode.** Steps ``ab-look-1`` ... ``ab-look-L`` (``L`` = 1 for ``design: fixed``,
``ab.looks`` for ``sequential``), then ``promote``. The experiment is stated before the first
request is split: :func:`ab_plan` computes the :class:`~mlharbor.core.loop.ABPlan` with
:func:`mlharbor.pipelines.abtest.plan_experiment` from ``ab.alpha``, ``ab.power``,
``ab.min_detectable_effect``, ``ab.design``/``ab.looks`` and the baseline (``ab.baseline``, else
the champion's validation accuracy), and the first look notes it before moving any weight. The
split (``ab.split`` % to the challenger, the champion as its fallback) is one idempotent endpoint
move, held unchanged until the experiment stops. Look ``k`` waits until *each* variant has the
plan's ``look_sizes[k-1]`` outcomes since the split (a fixed design: ``n_per_variant``), then
runs :func:`~mlharbor.pipelines.abtest.decide` once on the cumulative outcomes; no look is taken
anywhere else and none after the plan's last, so there is no peeking. The outcome per variant is
``accuracy`` (predictions joined with feedback labels: right out of labelled) or ``error_rate``
(tested as its complement, answered out of routed requests, so a positive effect is better for
both). Every look reports each variant's requests, error rate, p99 latency, accuracy and labels;
the canary's guards do not apply (the experiment's test alone decides; the champion stays the
challenger's fallback, so a failing challenger costs no request). A look waits as long as its
outcomes take to arrive (labels may be slow); ``mlharbor jobs cancel`` stops it.

The decision rule:

- ``continue``: the weights stay, the next look follows;
- ``challenger_better``: the experiment stops; later looks do nothing and ``promote`` moves the
  champion alias to the challenger;
- ``challenger_worse`` or ``no_difference`` (the last look reached without crossing the
  boundary): roll back, keeping the champion: weights back as they were, the challenger tagged
  rejected with the test's result, the job ``failed`` with the reason. A challenger is promoted
  only when it is shown better, never for merely not being worse.

Each look's :class:`~mlharbor.core.loop.RolloutDecision` (phase ``ab``) carries the look's
:class:`~mlharbor.core.loop.ABDecision` (effect, confidence interval, z, boundary, p-value) as
``test``, stored as the step's result, so a crash resumes at the first look without a result,
with the earlier looks' alpha spending, and the split is not moved again.

**Estimated accuracy guard** (``guards.accuracy_source: estimated``, canary mode), for labels
that arrive too late to judge a canary: each version's accuracy is estimated without labels by
CBPE (:mod:`mlharbor.monitoring.estimation`) over the step's hold window, by an estimator fitted
per version on its *labelled production rows logged before the canary* (the champion's answers;
the challenger's answers as the shadow, so the policy needs a shadow phase). The rule: with
``L`` canary steps, both estimates' intervals at confidence ``1 - alpha / L`` (sampling and
calibration error, as the estimator states them), roll back when

    challenger.upper < champion.lower - accuracy_drop

i.e. even the most favourable reading of both estimates has the challenger lower by more than
the allowed drop. If the true drop is at most ``accuracy_drop`` this needs one interval to miss
on one side (chance <= alpha / L per step, so <= alpha over the canary). The champion is
estimated over the whole canary when it had too little traffic in the step (the 100 % step).
Without enough labelled rows (or with probabilities that fail the calibration bound) for either
version, the first canary step refuses before moving any weight, naming the version and why.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from mlharbor.core.clock import utcnow
from mlharbor.core.errors import ConflictError, InvalidInputError, MlharborError
from mlharbor.core.loop import (
    ABDecision,
    ABPlan,
    ABVerdict,
    EstimatedPerformance,
    RolloutPhase,
    RolloutVerdict,
)
from mlharbor.core.records import to_dict
from mlharbor.pipelines.jobs import StepContext

if TYPE_CHECKING:
    from mlharbor.monitoring.estimation import PerformanceEstimator
    from mlharbor.pipelines.policy import ABSpec, GuardsSpec
    from mlharbor.pipelines.rollout import LogSignals, Rollout, RolloutTarget, VariantStats

LOOK_PREFIX = "ab-look-"
#: Rows each version needs in a window before its estimated accuracy is judged.
MIN_ESTIMATE_ROWS = 20


@runtime_checkable
class EstimateSignals(Protocol):
    """Where the estimated-accuracy guard reads CBPE estimates per served version."""

    def estimates(self, endpoint: str, start: datetime, end: datetime,
                  versions: tuple[int, int], *, reference_end: datetime,
                  confidence: float) -> dict[int, EstimatedPerformance | None]:
        """Each version's estimated accuracy over its primary answers in ``[start, end)``
        (None: no scored answer there), by an estimator fitted on its labelled rows logged
        before ``reference_end``; InvalidInputError naming the version when one cannot be
        fitted (too few labelled rows, not two classes, not calibrated)."""
        ...


# -- A/B ---------------------------------------------------------------------------------------

def look_count(ab: ABSpec) -> int:
    """How many looks the experiment takes: one at the horizon, or the planned looks."""
    return 1 if ab.design == "fixed" else ab.looks


def look_names(ab: ABSpec) -> list[str]:
    return [f"{LOOK_PREFIX}{k}" for k in range(1, look_count(ab) + 1)]


def ab_plan(ab: ABSpec, champion_metrics: Mapping[str, Any]) -> ABPlan:
    """The experiment's plan, from the policy and (without ``ab.baseline``) the champion's
    validation accuracy; InvalidInputError when neither gives a baseline."""
    from mlharbor.pipelines.abtest import plan_experiment

    if ab.metric == "error_rate":
        if ab.baseline is None:
            raise InvalidInputError("An A/B test of error_rate needs rollout.ab.baseline (the "
                                    "champion's expected error rate).", field="rollout.ab.baseline")
        baseline = 1.0 - ab.baseline  # tested as the rate of answered requests
    elif ab.baseline is not None:
        baseline = ab.baseline
    else:
        value = champion_metrics.get("accuracy")
        if not isinstance(value, int | float) or not 0.0 < float(value) < 1.0:
            raise InvalidInputError(
                "The A/B plan needs a baseline accuracy: the champion has no validation "
                "accuracy strictly between 0 and 1; set rollout.ab.baseline.",
                field="rollout.ab.baseline")
        baseline = float(value)
    return plan_experiment(baseline=baseline, min_detectable_effect=ab.min_detectable_effect,
                           alpha=ab.alpha, power=ab.power, design=ab.design,
                           metric="proportion", looks=look_count(ab))


def outcome(stats: VariantStats, metric: str) -> tuple[int, int]:
    """(successes, trials) of one variant: right out of labelled, or answered out of routed."""
    if metric == "error_rate":
        return stats.requests - stats.errors, stats.requests
    return stats.correct, stats.labelled


def variant_metrics(target: RolloutTarget, stats: Mapping[int, VariantStats]
                    ) -> dict[str, float]:
    """What each look reports per variant: requests, error rate, p99, accuracy, labels."""
    from mlharbor.pipelines.rollout import _put

    out: dict[str, float] = {}
    for role, version in (("champion", target.champion), ("challenger", target.challenger)):
        s = stats[version]
        out[f"{role}_requests"] = float(s.requests)
        out[f"{role}_labelled"] = float(s.labelled)
        _put(out, f"{role}_error_rate", s.error_rate)
        _put(out, f"{role}_p99_s", s.p99())
        _put(out, f"{role}_accuracy", s.accuracy)
    return out


def look_step(rollout: Rollout, ctx: StepContext, k: int) -> dict[str, Any]:
    """Look ``k`` of the experiment (see the module docstring for the rule)."""
    from mlharbor.pipelines.abtest import Proportion, decide
    from mlharbor.pipelines.rollout import _ab_plan, _moment

    ab = rollout.spec.ab
    assert ab is not None
    state = rollout._state(ctx)
    target, job_id = state.target, ctx.job.id
    looks = look_count(ab)
    stopped = next((d for d in state.looks if d.final), None)
    if stopped is not None:  # an earlier look stopped it (better: promote follows)
        return {**rollout._result(state, None),
                "skipped": f"the experiment stopped at look {stopped.look} "
                           f"({stopped.verdict.value})"}
    plan = state.plan
    if plan is None:
        noted = ctx.progress.get("plan")
        plan = _ab_plan(noted) if noted else ab_plan(
            ab, rollout.registry.get_version(target.ref(target.champion)).metrics)
        ctx.note(plan=to_dict(plan))
    start = state.canary_start or _moment(ctx.progress.get("canary_start")) or utcnow()
    ctx.note(canary_start=start.isoformat())
    state = dataclasses.replace(state, plan=plan, canary_start=start)
    revision = rollout._move(ctx, state, rollout._canary_spec(state, ab.split),
                             f"rollout {job_id}: A/B experiment, {ab.split}% to "
                             f"{target.ref(target.challenger)}")
    state = dataclasses.replace(state, revision=revision)
    needed = plan.look_sizes[min(k, len(plan.look_sizes)) - 1]
    versions = (target.champion, target.challenger)
    while True:
        stats = rollout.signals.variants(ctx.job.endpoint, start, utcnow(), versions)
        control = outcome(stats[target.champion], ab.metric)
        treated = outcome(stats[target.challenger], ab.metric)
        if min(control[1], treated[1]) >= needed:
            try:
                test = decide(plan, Proportion(*control), Proportion(*treated),
                              previous=state.looks)
                break
            except InvalidInputError:  # no new information since the last look: wait on
                pass
        rollout._sleep(ctx)
    metrics = variant_metrics(target, stats)
    state = dataclasses.replace(state, looks=(*state.looks, test))
    split = {target.ref(target.champion): 100 - ab.split,
             target.ref(target.challenger): ab.split}
    summary = (f"A/B look {k}/{looks} ({ab.metric}, {control[1]} vs {treated[1]}): "
               f"{_describe(test)}")
    if test.verdict in (ABVerdict.CHALLENGER_WORSE, ABVerdict.NO_DIFFERENCE):
        return rollout._roll_back(ctx, state, k, summary, metrics, test, phase=RolloutPhase.AB)
    verdict = RolloutVerdict.ADVANCE if test.final else RolloutVerdict.HOLD
    decision = rollout._decision(ctx, k, RolloutPhase.AB, verdict, summary, split, metrics,
                                 test)
    return rollout._result(state, decision)


def concluded_better(looks: Sequence[ABDecision]) -> ABDecision:
    """The look that found the challenger better; ConflictError when none did (promote must
    not run otherwise)."""
    stopped = next((d for d in looks if d.final), None)
    if stopped is None or stopped.verdict is not ABVerdict.CHALLENGER_BETTER:
        found = stopped.verdict.value if stopped else "no conclusion"
        raise ConflictError(f"The A/B experiment did not find the challenger better ({found}); "
                            "not promoting it.")
    return stopped


def _describe(test: ABDecision) -> str:
    p = "" if test.p_value is None else f", p = {test.p_value:.3g}"
    return (f"{test.verdict.value}: effect {test.effect:+.4f}, interval "
            f"[{test.ci_low:+.4f}, {test.ci_high:+.4f}], z = {test.z:.2f} against the "
            f"boundary {test.boundary_z or 0.0:.2f}{p}")


# -- the estimated-accuracy guard --------------------------------------------------------------

def check_estimable(signals: Any, endpoint: str, versions: tuple[int, int],
                    reference_end: datetime, guards: GuardsSpec, looks: int) -> None:
    """Fit both versions' estimators now (before any weight moves); InvalidInputError why not."""
    _estimates(signals, endpoint, reference_end, reference_end, versions, reference_end,
               guards, looks)


def estimated_guard(signals: Any, endpoint: str, target: RolloutTarget,
                    step_window: tuple[datetime, datetime], canary_start: datetime,
                    guards: GuardsSpec, looks: int,
                    ) -> tuple[str | None, dict[str, float], EstimatedPerformance | None, str]:
    """One canary step's estimated-accuracy guard: (why it fired or None, metrics, the
    challenger's estimate, a note for the step's reason)."""
    versions = (target.champion, target.challenger)
    start, end = step_window
    try:
        step = _estimates(signals, endpoint, start, end, versions, canary_start, guards, looks)
        champion = step[target.champion]
        if champion is None or champion.n < MIN_ESTIMATE_ROWS:
            champion = _estimates(signals, endpoint, canary_start, end, versions, canary_start,
                                  guards, looks)[target.champion]
    except MlharborError as exc:
        return f"estimated accuracy cannot be computed: {exc.message}", {}, None, ""
    challenger = step[target.challenger]
    metrics: dict[str, float] = {}
    for role, est in (("champion", champion), ("challenger", challenger)):
        if est is not None:
            metrics[f"{role}_estimated_accuracy"] = est.value
            metrics[f"{role}_estimated_lower"] = est.lower
            metrics[f"{role}_estimated_upper"] = est.upper
            metrics[f"{role}_estimated_rows"] = float(est.n)
    if challenger is None or champion is None or min(challenger.n,
                                                     champion.n) < MIN_ESTIMATE_ROWS:
        return None, metrics, challenger, "; estimated accuracy not judged (too few rows)"
    line = (f"estimated accuracy {challenger.value:.3f} [{challenger.lower:.3f}, "
            f"{challenger.upper:.3f}] vs the champion's {champion.value:.3f} "
            f"[{champion.lower:.3f}, {champion.upper:.3f}]")
    if challenger.upper < champion.lower - guards.accuracy_drop:
        return (f"{line}: the challenger's upper bound is below the champion's lower bound "
                f"minus {guards.accuracy_drop}"), metrics, challenger, ""
    return None, metrics, challenger, f"; {line}"


def _estimates(signals: Any, endpoint: str, start: datetime, end: datetime,
               versions: tuple[int, int], reference_end: datetime, guards: GuardsSpec,
               looks: int) -> dict[int, EstimatedPerformance | None]:
    if not isinstance(signals, EstimateSignals):
        raise InvalidInputError("These rollout signals cannot estimate accuracy without labels.",
                                field="rollout.guards.accuracy_source")
    return signals.estimates(endpoint, start, end, versions, reference_end=reference_end,
                             confidence=1.0 - guards.alpha / looks)


def log_estimates(signals: LogSignals, cache: dict[tuple[str, int, str], PerformanceEstimator],
                  endpoint: str, start: datetime, end: datetime, versions: tuple[int, int], *,
                  reference_end: datetime, confidence: float,
                  ) -> dict[int, EstimatedPerformance | None]:
    """:meth:`EstimateSignals.estimates` over the prediction log and feedback (LogSignals)."""
    import numpy as np

    frame = _scored(signals, endpoint, None, max(end, reference_end))
    out: dict[int, EstimatedPerformance | None] = {}
    for version in versions:
        key = (endpoint, version, reference_end.isoformat())
        if key not in cache:
            cache[key] = _fit(signals, endpoint, frame, version, reference_end)
        estimator = cache[key]
        at = frame["at"]
        rows = frame[(frame["version"] == version) & ~frame["shadow"]
                     & (at >= _micros(start)) & (at < _micros(end))]
        out[version] = None if rows.empty else estimator.estimate(
            rows["score"].to_numpy(dtype=np.float64), "accuracy",
            predictions=_texts(rows["prediction"]), confidence=confidence)
    return out


def _fit(signals: LogSignals, endpoint: str, frame: Any, version: int,
         reference_end: datetime) -> PerformanceEstimator:
    import numpy as np

    from mlharbor.monitoring.estimation import MIN_REFERENCE_ROWS, fit_estimator
    from mlharbor.monitoring.labels import expected_labels

    if signals.feedback is None:
        raise InvalidInputError("The estimated-accuracy guard needs the feedback store (its "
                                "estimators are fitted on labelled rows).",
                                field="rollout.guards.accuracy_source")
    own = frame[(frame["version"] == version) & (frame["at"] < _micros(reference_end))]
    labels = signals.feedback.labels(endpoint).to_pandas()
    reference = own.merge(labels.assign(row=labels["row"].astype("int64")),
                          on=["request_id", "row"]) if len(own) and len(labels) else own[:0]
    hint = ("; the challenger's are its answers as the shadow: run a longer shadow phase, "
            "wait for labels, or use accuracy_source: live")
    if len(reference) < MIN_REFERENCE_ROWS:
        raise InvalidInputError(
            f"Version {version} has {len(reference)} labelled production rows with "
            f"probabilities before the canary; its accuracy estimator needs at least "
            f"{MIN_REFERENCE_ROWS}{hint}.", field="rollout.guards.accuracy_source")
    spec = expected_labels(signals.feedback.registry, endpoint, signals.log)
    classes = tuple(_texts(spec.classes)) if spec is not None and spec.classes else tuple(
        sorted(set(_texts(reference["label"])) | set(_texts(reference["prediction"]))))
    if len(classes) != 2:
        raise InvalidInputError(f"Only two-class models are estimated without labels; version "
                                f"{version} has {len(classes)} classes.",
                                field="rollout.guards.accuracy_source")
    try:
        return fit_estimator(_texts(reference["label"]),
                             reference["score"].to_numpy(dtype=np.float64), classes=classes,
                             pos_label=classes[-1],
                             predictions=_texts(reference["prediction"]))
    except InvalidInputError as exc:
        raise InvalidInputError(f"Version {version}'s accuracy cannot be estimated: "
                                f"{exc.message}", field="rollout.guards.accuracy_source"
                                ) from exc


def _scored(signals: LogSignals, endpoint: str, start: datetime | None, end: datetime) -> Any:
    """Answers with a probability, not from a fallback: at (epoch us), version, shadow, ..."""
    import pandas as pd

    columns = ["request_id", "row", "version", "prediction", "score", "shadow", "fallback"]
    frame = signals.log.scan(endpoint, start, end, columns=columns).to_pandas()
    for column in (*columns, "at"):
        if column not in frame:
            frame[column] = None
    frame["shadow"] = frame["shadow"].fillna(False).astype(bool)
    frame["version"] = pd.to_numeric(frame["version"], errors="coerce")
    frame["row"] = pd.to_numeric(frame["row"], errors="coerce").astype("Int64")
    frame["at"] = pd.to_numeric(frame["at"], errors="coerce")  # epoch microseconds
    kept = frame[frame["fallback"].isna() & frame["score"].notna()]
    return kept.drop_duplicates(["request_id", "row", "shadow"], keep="first")


def _micros(moment: datetime) -> int:
    from mlharbor.core.clock import epoch_micros

    return int(epoch_micros(moment))


def _texts(values: Any) -> Any:
    import numpy as np

    from mlharbor.monitoring.labels import label_text

    return np.asarray([label_text(v) for v in values], dtype=object)
