"""The A/B (and canary) decision rule, with the stopping rule stated before traffic is split.

Looking at a running experiment and stopping the first time ``p < 0.05`` ("peeking") makes
false positives several times more frequent than 5 %. So the rule is fixed up front in an
:class:`~mlharbor.core.loop.ABPlan`, and :func:`decide` only concludes where the plan allows:

- **fixed horizon**: each variant gets ``n_per_variant`` outcomes, computed from the wanted
  power, ``alpha``, the baseline and the minimum detectable effect (the two-proportion z-test
  formula ``n = (z_{1-a/2} sqrt(2 pbar qbar) + z_{power} sqrt(p1 q1 + p2 q2))^2 / delta^2``, or
  ``2 sigma^2 (z_{1-a/2} + z_{power})^2 / delta^2`` for a mean), then one two-sided z-test.
  Before the horizon every look says ``continue`` and tests nothing.
- **group-sequential**: looks at any time (each canary step), each with a boundary from the
  Lan-DeMets alpha-spending function of O'Brien-Fleming type,
  ``alpha(t) = 2 (2 - 2 Phi(z_{1-a/4} / sqrt(t)))`` (alpha / 2 per side), ``t`` the
  information fraction: early looks
  need overwhelming evidence, the last one about what a fixed test needs, and the chance of
  any false stop over all looks stays ``alpha``. Each look's boundary is found by numerical
  integration of the z-statistics' joint law (the recursion of Armitage, McPherson and Rowe,
  on a Simpson grid), given the fractions of the looks actually taken; the maximum sample
  size is the fixed one times the inflation factor that keeps the power at the planned looks.
  The interval is the repeated confidence interval at the look's boundary, and the p-value
  the stage-wise ordering one, so both agree with the decision.

The statistic is the pooled two-proportion z (or Welch's z for a mean); the effect is challenger
minus control. The computation of boundaries is cached by looks, so simulating thousands of
experiments at the planned looks costs one integration.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from collections.abc import Sequence
from statistics import NormalDist
from typing import Any

from mlharbor.core.errors import ConflictError, InvalidInputError
from mlharbor.core.loop import ABDecision, ABDesign, ABPlan, ABVerdict

METRICS = ("proportion", "mean")
SPENDING = "obrien_fleming"
MAX_BOUNDARY = 8.0  # |z| beyond which nothing is left to spend (two-sided tail ~1e-15)
MIN_LOOK_INCREMENT = 0.01  # a look must add at least 1 % of the planned information
MAX_GRID = 1201
_NORMAL = NormalDist()


@dataclasses.dataclass(frozen=True, slots=True)
class Proportion:
    """A variant's successes out of trials (e.g. right predictions out of labelled ones)."""

    successes: int
    trials: int

    def __post_init__(self) -> None:
        if self.successes < 0 or self.trials < 0:
            raise InvalidInputError(
                f"Counts cannot be negative: got {self.successes} successes out of "
                f"{self.trials} trials.", field="successes")
        if self.successes > self.trials:
            raise InvalidInputError(
                f"successes ({self.successes}) cannot exceed trials ({self.trials}).",
                field="trials")


@dataclasses.dataclass(frozen=True, slots=True)
class Mean:
    """A variant's continuous metric: mean, standard deviation and number of observations."""

    mean: float
    std: float
    n: int

    def __post_init__(self) -> None:
        if self.n < 0 or not self.std >= 0.0 or not math.isfinite(self.mean + self.std):
            raise InvalidInputError(
                f"A mean needs n >= 0 and a finite std >= 0; got mean={self.mean}, "
                f"std={self.std}, n={self.n}.", field="n")


