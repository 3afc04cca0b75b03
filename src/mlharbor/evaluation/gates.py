"""Promotion gates: small sentences a version must satisfy before an alias moves to it.

Grammar (case-insensitive; metrics are holdout values unless prefixed with ``cv.``)::

    <metric> (>= | > | <= | < | ==) <number>        f1 >= 0.80     cv.rmse < 12.5
    [significantly] better than baseline            on the primary metric
    [significantly] better than champion
    not worse than champion by more than <number>   on the primary metric
    <metric>[<slice>] (>= | ...) <number>          f1[contract=month-to-month] >= 0.6

Champion gates pass, with a note, when there is no champion yet. A slice gate judges the
holdout metric on one slice of the recipe's ``slices`` (the key as the report shows it:
``column=value``, ``column=[lo, hi)`` for a bin, or a filter's name; matched ignoring case and
spaces); it fails when that slice is absent or the metric undefined on it.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import re
from collections.abc import Callable, Mapping
from typing import Any

from mlharbor.core.errors import ConfigError
from mlharbor.evaluation.metrics import check_metric, higher_is_better

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt, "==": operator.eq,
}
_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_THRESHOLD = re.compile(rf"^(cv\.)?([a-z0-9_]+)\s*(>=|<=|==|>|<)\s*({_NUMBER})$")
_SLICED = re.compile(rf"^(cv\.)?([a-z0-9_]+)\s*\[(.+)\]\s*(>=|<=|==|>|<)\s*({_NUMBER})$",
                     re.IGNORECASE)
_BETTER = re.compile(r"^(significantly\s+)?better\s+than\s+(baseline|champion)$")
_NOT_WORSE = re.compile(rf"^not\s+worse\s+than\s+champion\s+by\s+more\s+than\s+({_NUMBER})$")
FORMS = (
    "'<metric> >= <number>' (e.g. 'f1 >= 0.8', 'cv.rmse < 12')",
    "'better than baseline'",
    "'significantly better than baseline'",
    "'better than champion'",
    "'not worse than champion by more than 0.01'",
    "'<metric>[<slice>] >= <number>' (e.g. 'f1[contract=month-to-month] >= 0.6')",
)


@dataclasses.dataclass(frozen=True)
class Gate:
    text: str
    kind: str  # threshold | baseline | champion | champion_margin
    metric: str | None = None
    op: str | None = None
    value: float = 0.0
    scope: str = "holdout"  # holdout | cv
    significant: bool = False
    slice: str | None = None  # a slice key (threshold gates only)


def slice_key(text: str) -> str:
    """How slice keys are compared: case and whitespace do not matter."""
    return "".join(str(text).split()).casefold()


@dataclasses.dataclass(frozen=True)
class SliceEvidence:
    """One slice's holdout metrics, as a slice gate judges them."""

    key: str
    rows: int
    metrics: Mapping[str, float]


@dataclasses.dataclass(frozen=True)
class GateVerdict:
    gate: str
    passed: bool
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def parse_gate(text: str, task: str) -> Gate:
    """Parse one gate sentence; ConfigError lists the accepted forms when it cannot."""
    cleaned = " ".join(str(text).strip().lower().split())
    # Slice values keep their case, so the slice form is read from the original text.
    if match := _SLICED.match(" ".join(str(text).split())):
        scope, metric, key, op, number = match.groups()
        if scope:
            raise ConfigError(
                f"The gate {text!r} asks for a cross-validation figure on a slice; slice "
                "metrics are holdout figures: drop 'cv.'.", field="gates")
        check_metric(metric.lower(), task)
        return Gate(text, "threshold", metric.lower(), op, float(number), "holdout",
                    slice=key.strip())
    if match := _THRESHOLD.match(cleaned):
        scope, metric, op, number = match.groups()
        check_metric(metric, task)
        return Gate(text, "threshold", metric, op, float(number), "cv" if scope else "holdout")
    if match := _BETTER.match(cleaned):
        significant, other = match.groups()
        return Gate(text, other, significant=bool(significant))
    if match := _NOT_WORSE.match(cleaned):
        return Gate(text, "champion_margin", value=float(match.group(1)))
    raise ConfigError(
        f"Cannot read the gate {text!r}; expected one of: {'; '.join(FORMS)}.",
        field="gates",
    )


