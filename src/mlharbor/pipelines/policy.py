"""Retraining policies: what watches an endpoint, what retrains it, and how the result rolls out.

One YAML document per endpoint (stored with revisions by :mod:`mlharbor.registry.policies`)::

    endpoint: churn
    triggers:
      drift: {window: 1h, of: 6, at_least: 4}
      metric: {name: accuracy, below: 0.80, window: 24h, min_labels: 200}
      estimated: {metric: accuracy, below: 0.80, window: 6h, min_rows: 200}
      schedule: "0 3 * * 1"
      cooldown: 6h
    data: {champion_data: true, production_window: 7d, min_rows: 100}
    recipe: {overrides: {validation: {folds: 3}}}
    validation: {gates: ["accuracy >= 0.75"]}
    rollout:
      approval: false
      shadow: {requests: 200, duration: 5m, min_agreement: 0.9}
      canary: {steps: [5, 25, 50, 100], hold: {requests: 100, duration: 2m}}
      guards: {error_rate_increase: 0.01, p99_ratio: 1.5, accuracy_drop: 0.02}
      mode: canary

Strict pydantic models (unknown fields are errors); durations are kept as the text the user
wrote (validated by :func:`mlharbor.core.durations.parse_duration`) and read as timedeltas
through properties. :func:`policy_from_yaml` names the file, line and field of every problem:
``policy.yaml line 7, rollout.canary.steps: ...``. Cheap to import (pydantic, stdlib).
"""

from __future__ import annotations

import copy
import itertools
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from mlharbor.core.errors import MlharborError

#: Live metrics computed from feedback (:mod:`mlharbor.monitoring.feedback`), and which way is
#: better: a floor (``below``) for the first, a ceiling (``above``) for the second.
HIGHER_IS_BETTER = ("accuracy", "precision", "recall", "f1", "roc_auc")
LOWER_IS_BETTER = ("mae", "rmse")
#: Metrics an A/B experiment tests per request (successes out of trials).
AB_METRICS = ("accuracy", "error_rate")


def _duration(text: str) -> str:
    from mlharbor.core.durations import parse_duration

    try:
        parse_duration(text)
    except MlharborError as exc:
        raise ValueError(f"{_reason(exc)}; expected a number and a unit: 90s, 15m, 24h, 7d "
                         f"or 2w") from exc
    return text.strip()


def _delta(text: str) -> timedelta:
    from mlharbor.core.durations import parse_duration

    return parse_duration(text)


def _name(value: str) -> str:
    from mlharbor.core.names import validate_name

    try:
        return validate_name(value, kind="name")
    except MlharborError as exc:
        raise ValueError(_reason(exc, hint=True)) from exc


def _alias(value: str) -> str:
    from mlharbor.core.names import validate_alias

    try:
        return validate_alias(value)
    except MlharborError as exc:
        raise ValueError(_reason(exc, hint=True)) from exc


def _gate(text: str) -> str:
    from mlharbor.evaluation.gates import parse_gate

    errors = []
    for task in ("classification", "regression"):
        try:
            parse_gate(text, task)
            return text
        except MlharborError as exc:
            errors.append(exc)
    raise ValueError(_reason(errors[0])) from errors[0]


def _reason(exc: MlharborError, *, hint: bool = False) -> str:
    """An error's message as a clause for a pydantic error (the caller adds the location)."""
    text = exc.message.rstrip(".")
    if hint and exc.hint:
        text += f" ({exc.hint.rstrip('.')})"
    return text


#: A duration as written (``90s``, ``15m``, ``24h``, ``7d``, ``2w``), checked on input.
Duration = Annotated[str, AfterValidator(_duration)]
Name = Annotated[str, AfterValidator(_name)]
Alias = Annotated[str, AfterValidator(_alias)]
#: A promotion gate sentence (:mod:`mlharbor.evaluation.gates` grammar), checked on input.
Gate = Annotated[str, AfterValidator(_gate)]
Probability = Annotated[float, Field(gt=0.0, lt=1.0, allow_inf_nan=False)]
Share = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DriftTrigger(_Strict):
    """Retrain when the drift verdict was ``drift`` in ``at_least`` of the last ``of`` windows."""

    window: Duration = "1h"
    of: int = Field(6, ge=1, le=1000)
    at_least: int = Field(4, ge=1, le=1000)

    @property
    def window_delta(self) -> timedelta:
        return _delta(self.window)

    @model_validator(mode="after")
    def _m_of_n(self) -> DriftTrigger:
        if self.at_least > self.of:
            raise ValueError(f"at_least ({self.at_least}) must be at most `of` ({self.of}): "
                             f"drift in at_least of the last `of` windows")
        return self