def plan_experiment(*, baseline: float, min_detectable_effect: float, alpha: float = 0.05,
                    power: float = 0.8, design: str = "sequential", metric: str = "proportion",
                    looks: int = 5) -> ABPlan:
    """State the experiment before it starts: its test, its stopping rule, its sample size.

    ``baseline`` is the control's rate for a proportion, the outcome's standard deviation for a
    mean; ``min_detectable_effect`` is an absolute difference (5 points = 0.05), detected with
    probability ``power`` in either direction by a two-sided test at level ``alpha``.
    ``looks`` is how many equally spaced looks the sequential design plans for power (it may
    look at other times: alpha is spent by information, not by look count).
    """
    _check_open("alpha", alpha)
    _check_open("power", power)
    if design not in tuple(ABDesign):
        raise InvalidInputError(f"Unknown design {design!r}; expected one of "
                                f"{', '.join(ABDesign)}.", field="design")
    if metric not in METRICS:
        raise InvalidInputError(f"Unknown metric {metric!r}; expected one of "
                                f"{', '.join(METRICS)}.", field="metric")
    if not (math.isfinite(min_detectable_effect) and min_detectable_effect > 0.0):
        raise InvalidInputError(f"min_detectable_effect must be a positive difference, got "
                                f"{min_detectable_effect!r}.", field="min_detectable_effect")
    if not 1 <= looks <= 50:
        raise InvalidInputError(f"looks must be between 1 and 50, got {looks}.", field="looks")
    z_a, z_b = _NORMAL.inv_cdf(1.0 - alpha / 2.0), _NORMAL.inv_cdf(power)
    if metric == "proportion":
        fixed_n = _proportion_size(baseline, min_detectable_effect, z_a, z_b)
    else:
        if not (math.isfinite(baseline) and baseline > 0.0):
            raise InvalidInputError(f"For a mean, baseline is the outcome's standard deviation "
                                    f"and must be positive, got {baseline!r}.", field="baseline")
        fixed_n = math.ceil(2.0 * baseline ** 2 * (z_a + z_b) ** 2 / min_detectable_effect ** 2)
    if design == ABDesign.FIXED:
        n, looks, spending = fixed_n, 1, "none"
    else:
        n, spending = math.ceil(fixed_n * _inflation(alpha, power, looks) - 1e-9), SPENDING
    return ABPlan(design=ABDesign(design), metric=metric, alpha=alpha, power=power,
                  baseline=baseline, min_detectable_effect=min_detectable_effect,
                  n_per_variant=n, fixed_n_per_variant=fixed_n, looks=looks,
                  look_sizes=tuple(math.ceil(n * k / looks - 1e-9) for k in range(1, looks + 1)),
                  spending=spending)


def decide(plan: ABPlan, control: Proportion | Mean, challenger: Proportion | Mean, *,
           previous: Sequence[ABDecision] = ()) -> ABDecision:
    """One look at the experiment under ``plan``, given the cumulative outcomes so far.

    ``previous`` are the decisions of the earlier looks (a sequential design needs them to know
    how much alpha is spent); a look after a final decision is refused.
    """
    n_c, n_t = _sizes(plan, control, challenger)
    for d in previous:
        if d.design is not plan.design:
            raise InvalidInputError("previous decisions come from a different design.",
                                    field="previous")
        if d.final:
            raise ConflictError(f"The experiment already stopped at look {d.look} "
                                f"({d.verdict.value}); start a new one.")
    effect, se0, se1 = _statistic(control, challenger)
    z = effect / se0 if se0 > 0.0 else 0.0
    # Information relative to the plan: 1/(1/n_c + 1/n_t) is n/2 for equal sizes.
    t = round(min(1.0, 2.0 / (1.0 / n_c + 1.0 / n_t) / plan.n_per_variant), 12)
    common: dict[str, Any] = {"design": plan.design, "effect": effect, "z": z, "n_control": n_c,
              "n_challenger": n_t, "planned_n_per_variant": plan.n_per_variant,
              "information_fraction": t}
    if plan.design is ABDesign.FIXED:
        z_a = _NORMAL.inv_cdf(1.0 - plan.alpha / 2.0)
        if min(n_c, n_t) < plan.n_per_variant:  # before the horizon: nothing is tested
            return ABDecision(verdict=ABVerdict.CONTINUE, look=0, ci_low=effect - z_a * se1,
                              ci_high=effect + z_a * se1, p_value=None, boundary_z=None,
                              alpha_spent=0.0, **common)
        p_value = 2.0 * _NORMAL.cdf(-abs(z))
        return ABDecision(verdict=_verdict(z, z_a, final=True), look=1,
                          ci_low=effect - z_a * se1, ci_high=effect + z_a * se1,
                          p_value=p_value, boundary_z=z_a, alpha_spent=plan.alpha, **common)
    fractions = [d.information_fraction for d in previous]
    if t >= 1.0 - MIN_LOOK_INCREMENT / 10:
        t = 1.0  # the last look spends what is left, however little it adds
    if fractions and (t <= fractions[-1] or (t < 1.0 and t < fractions[-1] + MIN_LOOK_INCREMENT)):
        raise InvalidInputError(
            f"A look must add information: this one is at {t:.3f} of the plan, the last was "
            f"at {fractions[-1]:.3f} (at least {MIN_LOOK_INCREMENT:.0%} more is needed).",
            hint="Look once per canary step, after the step's minimum requests.",
            field="previous")
    here = _stage(plan.alpha, (*fractions, t))
    before = _stage(plan.alpha, tuple(fractions)) if fractions else _ORIGIN
    p_value = min(1.0, before.spent + _exit(before, t, abs(z) * math.sqrt(t)))
    return ABDecision(verdict=_verdict(z, here.boundary, final=t >= 1.0), look=len(fractions) + 1,
                      ci_low=effect - here.boundary * se1, ci_high=effect + here.boundary * se1,
                      p_value=p_value, boundary_z=here.boundary, alpha_spent=here.spent,
                      **{**common, "information_fraction": t})