@dataclasses.dataclass(frozen=True)
class Evidence:
    """What gates are judged on: holdout and CV figures of the candidate and its rivals."""

    primary: str
    holdout: Mapping[str, float]
    cv_mean: Mapping[str, float]
    baseline_holdout: Mapping[str, float]
    baseline_test: Mapping[str, Any]  # paired difference candidate - baseline on the holdout
    champion_holdout: Mapping[str, float] | None = None
    champion_test: Mapping[str, Any] | None = None
    champion_ref: str | None = None
    champion_error: str | None = None
    slices: Mapping[str, SliceEvidence] = dataclasses.field(default_factory=dict)


def evaluate_gates(gates: list[Gate], evidence: Evidence) -> list[GateVerdict]:
    return [_judge(gate, evidence) for gate in gates]


def _judge(gate: Gate, ev: Evidence) -> GateVerdict:
    primary = ev.primary
    if gate.kind == "threshold" and gate.slice is not None:
        return _judge_slice(gate, ev)
    if gate.kind == "threshold":
        assert gate.metric is not None and gate.op is not None
        source = ev.cv_mean if gate.scope == "cv" else ev.holdout
        value = source.get(gate.metric, math.nan)
        if math.isnan(value):
            return GateVerdict(gate.text, False, f"{gate.metric} is not available for this model")
        passed = _OPS[gate.op](value, gate.value)
        where = "CV mean" if gate.scope == "cv" else "holdout"
        return GateVerdict(gate.text, passed, f"{where} {gate.metric} = {value:.4f}")
    if gate.kind == "baseline":
        return _better(gate, primary, ev.holdout, ev.baseline_holdout, ev.baseline_test,
                       "baseline")
    if ev.champion_error is not None:
        return GateVerdict(gate.text, False, f"the champion could not be scored: "
                                             f"{ev.champion_error}")
    if ev.champion_holdout is None:
        return GateVerdict(gate.text, True, "skipped: there is no champion yet")
    champion = f"champion {ev.champion_ref}" if ev.champion_ref else "champion"
    if gate.kind == "champion":
        return _better(gate, primary, ev.holdout, ev.champion_holdout, ev.champion_test or {},
                       champion)
    mine = ev.holdout.get(primary, math.nan)
    theirs = ev.champion_holdout.get(primary, math.nan)
    shortfall = (theirs - mine) if higher_is_better(primary) else (mine - theirs)
    passed = not math.isnan(shortfall) and shortfall <= gate.value + 1e-12
    return GateVerdict(
        gate.text, passed,
        f"{primary} {mine:.4f} vs {champion} {theirs:.4f} (worse by {max(shortfall, 0):.4f}, "
        f"allowed {gate.value})",
    )


def _better(
    gate: Gate,
    metric: str,
    mine: Mapping[str, float],
    theirs: Mapping[str, float],
    test: Mapping[str, Any],
    rival: str,
) -> GateVerdict:
    a, b = mine.get(metric, math.nan), theirs.get(metric, math.nan)
    better = a > b if higher_is_better(metric) else a < b
    detail = f"{metric} {a:.4f} vs {rival} {b:.4f}"
    if gate.significant:
        better = bool(test.get("significantly_better"))
        p_value = test.get("p_value")
        detail += f" (paired bootstrap p = {p_value:.4f})" if p_value is not None else ""
    return GateVerdict(gate.text, bool(better), detail)


def _judge_slice(gate: Gate, ev: Evidence) -> GateVerdict:
    assert gate.metric is not None and gate.op is not None and gate.slice is not None
    by_key = {slice_key(k): s for k, s in ev.slices.items()}
    found = by_key.get(slice_key(gate.slice))
    if found is None:
        known = ", ".join(sorted(s.key for s in ev.slices.values())[:20]) or "none"
        return GateVerdict(gate.text, False, f"there is no slice {gate.slice!r} in this "
                                             f"evaluation; slices: {known}")
    value = found.metrics.get(gate.metric, math.nan)
    if value is None or math.isnan(value):
        return GateVerdict(gate.text, False, f"{gate.metric} is not defined on slice "
                                             f"{found.key} (n = {found.rows})")
    passed = _OPS[gate.op](value, gate.value)
    return GateVerdict(gate.text, passed, f"holdout {gate.metric} on slice {found.key} "
                                          f"(n = {found.rows}) = {value:.4f}")