class MetricTrigger(_Strict):
    """Retrain when a live metric from feedback crosses its bound over ``window``.

    ``below`` is a floor for metrics where higher is better (accuracy, f1 ...), ``above`` a
    ceiling for errors (mae, rmse). Windows with fewer than ``min_labels`` labelled rows are
    not judged (too few to tell).
    """

    name: str = "accuracy"
    below: float | None = Field(None, allow_inf_nan=False)
    above: float | None = Field(None, allow_inf_nan=False)
    window: Duration = "24h"
    min_labels: int = Field(200, ge=1, le=10_000_000)

    @property
    def window_delta(self) -> timedelta:
        return _delta(self.window)

    @model_validator(mode="after")
    def _bound(self) -> MetricTrigger:
        if self.name in HIGHER_IS_BETTER:
            if self.below is None or self.above is not None:
                raise ValueError(f"{self.name} is higher-is-better: give `below` (a floor), "
                                 f"not `above`")
            if not 0.0 < self.below <= 1.0:
                raise ValueError(f"below must be in (0, 1] for {self.name}; got {self.below}")
        elif self.name in LOWER_IS_BETTER:
            if self.above is None or self.below is not None:
                raise ValueError(f"{self.name} is an error (lower is better): give `above` "
                                 f"(a ceiling), not `below`")
            if self.above <= 0.0:
                raise ValueError(f"above must be positive for {self.name}; got {self.above}")
        else:
            raise ValueError(f"unknown live metric {self.name!r}; expected one of "
                             f"{', '.join(HIGHER_IS_BETTER + LOWER_IS_BETTER)}")
        return self


class EstimatedTrigger(_Strict):
    """Retrain when a metric estimated without labels (CBPE) falls below a floor.

    Only for classifiers whose reference passed the calibration check; the estimate's upper
    bound must fall below ``below`` (so its stated error cannot explain the drop).
    """

    metric: str = "accuracy"
    below: Probability = 0.8
    window: Duration = "6h"
    min_rows: int = Field(200, ge=1, le=10_000_000)

    @property
    def window_delta(self) -> timedelta:
        return _delta(self.window)

    @field_validator("metric")
    @classmethod
    def _known(cls, value: str) -> str:
        from mlharbor.monitoring.estimation import BINARY_METRICS

        if value not in BINARY_METRICS:
            raise ValueError(f"cannot estimate {value!r} without labels; expected one of "
                             f"{', '.join(BINARY_METRICS)}")
        return value


class TriggersSpec(_Strict):
    """Any of the triggers starts a job; ``cooldown`` after a job started, none starts again.

    A manual ``mlharbor retrain ENDPOINT`` is always possible (it ignores the cooldown but not
    the one-job-per-endpoint rule).
    """

    drift: DriftTrigger | None = None
    metric: MetricTrigger | None = None
    estimated: EstimatedTrigger | None = None
    schedule: str | None = Field(None, description="Five-field cron, UTC.")
    cooldown: Duration = "6h"

    @property
    def cooldown_delta(self) -> timedelta:
        return _delta(self.cooldown)

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from mlharbor.pipelines.cron import parse_cron

        try:
            return parse_cron(value).expression
        except MlharborError as exc:
            raise ValueError(f"{_reason(exc)}; expected five fields: minute hour day-of-month "
                             f"month day-of-week, e.g. '0 3 * * mon'") from exc

    @property
    def automatic(self) -> bool:
        """Whether anything but a manual request can start a job."""
        return any(t is not None for t in (self.drift, self.metric, self.estimated,
                                           self.schedule))