def boundaries(alpha: float, fractions: Sequence[float]) -> tuple[float, ...]:
    """The |z| boundaries of O'Brien-Fleming-type alpha spending at the given look fractions."""
    _check_open("alpha", alpha)
    fractions = tuple(round(float(f), 12) for f in fractions)
    steps = [0.0, *fractions]
    if not fractions or not fractions[-1] <= 1.0 or any(
            b <= a for a, b in itertools.pairwise(steps)):
        raise InvalidInputError(f"Look fractions must increase within (0, 1], got "
                                f"{list(fractions)}.", field="fractions")
    return tuple(_stage(alpha, tuple(fractions[: k + 1])).boundary
                 for k in range(len(fractions)))


def _check_open(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and 0.0 < value < 1.0):
        raise InvalidInputError(f"{name} must be strictly between 0 and 1, got {value!r}.",
                                field=name)


def _proportion_size(p1: float, delta: float, z_a: float, z_b: float) -> int:
    """Per-variant size of the two-sided two-proportion z-test, the larger of the two
    directions (the one nearer 0.5 has more variance), so the power holds either way."""
    if not 0.0 < p1 < 1.0:
        raise InvalidInputError(f"baseline must be a rate strictly between 0 and 1, got {p1!r}.",
                                field="baseline")
    sizes = []
    for p2 in (p1 - delta, p1 + delta):
        if 0.0 < p2 < 1.0:
            pbar = (p1 + p2) / 2.0
            root = (z_a * math.sqrt(2.0 * pbar * (1.0 - pbar))
                    + z_b * math.sqrt(p1 * (1.0 - p1) + p2 * (1.0 - p2)))
            sizes.append(math.ceil(root ** 2 / delta ** 2 - 1e-9))
    if not sizes:
        raise InvalidInputError(f"A difference of {delta} from a baseline of {p1} leaves the "
                                "rates outside (0, 1).", field="min_detectable_effect")
    return max(sizes)


def _sizes(plan: ABPlan, control: Any, challenger: Any) -> tuple[int, int]:
    sizes: tuple[int, int]
    if (plan.metric == "proportion" and isinstance(control, Proportion)
            and isinstance(challenger, Proportion)):
        sizes = (control.trials, challenger.trials)
    elif plan.metric == "mean" and isinstance(control, Mean) and isinstance(challenger, Mean):
        sizes = (control.n, challenger.n)
    else:
        kind = "Proportion" if plan.metric == "proportion" else "Mean"
        raise InvalidInputError(f"The plan tests a {plan.metric}: pass {kind} outcomes for "
                                f"both variants, got {type(control).__name__} and "
                                f"{type(challenger).__name__}.", field="control")
    if min(sizes) < 2:
        raise InvalidInputError(f"Each variant needs at least 2 outcomes to be compared, got "
                                f"{sizes[0]} (control) and {sizes[1]} (challenger).",
                                field="trials")
    return sizes


def _statistic(control: Any, challenger: Any) -> tuple[float, float, float]:
    """(effect, its standard error under no difference, its standard error for the interval)."""
    if isinstance(control, Proportion):
        n_c, n_t = control.trials, challenger.trials
        p_c, p_t = control.successes / n_c, challenger.successes / n_t
        pooled = (control.successes + challenger.successes) / (n_c + n_t)
        se0 = math.sqrt(pooled * (1.0 - pooled) * (1.0 / n_c + 1.0 / n_t))
        se1 = math.sqrt(p_c * (1.0 - p_c) / n_c + p_t * (1.0 - p_t) / n_t)
        return p_t - p_c, se0, se1
    se = math.sqrt(control.std ** 2 / control.n + challenger.std ** 2 / challenger.n)
    return challenger.mean - control.mean, se, se


def _verdict(z: float, boundary: float, *, final: bool) -> ABVerdict:
    if z >= boundary:
        return ABVerdict.CHALLENGER_BETTER
    if z <= -boundary:
        return ABVerdict.CHALLENGER_WORSE
    return ABVerdict.NO_DIFFERENCE if final else ABVerdict.CONTINUE


