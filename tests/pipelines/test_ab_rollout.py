"""A/B rollouts (``mode: ab``) and the estimated-accuracy canary guard.

The A/B experiments draw each variant's outcomes at random (seeded) from a true accuracy at
the rollout's own seam (:class:`RolloutSignals`), cumulatively, as a live endpoint would show
them; one experiment runs through the real prediction log and feedback store. The estimated
guard is judged on scripted estimates, and end to end on logged probabilities: the champion's
served rows and the challenger's shadow answers, labelled, calibrate each version's estimator;
the canary's rows carry no label.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from mlharbor.core.clock import utcnow
from mlharbor.core.errors import InvalidInputError
from mlharbor.core.loop import ABVerdict, EstimatedPerformance, RolloutPhase
from mlharbor.core.records import PredictionRecord
from mlharbor.monitoring.service import Monitor
from mlharbor.pipelines.abtest import plan_experiment
from mlharbor.pipelines.jobs import JobState, JobStore, StepState
from mlharbor.pipelines.policy import RolloutSpec
from mlharbor.pipelines.rollout import (
    TAG_STATUS,
    LogSignals,
    Rollout,
    ShadowStats,
    VariantStats,
    rollout_decisions,
)
from mlharbor.registry.endpoints import EndpointService
from mlharbor.registry.service import Registry
from mlharbor.settings import Settings
from tests.pipelines import test_rollout as canary_tests
from tests.pipelines.test_rollout import (
    CHAMPION,
    GOOD,
    Crash,
    CrashingEndpoints,
    challenger_weights,
    make_runner,
    submit,
)

# The canary tests' fixtures: a home with churn v1 (@champion), v2 and v3, and its endpoint.
base_home = canary_tests.base_home
home_settings = canary_tests.home_settings
registry = canary_tests.registry
endpoints = canary_tests.endpoints

AB = {"split": 50, "alpha": 0.05, "power": 0.8, "min_detectable_effect": 0.05,
      "design": "sequential", "looks": 3, "baseline": 0.85}


def ab_spec(**ab: Any) -> RolloutSpec:
    return RolloutSpec.model_validate({"mode": "ab", "ab": {**AB, **ab}})


class Experiment:
    """Each call, ``per_call`` more requests split by the policy's percent, every one labelled;
    each variant right with its true probability (binomial draws, seeded)."""

    def __init__(self, champion: float, challenger: float, *, per_call: int = 150,
                 split: int = 50, seed: int = 0,
                 on_call: Callable[[int], None] | None = None) -> None:
        self.p = (champion, challenger)
        self.share = (per_call * (100 - split) // 100, per_call * split // 100)
        self.rng = np.random.default_rng(seed)
        self.counts = [[0, 0], [0, 0]]  # (trials, successes) per variant
        self.calls = 0
        self.on_call = on_call

    def variants(self, endpoint: str, start: datetime, end: datetime,
                 versions: tuple[int, int]) -> dict[int, VariantStats]:
        self.calls += 1
        if self.on_call is not None:
            self.on_call(self.calls)
        out = {}
        for i, version in enumerate(versions):
            self.counts[i][0] += self.share[i]
            self.counts[i][1] += int(self.rng.binomial(self.share[i], self.p[i]))
            n, right = self.counts[i]
            out[version] = VariantStats(n, 0, (0.010 + 0.001 * i,) * 30, n, right)
        return out

    def shadow(self, endpoint: str, start: datetime, end: datetime,
               shadow_version: int) -> ShadowStats:
        return ShadowStats(100, 100, 100, 97, 0.01, 0.012)


def run(registry: Registry, rollout: RolloutSpec, signals: Any, **kw: Any) -> Any:
    runner = make_runner(registry, rollout, signals, **kw)
    job_id = submit(runner)
    job = runner.run_once()
    assert job is not None and job.id == job_id
    return job


def test_the_plan_is_what_abtest_computes_and_a_better_challenger_is_promoted(
        registry: Registry, endpoints: EndpointService) -> None:
    job = run(registry, ab_spec(), Experiment(0.85, 0.93))
    assert job.state is JobState.SUCCEEDED, job.error
    assert job.plan == ("ab-look-1", "ab-look-2", "ab-look-3", "promote")
    expected = plan_experiment(baseline=0.85, min_detectable_effect=0.05, alpha=0.05,
                               power=0.8, design="sequential", looks=3)
    first = job.steps[0].result["rollout"]["plan"]
    assert first["n_per_variant"] == expected.n_per_variant
    assert tuple(first["look_sizes"]) == expected.look_sizes
    assert first["fixed_n_per_variant"] == expected.fixed_n_per_variant

    decisions = rollout_decisions([s.result for s in job.steps])
    tests = [d.test for d in decisions if d.test is not None]
    assert all(d.phase is RolloutPhase.AB for d in decisions)
    # Each look at (at least) its planned size, the last one concluding: challenger better.
    for test, size in zip(tests, expected.look_sizes, strict=False):
        assert min(test.n_control, test.n_challenger) >= size
    assert [t.look for t in tests] == list(range(1, len(tests) + 1))
    assert tests[-1].verdict is ABVerdict.CHALLENGER_BETTER
    assert all(t.verdict is ABVerdict.CONTINUE for t in tests[:-1])
    won = tests[-1]
    assert won.effect > 0 and won.ci_low > 0 and won.ci_low < won.effect < won.ci_high
    # Looks after the stopping one take no decision; promote names the look and the effect.
    skipped = [s for s in job.steps[len(tests):-1]]
    assert all("skipped" in s.result for s in skipped)
    assert decisions[-1].verdict.value == "promote"
    assert f"look {won.look}" in decisions[-1].reason

    assert registry.get_version("churn@champion").version == GOOD
    assert registry.get_version(f"churn:{GOOD}").tags[TAG_STATUS] == "promoted"
    history = endpoints.history("churn")[1:]
    # One split move held through every look, then the alias takes all traffic.
    assert [challenger_weights(h.spec, GOOD) for h in history] == [50, 0]
    assert history[0].spec is not None and history[0].spec["fallback"] == ["churn:1"]
    assert decisions[0].weights == {"churn:1": 50, "churn:2": 50}
    metrics = decisions[0].guard_metrics
    assert {"champion_accuracy", "challenger_accuracy", "champion_error_rate",
            "challenger_error_rate", "champion_p99_s", "challenger_p99_s"} <= set(metrics)


def test_a_worse_challenger_is_rolled_back_with_its_effect_and_interval(
        registry: Registry, endpoints: EndpointService) -> None:
    job = run(registry, ab_spec(), Experiment(0.85, 0.75))
    assert job.state is JobState.FAILED and "Rolled back" in (job.error or "")
    failed = next(s for s in job.steps if s.state is StepState.FAILED)
    (decision,) = rollout_decisions([failed.result])
    assert decision.verdict.value == "rollback" and decision.phase is RolloutPhase.AB
    assert decision.test is not None and decision.test.verdict is ABVerdict.CHALLENGER_WORSE
    assert decision.test.ci_high < 0 and "challenger_worse" in decision.reason
    assert registry.get_version("churn@champion").version == CHAMPION
    assert registry.get_version(f"churn:{GOOD}").tags[TAG_STATUS] == "rejected"
    assert [(r.ref, r.weight) for r in endpoints.get("churn").spec.routes] == [
        ("churn@champion", 100.0)]
    assert {s.state for s in job.steps[failed.ordinal + 1:]} <= {StepState.CANCELLED,
                                                                  StepState.PENDING}


def test_equal_variants_end_no_difference_at_the_last_look_and_keep_the_champion(
        registry: Registry, endpoints: EndpointService) -> None:
    job = run(registry, ab_spec(), Experiment(0.85, 0.85))
    assert job.state is JobState.FAILED
    decisions = rollout_decisions([s.result for s in job.steps if s.result])
    tests = [d.test for d in decisions if d.test is not None]
    assert [t.look for t in tests] == [1, 2, 3]  # every planned look, none beyond
    assert tests[-1].verdict is ABVerdict.NO_DIFFERENCE and tests[-1].information_fraction == 1
    assert tests[-1].ci_low < 0 < tests[-1].ci_high
    assert decisions[-1].verdict.value == "rollback"
    assert registry.get_version("churn@champion").version == CHAMPION
    history = endpoints.history("churn")[1:]
    assert [challenger_weights(h.spec, GOOD) for h in history] == [50, 0]


def test_cancel_during_an_ab_look_restores_the_split_and_rejects_the_challenger(
        registry: Registry, endpoints: EndpointService) -> None:
    """A look waits for its outcomes; a cancel while it waits puts the endpoint back as it was
    before the split and tags the challenger rejected ("cancelled"), as a rollback does."""
    from mlharbor.pipelines.rollout import CANCELLED, TAG_REASON

    store = JobStore(registry.store)
    signals = Experiment(0.85, 0.85)

    def cancel(call: int) -> None:
        if call == 2:  # the split is in place and the first look is waiting
            assert challenger_weights(endpoints.get("churn").spec.model_dump(), GOOD) == 50
            (job,) = store.list_jobs(endpoint="churn")
            store.cancel(job.id, actor="test")
            signals.share = (0, 0)  # no more outcomes: the look can only end by the cancel

    signals.on_call = cancel
    job = run(registry, ab_spec(), signals, lease_seconds=0.6)
    assert job.state is JobState.CANCELLED and job.error is None, job.error
    assert job.steps[0].state is StepState.CANCELLED
    (decision,) = rollout_decisions([job.steps[0].result])
    assert (decision.verdict.value, decision.reason, decision.phase) == (
        "rollback", CANCELLED, RolloutPhase.AB)
    assert [(r.ref, r.weight) for r in endpoints.get("churn").spec.routes] == [
        ("churn@champion", 100.0)]
    assert endpoints.get("churn").spec.fallback == []
    history = endpoints.history("churn")[1:]
    assert [challenger_weights(h.spec, GOOD) for h in history] == [50, 0]
    assert registry.get_version("churn@champion").version == CHAMPION
    tags = registry.get_version(f"churn:{GOOD}").tags
    assert (tags[TAG_STATUS], tags[TAG_REASON]) == ("rejected", CANCELLED)


def test_a_fixed_design_decides_once_at_its_horizon(registry: Registry,
                                                    endpoints: EndpointService) -> None:
    signals = Experiment(0.85, 0.93, per_call=100, split=20)
    job = run(registry, ab_spec(design="fixed", split=20), signals)
    assert job.plan == ("ab-look-1", "promote")
    expected = plan_experiment(baseline=0.85, min_detectable_effect=0.05, alpha=0.05,
                               power=0.8, design="fixed")
    (decision, _promote) = rollout_decisions([s.result for s in job.steps])
    test = decision.test
    assert test is not None and test.look == 1 and test.p_value is not None
    # Nothing was tested before both variants reached n (the 20 % arm is the slow one).
    assert test.n_challenger >= expected.n_per_variant > test.n_challenger - 20
    assert test.planned_n_per_variant == expected.n_per_variant == expected.fixed_n_per_variant
    assert job.state is JobState.SUCCEEDED, job.error
    assert challenger_weights(endpoints.history("churn")[1].spec, GOOD) == 20


def test_a_crash_between_looks_resumes_at_the_next_look_without_moving_weights_again(
        registry: Registry, endpoints: EndpointService) -> None:
    store = JobStore(registry.store)
    ids: list[str] = []

    def die_once_look_1_is_done(_call: int) -> None:
        job = store.get(ids[0])
        if job.steps[0].state is StepState.SUCCEEDED and job.steps[1].attempts == 1:
            raise Crash

    first = make_runner(registry, ab_spec(), Experiment(0.85, 0.85,
                                                       on_call=die_once_look_1_is_done),
                        lease_seconds=0.5)
    ids.append(submit(first))
    with pytest.raises(Crash):
        first.run_once()
    held = store.get(ids[0])
    assert held.steps[0].state is StepState.SUCCEEDED
    assert held.steps[1].state is StepState.RUNNING
    assert len(endpoints.history("churn")) == 2  # the split, once

    time.sleep(0.6)
    second = make_runner(registry, ab_spec(), Experiment(0.85, 0.85, seed=1))
    job = second.run_once()
    assert job is not None and job.id == ids[0]
    assert [s.attempts for s in job.steps[:3]] == [1, 2, 1]
    tests = [d.test for d in rollout_decisions([s.result for s in job.steps if s.result])
             if d.test is not None]
    assert [t.look for t in tests] == [1, 2, 3]  # look 2 once, with look 1's spending
    history = endpoints.history("churn")[1:]
    assert [challenger_weights(h.spec, GOOD) for h in history] == [50, 0]


def test_a_crash_right_after_the_split_is_not_moved_twice(registry: Registry,
                                                          endpoints: EndpointService) -> None:
    crashing = CrashingEndpoints(registry, "A/B experiment", after=True)
    first = make_runner(registry, ab_spec(), Experiment(0.85, 0.93), endpoints=crashing,
                        lease_seconds=0.5)
    submit(first)
    with pytest.raises(Crash):
        first.run_once()
    time.sleep(0.6)
    job = make_runner(registry, ab_spec(), Experiment(0.85, 0.93)).run_once()
    assert job is not None and job.state is JobState.SUCCEEDED, job and job.error
    assert job.steps[0].attempts == 2
    history = endpoints.history("churn")[1:]
    assert [challenger_weights(h.spec, GOOD) for h in history] == [50, 0]


def test_ab_without_a_baseline_or_champion_accuracy_refuses_before_any_move(
        registry: Registry, endpoints: EndpointService) -> None:
    job = run(registry, ab_spec(baseline=None), Experiment(0.85, 0.93))
    assert job.state is JobState.FAILED and "set rollout.ab.baseline" in (job.error or "")
    assert len(endpoints.history("churn")) == 1


# -- A/B through the real prediction log and feedback ------------------------------------------

@pytest.fixture
def monitor(home_settings: Settings, registry: Registry) -> Iterator[Monitor]:
    mon = Monitor(home_settings, registry)
    yield mon
    mon.log.close()


class Outputs:  # what serving hands the log: predictions and class probabilities
    def __init__(self, predictions: Any, probabilities: Any) -> None:
        self.predictions, self.probabilities = predictions, probabilities


#: How a version answers rows ``x`` whose labels will be ``y``: (predictions, probabilities).
Answer = Callable[[int, Any, Any, np.random.Generator], tuple[Any, Any]]


class LoggedTraffic(LogSignals):
    """Real log rows and feedback: before each read, ``requests`` more requests of ``rows`` rows
    are served now by the version the endpoint's weights pick, logged and (with ``labels``)
    labelled through the feedback store; then LogSignals reads them back."""

    def __init__(self, monitor: Monitor, endpoints: EndpointService,
                 answer: Answer,
                 *, requests: int = 10, rows: int = 10, labels: bool = True,
                 seed: int = 0) -> None:
        super().__init__(monitor.log, monitor.feedback)
        self.monitor, self.endpoints, self.answer = monitor, endpoints, answer
        self.requests, self.rows, self.labels = requests, rows, labels
        self.rng = np.random.default_rng(seed)
        self.sent = 0
        self.labelled = 0

    def serve(self, shadow: int | None = None, labels: bool | None = None) -> None:
        spec = self.endpoints.get("churn").spec
        refs = [(r.ref, r.weight) for r in spec.routes]
        weights = np.array([w for _, w in refs]) / sum(w for _, w in refs)
        items = []
        for _ in range(self.requests):
            ref = refs[int(self.rng.choice(len(refs), p=weights))][0]
            version = int(ref.split(":")[1]) if ":" in ref else CHAMPION
            x = self.rng.normal(size=(self.rows, 2))
            y = truth(self.rng, x)
            rid = f"r{self.sent}"
            self.sent += 1
            for v, copy in ((version, False), *(((shadow, True),) if shadow else ())):
                predicted, proba = self.answer(v, x, y, self.rng)
                self.monitor.log.emit(PredictionRecord(
                    rid, "churn", ref, v, pd.DataFrame(x, columns=["a", "b"]).to_dict(
                        orient="records"), Outputs(predicted, proba), 0.01, utcnow(),
                    shadow=copy))
            items += [{"request_id": rid, "row": i, "label": int(v)} for i, v in enumerate(y)]
        self.monitor.log.flush()
        self.monitor.log.compact()
        if self.labels if labels is None else labels:
            self.labelled += self.monitor.add_feedback("churn", {"labels": items})

    def variants(self, endpoint: str, start: datetime, end: datetime,
                 versions: tuple[int, int]) -> dict[int, VariantStats]:
        self.serve()
        return super().variants(endpoint, start, utcnow(), versions)

    def shadow(self, endpoint: str, start: datetime, end: datetime,
               shadow_version: int) -> ShadowStats:
        self.serve(shadow=shadow_version, labels=True)  # shadow-phase labels have arrived
        return super().shadow(endpoint, start, utcnow(), shadow_version)


def truth(rng: np.random.Generator, x: Any) -> Any:
    """One P(y | x) everywhere (no concept drift, as CBPE assumes)."""
    return (rng.random(len(x)) < 1.0 / (1.0 + np.exp(-(3.0 * x[:, 0] + 0.5 * x[:, 1])))
            ).astype(int)


def coin(accuracy: dict[int, float]) -> Answer:
    """A version right with its given probability, whatever the rows."""
    def answer(version: int, x: Any, y: Any, rng: np.random.Generator) -> tuple[Any, Any]:
        predicted = np.where(rng.random(len(y)) >= accuracy[version], 1 - y, y)
        return predicted, np.column_stack([0.9 - 0.8 * predicted, 0.1 + 0.8 * predicted])
    return answer


def test_an_ab_experiment_on_real_log_rows_and_feedback_rolls_back_a_worse_challenger(
        registry: Registry, endpoints: EndpointService, monitor: Monitor) -> None:
    """Predictions logged, labels posted through feedback, LogSignals joining them: the
    challenger (right 40 % of the time) loses to the champion (right 90 %)."""
    traffic = LoggedTraffic(monitor, endpoints, coin({CHAMPION: 0.9, GOOD: 0.4}))
    rollout = ab_spec(min_detectable_effect=0.2, baseline=0.8, looks=2)
    job = run(registry, rollout, traffic)
    assert job.state is JobState.FAILED, job.error
    decisions = rollout_decisions([s.result for s in job.steps if s.result])
    decision = decisions[-1]
    assert decision.test is not None and decision.test.verdict is ABVerdict.CHALLENGER_WORSE
    metrics = decision.guard_metrics
    assert metrics["challenger_accuracy"] < 0.6 < 0.8 < metrics["champion_accuracy"]
    assert metrics["challenger_labelled"] == decision.test.n_challenger
    assert [(r.ref, r.weight) for r in endpoints.get("churn").spec.routes] == [
        ("churn@champion", 100.0)]


# -- the estimated-accuracy guard --------------------------------------------------------------

def estimated_spec(**guards: Any) -> RolloutSpec:
    return RolloutSpec.model_validate({
        "shadow": {"requests": 200, "duration": "1s", "min_agreement": 0.0},
        "canary": {"steps": [50, 100], "hold": {"requests": 10, "duration": "1s"}},
        "guards": {"error_rate_increase": 0.05, "p99_ratio": 5.0, "accuracy_drop": 0.02,
                   "accuracy_source": "estimated", "alpha": 0.05, **guards}})


def estimate(value: float, half: float, n: int = 400) -> EstimatedPerformance:
    return EstimatedPerformance("accuracy", value, half / 2.2, value - half, value + half, n,
                                True, 0.01, "isotonic", 0.975)


class ScriptedEstimates(Experiment):
    """Traffic as :class:`Experiment`, plus each version's CBPE estimate over a window."""

    def __init__(self, champion: float, challenger: float) -> None:
        super().__init__(0.85, 0.85)
        self.values = (champion, challenger)
        self.asked: list[float] = []

    def estimates(self, endpoint: str, start: datetime, end: datetime,
                  versions: tuple[int, int], *, reference_end: datetime,
                  confidence: float) -> dict[int, EstimatedPerformance | None]:
        self.asked.append(confidence)
        if start == end:
            return dict.fromkeys(versions)
        return {v: estimate(value, 0.04) for v, value in zip(versions, self.values,
                                                             strict=True)}