class DataSpec(_Strict):
    """What a retraining job trains on.

    The champion's training data (from its lineage; its fingerprint is checked before use)
    plus the labelled production rows (prediction log joined with feedback) of the last
    ``production_window``; or, with ``uri``, a new dataset (CSV/Parquet path or ``s3://``)
    that replaces the champion's data. The snapshot is fingerprinted and recorded; fewer than
    ``min_rows`` rows fails the job at the data step.
    """

    champion_data: bool = True
    production_window: Duration | None = "7d"
    uri: str | None = None
    min_rows: int = Field(100, ge=1, le=1_000_000_000)

    @property
    def production_delta(self) -> timedelta | None:
        return _delta(self.production_window) if self.production_window else None

    @model_validator(mode="before")
    @classmethod
    def _uri_replaces(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("uri") is not None:
            if data.get("champion_data") is True:
                raise ValueError("`uri` replaces the champion's data: drop `champion_data` "
                                 "or set it to false")
            data = {**data, "champion_data": False}
        return data

    @field_validator("uri")
    @classmethod
    def _uri(cls, value: str | None) -> str | None:
        if value is None:
            return None
        text = value.strip()
        if not text or "\x00" in text or len(text) > 4096:
            raise ValueError("uri must be a CSV/Parquet path or an s3:// URI")
        return text

    @model_validator(mode="after")
    def _some_data(self) -> DataSpec:
        if not self.champion_data and self.uri is None and self.production_window is None:
            raise ValueError("no data: set `champion_data: true`, a `production_window` "
                             "or a `uri`")
        return self


class RecipeSpec(_Strict):
    """The champion's recipe (from its lineage), with ``overrides`` deep-merged into it."""

    overrides: dict[str, Any] = Field(default_factory=dict)

    def apply(self, base: dict[str, Any]) -> dict[str, Any]:
        """``base`` with the overrides merged in (mappings merged key by key, anything else,
        lists included, replaced); ``base`` is not changed."""
        return deep_merge(base, self.overrides)


class ValidationSpec(_Strict):
    """Gates beyond the recipe's own; the champion and the naive baseline are always gates."""

    gates: list[Gate] = Field(default_factory=list, max_length=50)


class ShadowSpec(_Strict):
    """Mirror traffic to the challenger (its answers are not returned) for ``requests`` mirrored
    requests or ``duration``, whichever comes first; then agreement must reach
    ``min_agreement`` and latency and error rate pass ``rollout.guards``."""

    requests: int = Field(200, ge=1, le=100_000_000)
    duration: Duration = "5m"
    min_agreement: Share = 0.9

    @property
    def duration_delta(self) -> timedelta:
        return _delta(self.duration)


class HoldSpec(_Strict):
    """How long each canary step is held: at least ``requests`` AND at least ``duration``."""

    requests: int = Field(100, ge=0, le=100_000_000)
    duration: Duration = "2m"

    @property
    def duration_delta(self) -> timedelta:
        return _delta(self.duration)


class CanarySpec(_Strict):
    """Challenger traffic percent at each step (increasing, ending at 100 = promote)."""

    steps: list[int] = Field(default_factory=lambda: [5, 25, 50, 100], min_length=1,
                             max_length=20)
    hold: HoldSpec = Field(default_factory=HoldSpec)

    @field_validator("steps")
    @classmethod
    def _increasing(cls, steps: list[int]) -> list[int]:
        bad = [s for s in steps if not 1 <= s <= 100]
        if bad:
            raise ValueError(f"each step is a traffic percent within 1..100, not {bad[0]}")
        if any(b <= a for a, b in itertools.pairwise(steps)):
            raise ValueError("steps must be strictly increasing")
        if steps[-1] != 100:
            raise ValueError("the last step must be 100 (the challenger takes all traffic "
                             "before promotion)")
        return steps


class GuardsSpec(_Strict):
    """What rolls a canary back: the challenger's error rate above the champion's by more than
    ``error_rate_increase``, its p99 latency above ``p99_ratio`` times the champion's, or its
    accuracy (``live`` from feedback, ``estimated`` by CBPE, or ``none``) lower by more than
    ``accuracy_drop`` — each judged by a one-sided test at level ``alpha``."""

    error_rate_increase: Share = 0.01
    p99_ratio: float = Field(1.5, ge=1.0, le=100.0, allow_inf_nan=False)
    accuracy_drop: Share = 0.02
    accuracy_source: Literal["live", "estimated", "none"] = "live"
    alpha: Probability = 0.05


class ABSpec(_Strict):
    """A fixed split, a test and a stopping rule stated before the first request is split.

    ``design: sequential`` looks at every check with O'Brien-Fleming alpha spending;
    ``fixed`` decides once at the horizon computed from ``power``. ``baseline`` is the
    control's expected rate (default: the champion's validation value of ``metric``).
    """

    split: int = Field(50, ge=1, le=99, description="Percent of traffic to the challenger.")
    metric: str = "accuracy"
    alpha: Probability = 0.05
    power: Probability = 0.8
    min_detectable_effect: Probability = 0.05
    design: Literal["fixed", "sequential"] = "sequential"
    looks: int = Field(5, ge=1, le=50)
    baseline: Probability | None = None

    @field_validator("metric")
    @classmethod
    def _metric(cls, value: str) -> str:
        if value not in AB_METRICS:
            raise ValueError(f"unknown A/B metric {value!r}; expected one of "
                             f"{', '.join(AB_METRICS)}")
        return value

    @model_validator(mode="after")
    def _baseline(self) -> ABSpec:
        if self.metric == "error_rate" and self.baseline is None:
            raise ValueError("an A/B test of error_rate needs `baseline` (the champion's "
                             "expected error rate); only accuracy defaults to the champion's "
                             "validation value")
        return self


class RolloutSpec(_Strict):
    """How a validated challenger reaches traffic: optional approval, optional shadow, then a
    canary (``mode: canary``) or an A/B experiment (``mode: ab``), promote or roll back."""

    approval: bool = False
    shadow: ShadowSpec | None = None
    canary: CanarySpec = Field(default_factory=CanarySpec)
    guards: GuardsSpec = Field(default_factory=GuardsSpec)
    mode: Literal["canary", "ab"] = "canary"
    ab: ABSpec | None = None

    @model_validator(mode="after")
    def _mode(self) -> RolloutSpec:
        if self.mode == "ab" and self.ab is None:
            object.__setattr__(self, "ab", ABSpec())
        if self.mode == "canary" and self.ab is not None:
            raise ValueError("`ab` settings are given but `mode` is canary: set `mode: ab` "
                             "or remove `ab`")
        return self


class Policy(_Strict):
    """A whole retraining policy for one endpoint."""

    endpoint: Name
    model: Name | None = Field(None, description="Default: the champion's model.")
    champion_alias: Alias = "champion"
    enabled: bool = True
    triggers: TriggersSpec = Field(default_factory=TriggersSpec)
    data: DataSpec = Field(default_factory=DataSpec)
    recipe: RecipeSpec = Field(default_factory=RecipeSpec)
    validation: ValidationSpec = Field(default_factory=ValidationSpec)
    rollout: RolloutSpec = Field(default_factory=RolloutSpec)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-safe spec as stored (defaults filled in, so a revision is self-contained)."""
        return self.model_dump(mode="json")


WHAT = "policy"
HINT = "See the policy reference in the README (`mlharbor policies apply`)."


def load_policy(path: str | Path) -> Policy:
    """Read and validate a policy file; every error names the file, line and field."""
    from mlharbor.core.yamldoc import read_text

    text = read_text(path, what=WHAT, hint="Check the path; a policy is a YAML file.")
    return policy_from_yaml(text, source=str(path))


def policy_from_yaml(text: str, *, source: str = "policy") -> Policy:
    """Parse a YAML (or JSON) policy document; ConfigError names line and field."""
    from mlharbor.core.yamldoc import load_yaml

    doc = load_yaml(text, source=source)
    return policy_from_dict(doc.data, source=source, lines=doc.lines)


def policy_from_dict(data: Any, *, source: str = "policy",
                     lines: dict[tuple[str | int, ...], int] | None = None) -> Policy:
    """Validate a mapping (parsed YAML/JSON, or a stored spec) into a :class:`Policy`."""
    from mlharbor.core.errors import ConfigError
    from mlharbor.core.yamldoc import validate_model

    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a policy must be a mapping with at least `endpoint`; "
                          f"received {type(data).__name__}.", hint=HINT)
    return validate_model(Policy, data, source=source, lines=lines, what=WHAT, hint=HINT)


def deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` merged in: mappings key by key, anything else replaced."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out
