"""Records of the closed loop: what monitoring, the job runner and rollout hand each other.

monitoring -> pipelines: :class:`EstimatedPerformance` (a metric estimated without labels, with
its stated error). pipelines -> training: :class:`RetrainRequest`. pipelines -> serving:
:class:`RolloutDecision`, which carries the :class:`ABDecision` of the experiment's test under
the :class:`ABPlan` stated before the first request was split (see DESIGN.md section 1).

Frozen dataclasses, cheap to import (no numpy), JSON-friendly through
:func:`mlharbor.core.records.to_dict`. The computations live in
:mod:`mlharbor.monitoring.estimation` and :mod:`mlharbor.pipelines.abtest`.
"""

from __future__ import annotations

import dataclasses
import enum
from datetime import datetime


@dataclasses.dataclass(frozen=True, slots=True)
class EstimatedPerformance:
    """A window's metric estimated from predicted probabilities alone (confidence-based).

    ``value`` is the expected metric given the window's calibrated probabilities.
    ``standard_error`` is the sampling error of the realised metric around that expectation for
    a window of ``n`` rows; ``calibration_error`` bounds the bias left by imperfect calibration
    (measured on the labelled reference, weighted by where the window's scores fall).
    ``lower``/``upper`` = value -/+ (z * standard_error + calibration_error), clipped to [0, 1],
    at ``confidence``. ``calibrated`` says whether the reference passed the calibration bound;
    ``calibrator`` is ``"isotonic"`` when one was fitted on the reference, else ``"none"``.
    """

    metric: str
    value: float
    standard_error: float
    lower: float
    upper: float
    n: int
    calibrated: bool
    calibration_error: float
    calibrator: str
    confidence: float


class ABDesign(enum.StrEnum):
    """How an experiment may stop: once at a fixed horizon, or at group-sequential looks."""

    FIXED = "fixed"
    SEQUENTIAL = "sequential"


class ABVerdict(enum.StrEnum):
    """The outcome of one look at an experiment."""

    CONTINUE = "continue"
    CHALLENGER_BETTER = "challenger_better"
    CHALLENGER_WORSE = "challenger_worse"
    NO_DIFFERENCE = "no_difference"


@dataclasses.dataclass(frozen=True, slots=True)
class ABPlan:
    """An experiment's design, fixed before any traffic is split (no peeking).

    ``metric`` is ``"proportion"`` (successes out of trials, e.g. accuracy from feedback) or
    ``"mean"`` (a continuous metric). ``baseline`` is the control's expected rate for a
    proportion and the outcome's standard deviation for a mean. ``n_per_variant`` is the most
    each variant needs (the horizon of a fixed design, the last look of a sequential one);
    ``fixed_n_per_variant`` is what a fixed design would need, so the sequential design's
    price shows. ``look_sizes`` are the planned per-variant sizes of the looks.
    """

    design: ABDesign
    metric: str
    alpha: float
    power: float
    baseline: float
    min_detectable_effect: float
    n_per_variant: int
    fixed_n_per_variant: int
    looks: int
    look_sizes: tuple[int, ...]
    spending: str


@dataclasses.dataclass(frozen=True, slots=True)
class ABDecision:
    """One look at an experiment: the verdict, the effect with its interval, the test.

    ``effect`` is challenger minus control, with the interval ``[ci_low, ci_high]`` (a repeated
    confidence interval at the look's boundary for a sequential design, so it stays valid
    however many looks are taken). ``p_value`` is ``None`` before a fixed design's horizon
    (nothing is tested then); for a sequential design it is the stage-wise ordering p-value.
    ``boundary_z`` is the |z| the look had to reach; ``alpha_spent`` the error spent up to it.
    """

    verdict: ABVerdict
    design: ABDesign
    look: int
    information_fraction: float
    effect: float
    ci_low: float
    ci_high: float
    z: float
    p_value: float | None
    boundary_z: float | None
    alpha_spent: float
    n_control: int
    n_challenger: int
    planned_n_per_variant: int

    @property
    def final(self) -> bool:
        """Whether the experiment stops here."""
        return self.verdict is not ABVerdict.CONTINUE


class RetrainTrigger(enum.StrEnum):
    """Why a retraining job was asked for."""

    DRIFT = "drift"
    METRIC_FLOOR = "metric_floor"
    ESTIMATED_FLOOR = "estimated_floor"
    SCHEDULE = "schedule"
    MANUAL = "manual"


@dataclasses.dataclass(frozen=True, slots=True)
class RetrainRequest:
    """What pipelines hand training: why, from which champion, on which data, under which policy.

    ``base_ref`` is the champion the recipe and training data come from (``"churn:3"``);
    ``data_since``/``data_until`` bound the labelled production rows added to its data;
    ``dataset_uri`` replaces the data instead when set. ``dedupe_key`` is what one endpoint's
    persisting alarm shares, so it starts one job, not one per window.
    """

    endpoint: str
    trigger: RetrainTrigger
    reason: str
    base_ref: str | None
    requested_by: str
    at: datetime
    policy_revision: int | None = None
    data_since: datetime | None = None
    data_until: datetime | None = None
    dataset_uri: str | None = None

    @property
    def dedupe_key(self) -> str:
        return f"{self.endpoint}:{self.trigger.value}"


class RolloutPhase(enum.StrEnum):
    SHADOW = "shadow"
    CANARY = "canary"
    AB = "ab"


class RolloutVerdict(enum.StrEnum):
    """What a rollout step decided: keep the weights, move to the next step, or finish."""

    HOLD = "hold"
    ADVANCE = "advance"
    PROMOTE = "promote"
    ROLLBACK = "rollback"


@dataclasses.dataclass(frozen=True, slots=True)
class RolloutDecision:
    """What pipelines hand serving at one rollout step, and what the ledger keeps of it.

    ``weights`` maps version references to traffic percent after the decision;
    ``guard_metrics`` are the values the guards were judged on (error rate, p99 latency, live or
    estimated accuracy); ``test`` is the statistical test behind the verdict, if any.
    """

    job_id: str
    step: int
    phase: RolloutPhase
    verdict: RolloutVerdict
    reason: str
    weights: dict[str, int]
    guard_metrics: dict[str, float]
    at: datetime
    test: ABDecision | None = None
    estimated: EstimatedPerformance | None = None