@pytest.mark.parametrize(("challenger", "promoted"), [(0.70, False), (0.85, True)],
                         ids=["clearly-worse", "equal"])
def test_the_estimated_guard_rolls_back_a_clearly_worse_challenger_and_passes_an_equal_one(
        registry: Registry, endpoints: EndpointService, challenger: float,
        promoted: bool) -> None:
    signals = ScriptedEstimates(0.85, challenger)
    job = run(registry, estimated_spec(), signals)
    assert set(signals.asked) == {1 - 0.05 / 2}  # intervals at 1 - alpha / L
    decisions = rollout_decisions([s.result for s in job.steps if s.result])
    canary = [d for d in decisions if d.phase is RolloutPhase.CANARY and d.estimated]
    assert canary and canary[0].estimated is not None
    assert canary[0].estimated.value == pytest.approx(challenger)
    assert canary[0].guard_metrics["champion_estimated_lower"] == pytest.approx(0.81)
    assert canary[0].test is None  # no live-accuracy test when the source is estimated
    if promoted:
        assert job.state is JobState.SUCCEEDED, job.error
        assert registry.get_version("churn@champion").version == GOOD
    else:
        assert job.state is JobState.FAILED and "estimated accuracy 0.700" in (job.error or "")
        assert canary[0].verdict.value == "rollback"
        assert registry.get_version("churn@champion").version == CHAMPION
        assert [(r.ref, r.weight) for r in endpoints.get("churn").spec.routes] == [
            ("churn@champion", 100.0)]


