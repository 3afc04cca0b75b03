"""The A/B decision rule, simulated: false positives at alpha with no difference, power at the
size the plan states, for the fixed-horizon and the group-sequential design (every look)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from mlharbor.core.errors import ConflictError, InvalidInputError
from mlharbor.core.loop import ABDecision, ABDesign, ABPlan, ABVerdict
from mlharbor.pipelines.abtest import Mean, Proportion, boundaries, decide, plan_experiment

ALPHA, POWER = 0.05, 0.80
Z99 = 2.576  # one-sided margins of the Monte Carlo rates: wrong only once in ~200 seeds


def margin(rate: float, experiments: int) -> float:
    return Z99 * math.sqrt(rate * (1.0 - rate) / experiments)


def simulate(plan: ABPlan, p_control: float, p_challenger: float, experiments: int, seed: int,
             look_sizes: tuple[int, ...] | None = None) -> tuple[list[ABDecision], Any]:
    """Run ``experiments`` seeded experiments through :func:`decide`, looking at every look
    (cumulative binomial counts drawn vectorised); the final decision and the size at it."""
    rng = np.random.default_rng(seed)
    sizes = np.asarray(look_sizes or plan.look_sizes)
    step = np.diff(sizes, prepend=0)
    control = rng.binomial(step, p_control, size=(experiments, sizes.size)).cumsum(axis=1)
    challenger = rng.binomial(step, p_challenger, size=(experiments, sizes.size)).cumsum(axis=1)
    finals, stopped_at = [], []
    for e in range(experiments):
        previous: list[ABDecision] = []
        for k, n in enumerate(sizes.tolist()):
            decision = decide(plan, Proportion(int(control[e, k]), n),
                              Proportion(int(challenger[e, k]), n), previous=previous)
            previous.append(decision)
            if decision.final:
                break
        assert decision.final, "the last look must conclude"
        finals.append(decision)
        stopped_at.append(n)
    return finals, np.asarray(stopped_at)


def rate(decisions: list[ABDecision], *verdicts: ABVerdict) -> float:
    return sum(d.verdict in verdicts for d in decisions) / len(decisions)


def test_the_fixed_horizon_size_is_the_two_proportion_formula() -> None:
    plan = plan_experiment(baseline=0.85, min_detectable_effect=0.05, alpha=ALPHA, power=POWER,
                           design="fixed")
    # (1.95996 sqrt(2 .825 .175) + 0.84162 sqrt(.85 .15 + .8 .2))^2 / .05^2 = 905.4 -> 906
    assert plan.n_per_variant == plan.fixed_n_per_variant == 906
    assert plan.look_sizes == (906,) and plan.design is ABDesign.FIXED
    # Smaller effects, more power or a lower alpha all need more samples.
    assert plan_experiment(baseline=0.85, min_detectable_effect=0.03, design="fixed"
                           ).n_per_variant > 2 * 906
    assert plan_experiment(baseline=0.85, min_detectable_effect=0.05, power=0.9, design="fixed"
                           ).n_per_variant > 906
    # A mean: 2 sigma^2 (z_a + z_b)^2 / delta^2 = 2 * 4 * 7.849 / 1 = 62.8 -> 63
    assert plan_experiment(baseline=2.0, min_detectable_effect=1.0, metric="mean",
                           design="fixed").n_per_variant == 63


def test_sequential_boundaries_are_lan_demets_obrien_fleming() -> None:
    # The published values for five equally spaced looks, two-sided alpha 0.05 (ldbounds,
    # gsDesign sfLDOF): 4.877, 3.357, 2.680, 2.290, 2.031.
    got = boundaries(ALPHA, [0.2, 0.4, 0.6, 0.8, 1.0])
    assert got == pytest.approx((4.877, 3.357, 2.680, 2.290, 2.031), abs=2e-3)
    assert boundaries(ALPHA, [1.0]) == pytest.approx((1.95996,), abs=1e-4)
    plan = plan_experiment(baseline=0.85, min_detectable_effect=0.05)
    # The price of five looks is a ~2.5 % larger maximum size (inflation factor 1.025).
    assert plan.fixed_n_per_variant == 906
    assert plan.n_per_variant == 929  # ceil(906 * 1.0247)
    assert plan.look_sizes[-1] == plan.n_per_variant and len(plan.look_sizes) == 5


@pytest.mark.parametrize("design", ["fixed", "sequential"])
def test_false_positives_stay_at_alpha_with_no_true_difference(design: str) -> None:
    plan = plan_experiment(baseline=0.85, min_detectable_effect=0.05, alpha=ALPHA,
                           power=POWER, design=design)
    experiments = 10_000  # margin 0.0056: a 6 % rate would fail
    finals, _ = simulate(plan, 0.85, 0.85, experiments, seed=1)
    false_positives = rate(finals, ABVerdict.CHALLENGER_BETTER, ABVerdict.CHALLENGER_WORSE)
    assert false_positives <= ALPHA + margin(ALPHA, experiments), false_positives
    assert rate(finals, ABVerdict.NO_DIFFERENCE) == 1.0 - false_positives


def test_peeking_with_the_fixed_threshold_would_inflate_false_positives() -> None:
    """Why the rule exists: |z| >= 1.96 at each of the five looks stops ~14 % of null runs."""
    plan = plan_experiment(baseline=0.85, min_detectable_effect=0.05)
    rng = np.random.default_rng(2)
    sizes = np.asarray(plan.look_sizes)
    draw = lambda: rng.binomial(np.diff(sizes, prepend=0), 0.85, (4000, 5)).cumsum(axis=1)  # noqa: E731
    a, b = draw() / sizes, draw() / sizes
    pooled = (a + b) / 2
    z = (b - a) / np.sqrt(pooled * (1 - pooled) * 2 / sizes)
    assert (np.abs(z) >= 1.96).any(axis=1).mean() > 0.10
    assert (np.abs(z) >= np.asarray(boundaries(ALPHA, sizes / sizes[-1]))).any(axis=1).mean(
    ) <= ALPHA + margin(ALPHA, 4000)


def test_sequential_looks_may_come_at_any_fractions() -> None:
    """Lan-DeMets: canary steps need not be the planned looks; alpha is spent by information."""
    plan = plan_experiment(baseline=0.85, min_detectable_effect=0.05)
    n = plan.n_per_variant
    irregular = (round(0.05 * n), round(0.25 * n), round(0.5 * n), n)
    finals, _ = simulate(plan, 0.85, 0.85, 3000, seed=3, look_sizes=irregular)
    assert rate(finals, ABVerdict.CHALLENGER_BETTER, ABVerdict.CHALLENGER_WORSE) <= (
        ALPHA + margin(ALPHA, 3000))


@pytest.mark.parametrize("design", ["fixed", "sequential"])
def test_a_five_point_accuracy_drop_is_detected_with_the_planned_power(design: str) -> None:
    plan = plan_experiment(baseline=0.85, min_detectable_effect=0.05, alpha=ALPHA,
                           power=POWER, design=design)
    experiments = 1000
    finals, stopped_at = simulate(plan, 0.85, 0.80, experiments, seed=4)
    power = rate(finals, ABVerdict.CHALLENGER_WORSE)
    assert power >= POWER - margin(POWER, experiments), power
    assert rate(finals, ABVerdict.CHALLENGER_BETTER) == 0.0  # never the wrong sign
    for d in finals:
        if d.verdict is ABVerdict.CHALLENGER_WORSE:
            assert d.ci_high < 0.0 and d.p_value is not None and d.p_value <= ALPHA
    if design == "sequential":  # stopping early saves samples on average
        assert stopped_at.mean() < plan.fixed_n_per_variant
    # An improvement is detected the same way, with the other verdict.
    better, _ = simulate(plan, 0.80, 0.85, 300, seed=5)
    assert rate(better, ABVerdict.CHALLENGER_BETTER) >= POWER - margin(POWER, 300)


def test_a_continuous_metric_is_detected_at_its_planned_size() -> None:
    plan = plan_experiment(baseline=2.0, min_detectable_effect=0.5, metric="mean",
                           design="fixed")
    rng = np.random.default_rng(6)
    n = plan.n_per_variant
    hits, nulls = 0, 0
    for _ in range(600):
        a, b, c = rng.normal(10.0, 2.0, n), rng.normal(10.5, 2.0, n), rng.normal(10.0, 2.0, n)
        control = Mean(float(a.mean()), float(a.std(ddof=1)), n)
        shifted = Mean(float(b.mean()), float(b.std(ddof=1)), n)
        same = Mean(float(c.mean()), float(c.std(ddof=1)), n)
        hits += decide(plan, control, shifted).verdict is ABVerdict.CHALLENGER_BETTER
        nulls += decide(plan, control, same).verdict is not ABVerdict.NO_DIFFERENCE
    assert hits / 600 >= POWER - margin(POWER, 600)
    assert nulls / 600 <= ALPHA + margin(ALPHA, 600)


def test_a_fixed_design_tests_nothing_before_its_horizon() -> None:
    plan = plan_experiment(baseline=0.85, min_detectable_effect=0.05, design="fixed")
    early = decide(plan, Proportion(450, 500), Proportion(350, 500))  # a huge gap, but early
    assert early.verdict is ABVerdict.CONTINUE and early.p_value is None and not early.final
    assert early.effect == pytest.approx(-0.2) and early.ci_low < -0.2 < early.ci_high < 0
    done = decide(plan, Proportion(770, 906), Proportion(725, 906))
    assert done.final and done.p_value is not None and done.look == 1
    with pytest.raises(ConflictError, match="already stopped"):
        decide(plan, Proportion(800, 950), Proportion(760, 950), previous=[done])


def test_a_sequential_look_reports_effect_interval_and_spent_alpha() -> None:
    plan = plan_experiment(baseline=0.85, min_detectable_effect=0.05)
    first = decide(plan, Proportion(158, 186), Proportion(150, 186))
    assert first.verdict is ABVerdict.CONTINUE and first.look == 1
    assert first.boundary_z == pytest.approx(4.877, abs=0.01)
    assert first.alpha_spent < 1e-5 and first.p_value is not None and first.p_value > 0.05
    # The repeated confidence interval uses the look's boundary, so it is wide early on.
    assert first.ci_high - first.ci_low == pytest.approx(
        2 * 4.877 * math.sqrt(158 / 186 * 28 / 186 / 186 + 150 / 186 * 36 / 186 / 186),
        rel=1e-3)
    with pytest.raises(InvalidInputError, match="must add information"):
        decide(plan, Proportion(158, 187), Proportion(150, 187), previous=[first])
    second = decide(plan, Proportion(320, 372), Proportion(270, 372), previous=[first])
    assert second.verdict is ABVerdict.CHALLENGER_WORSE and second.look == 2
    assert second.p_value is not None and second.p_value < second.alpha_spent <= 0.05


@pytest.mark.parametrize(("call", "message"), [
    (lambda: plan_experiment(baseline=0.85, min_detectable_effect=0.05, alpha=0.0), "alpha"),
    (lambda: plan_experiment(baseline=0.85, min_detectable_effect=0.05, alpha=1.5), "alpha"),
    (lambda: plan_experiment(baseline=0.85, min_detectable_effect=0.05, power=1.0), "power"),
    (lambda: plan_experiment(baseline=0.85, min_detectable_effect=0.05, power=-0.2), "power"),
    (lambda: plan_experiment(baseline=1.2, min_detectable_effect=0.05), "baseline"),
    (lambda: plan_experiment(baseline=0.85, min_detectable_effect=0.0), "min_detectable"),
    (lambda: plan_experiment(baseline=0.5, min_detectable_effect=0.6), "outside"),
    (lambda: plan_experiment(baseline=-1.0, min_detectable_effect=1, metric="mean"),
     "standard deviation"),
    (lambda: plan_experiment(baseline=0.85, min_detectable_effect=0.05, looks=0), "looks"),
    (lambda: plan_experiment(baseline=0.85, min_detectable_effect=0.05, design="bayes"),
     "Unknown design"),
    (lambda: plan_experiment(baseline=0.85, min_detectable_effect=0.05, metric="ratio"),
     "Unknown metric"),
    (lambda: Proportion(-1, 10), "negative"),
    (lambda: Proportion(5, -10), "negative"),
    (lambda: Proportion(11, 10), "cannot exceed"),
    (lambda: Mean(1.0, -1.0, 10), "std"),
    (lambda: decide(plan_experiment(baseline=0.85, min_detectable_effect=0.05),
                    Proportion(1, 1), Proportion(1, 1)), "at least 2"),
    (lambda: decide(plan_experiment(baseline=0.85, min_detectable_effect=0.05),
                    Mean(1.0, 1.0, 10), Mean(1.0, 1.0, 10)), "pass Proportion"),
    (lambda: boundaries(0.05, [0.5, 0.4]), "must increase"),
])
def test_bad_input_is_a_clear_error(call: Any, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        call()


def test_the_last_look_may_add_little_but_concludes() -> None:
    plan = plan_experiment(baseline=0.85, min_detectable_effect=0.05)
    n = plan.n_per_variant
    almost = decide(plan, Proportion(int(0.85 * (n - 5)), n - 5),
                    Proportion(int(0.85 * (n - 5)), n - 5))
    assert almost.verdict is ABVerdict.CONTINUE
    last = decide(plan, Proportion(int(0.85 * n), n), Proportion(int(0.85 * n), n),
                  previous=[almost])
    assert last.information_fraction == 1.0 and last.verdict is ABVerdict.NO_DIFFERENCE
    assert last.alpha_spent == pytest.approx(ALPHA, abs=1e-6)