def _spend(alpha: float, t: float) -> float:
    """Lan-DeMets O'Brien-Fleming-type spending, alpha / 2 on each side (as ldbounds and
    gsDesign do): ``2 * (2 - 2 Phi(z_{1 - alpha/4} / sqrt(t)))``, so alpha(1) = alpha."""
    if t >= 1.0:
        return alpha
    return 4.0 * _NORMAL.cdf(-_NORMAL.inv_cdf(1.0 - alpha / 4.0) / math.sqrt(t))


# --- the recursion: the score process S(t) = Z(t) sqrt(t) is Brownian motion in information
# time (plus drift theta * t under an effect); a look at t stops when |S(t)| >= b = c sqrt(t).
# A stage holds the sub-density of S at a look over the paths that have not stopped yet, as
# quadrature weights times density values on a grid, and the alpha spent so far.

@dataclasses.dataclass(frozen=True)
class _Stage:
    t: float
    boundary: float  # on the z scale
    spent: float
    x: Any
    wf: Any


def _origin() -> _Stage:
    return _Stage(0.0, math.inf, 0.0, (0.0,), (1.0,))


_ORIGIN = _origin()


def _exit(prev: _Stage, t: float, b: float, theta: float = 0.0) -> float:
    """Probability that a path still running at ``prev`` has |S(t)| >= b."""
    import numpy as np
    from scipy.special import ndtr

    x, wf = np.asarray(prev.x), np.asarray(prev.wf)
    s = math.sqrt(t - prev.t)
    mu = x + theta * (t - prev.t)
    return float((wf * (ndtr((mu - b) / s) + ndtr((-b - mu) / s))).sum())


def _next(prev: _Stage, t: float, b: float, theta: float, spent: float) -> _Stage:
    """The sub-density at look ``t`` of the paths that did not stop there (|S(t)| < b)."""
    import numpy as np

    d = t - prev.t
    s = math.sqrt(d)
    centre = theta * t
    lo, hi = max(-b, centre - 9.0 * math.sqrt(t)), min(b, centre + 9.0 * math.sqrt(t))
    if hi <= lo:
        return _Stage(t, b / math.sqrt(t), spent, (0.0,), (0.0,))
    h = min(0.05, s / 8.0)
    m = min(MAX_GRID, 2 * math.ceil((hi - lo) / (2 * h)) + 1)
    grid = np.linspace(lo, hi, m)
    simpson = np.ones(m)
    simpson[1:-1:2], simpson[2:-1:2] = 4.0, 2.0
    simpson *= (hi - lo) / (m - 1) / 3.0
    kernel = (grid[:, None] - np.asarray(prev.x)[None, :] - theta * d) / s
    density = (np.exp(-0.5 * kernel ** 2) / (s * math.sqrt(2 * math.pi))) @ np.asarray(prev.wf)
    return _Stage(t, b / math.sqrt(t), spent, grid, simpson * density)


@functools.lru_cache(maxsize=512)
def _stage(alpha: float, fractions: tuple[float, ...]) -> _Stage:
    """The look at ``fractions[-1]`` after looks at the others: its boundary, the alpha spent."""
    from scipy.optimize import brentq

    prev = _stage(alpha, fractions[:-1]) if len(fractions) > 1 else _ORIGIN
    t = fractions[-1]
    target = _spend(alpha, t) - prev.spent
    b_max = MAX_BOUNDARY * math.sqrt(t)
    if target <= _exit(prev, t, b_max):
        b = b_max  # nothing (or next to nothing) to spend at this look
    else:
        b = float(brentq(lambda v: _exit(prev, t, v) - target, 1e-9, b_max, xtol=1e-10))
    return _next(prev, t, b, 0.0, prev.spent + _exit(prev, t, b))


def _rejection(alpha: float, fractions: tuple[float, ...], theta: float) -> float:
    """Probability of stopping at any look when the score drifts by ``theta`` per information."""
    total, prev = 0.0, _ORIGIN
    for k in range(len(fractions)):
        look = _stage(alpha, fractions[: k + 1])
        b = look.boundary * math.sqrt(look.t)
        total += _exit(prev, look.t, b, theta)
        prev = _next(prev, look.t, b, theta, 0.0)
    return total


@functools.lru_cache(maxsize=64)
def _inflation(alpha: float, power: float, looks: int) -> float:
    """Max sample size of the sequential design over the fixed one, for the same power."""
    from scipy.optimize import brentq

    planned = tuple(round(k / looks, 12) for k in range(1, looks + 1))

    def drift(fractions: tuple[float, ...]) -> float:
        return float(brentq(lambda th: _rejection(alpha, fractions, th) - power, 0.0, 20.0,
                            xtol=1e-10))

    return (drift(planned) / drift((1.0,))) ** 2