def test_the_estimated_guard_is_refused_without_a_shadow_phase_or_estimating_signals(
        registry: Registry) -> None:
    no_shadow = estimated_spec().model_copy(update={"shadow": None})
    with pytest.raises(InvalidInputError, match="needs a shadow phase"):
        Rollout(no_shadow, registry=registry, signals=ScriptedEstimates(0.8, 0.8))
    with pytest.raises(InvalidInputError, match="estimate accuracy without labels"):
        Rollout(estimated_spec(), registry=registry, signals=Experiment(0.8, 0.8))


def models() -> dict[int, LogisticRegression]:
    """The champion sees both features; the 'worse' challenger only the weak one, so it is
    rightly unsure (and wrong) far more often; 'equal' is the champion refitted."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(4000, 2))
    y = truth(rng, x)
    return {CHAMPION: LogisticRegression().fit(x, y),
            GOOD: LogisticRegression().fit(x[:, 1:], y)}


def served_by(fitted: dict[int, Any]) -> Answer:
    def answer(version: int, x: Any, y: Any, rng: np.random.Generator) -> tuple[Any, Any]:
        model = fitted[version]
        features = x if model.n_features_in_ == 2 else x[:, 1:]
        return model.predict(features), model.predict_proba(features)
    return answer


@pytest.mark.parametrize("worse", [True, False], ids=["worse", "equal"])
def test_the_estimated_guard_on_real_log_rows_fitted_per_version_on_labelled_answers(
        registry: Registry, endpoints: EndpointService, monitor: Monitor,
        worse: bool) -> None:
    """Labelled primary and shadow answers calibrate each version's estimator; the canary's
    rows get no label at all, and the worse challenger is still rolled back."""
    fitted = models()
    if not worse:
        fitted[GOOD] = LogisticRegression().fit(*_sample(5))
    traffic = LoggedTraffic(monitor, endpoints, served_by(fitted), requests=20, labels=False)
    job = run(registry, estimated_spec(), traffic)
    decisions = rollout_decisions([s.result for s in job.steps if s.result])
    judged = [d for d in decisions if d.phase is RolloutPhase.CANARY]
    assert judged and judged[0].estimated is not None, job.error
    metrics = judged[0].guard_metrics
    assert metrics["champion_estimated_accuracy"] > 0.8
    if worse:
        assert job.state is JobState.FAILED and "estimated accuracy" in (job.error or "")
        assert metrics["challenger_estimated_upper"] < metrics["champion_estimated_lower"]
        assert registry.get_version("churn@champion").version == CHAMPION
    else:
        assert job.state is JobState.SUCCEEDED, job.error
        assert registry.get_version("churn@champion").version == GOOD
    # Only the shadow phase's rows were labelled: the canary's estimate is all the guard had.
    assert monitor.feedback.labels("churn").num_rows == traffic.labelled
    assert traffic.sent * traffic.rows > traffic.labelled >= 200


def _sample(seed: int) -> tuple[Any, Any]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(4000, 2))
    return x, truth(rng, x)


def test_the_estimated_guard_refuses_before_any_weight_moves_without_labelled_rows(
        registry: Registry, endpoints: EndpointService, monitor: Monitor) -> None:
    traffic = LoggedTraffic(monitor, endpoints, served_by(models()), labels=False)
    traffic.shadow = _unlabelled_shadow(traffic)  # type: ignore[method-assign]
    job = run(registry, estimated_spec(), traffic)
    assert job.state is JobState.FAILED
    assert "labelled production rows" in (job.error or "") and "at least 200" in (job.error
                                                                                    or "")
    # The shadow came and went; no canary weight ever moved.
    history = endpoints.history("churn")[1:]
    assert all(challenger_weights(h.spec, GOOD) == 0 for h in history)
    assert len(history) == 2


def _unlabelled_shadow(traffic: LoggedTraffic) -> Callable[..., ShadowStats]:
    def shadow(endpoint: str, start: datetime, end: datetime,
               shadow_version: int) -> ShadowStats:
        traffic.serve(shadow=shadow_version, labels=False)
        return LogSignals.shadow(traffic, endpoint, start, utcnow(), shadow_version)
    return shadow



def test_the_plan_baseline_is_the_policys_or_the_champions_validation_accuracy() -> None:
    from mlharbor.core.errors import ConfigError
    from mlharbor.pipelines.abrollout import ab_plan
    from mlharbor.pipelines.policy import ABSpec, policy_from_dict

    measured = ab_plan(ABSpec(design="fixed"), {"accuracy": 0.82})
    assert measured == plan_experiment(baseline=0.82, min_detectable_effect=0.05,
                                       design="fixed")
    stated = ab_plan(ABSpec(baseline=0.7, looks=4), {"accuracy": 0.82})
    assert stated == plan_experiment(baseline=0.7, min_detectable_effect=0.05, looks=4)
    # An error rate is tested as its complement (answered requests): the same sample size.
    errors = ab_plan(ABSpec(metric="error_rate", baseline=0.1, looks=2), {})
    assert errors.baseline == pytest.approx(0.9)
    assert errors.n_per_variant == plan_experiment(baseline=0.1, min_detectable_effect=0.05,
                                                   looks=2).n_per_variant
    with pytest.raises(InvalidInputError, match=r"set rollout\.ab\.baseline"):
        ab_plan(ABSpec(), {"f1": 0.9})
    with pytest.raises(ConfigError, match="error_rate needs `baseline`"):
        policy_from_dict({"endpoint": "churn", "rollout": {"mode": "ab",
                                                           "ab": {"metric": "error_rate"}}})
