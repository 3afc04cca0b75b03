"""Alert rules, their M-of-N state machine, and the history of what fired and resolved.

A rule watches one signal of one endpoint (:data:`KINDS`) against a threshold. Each evaluation
records whether the signal breached; the alert **fires** when at least ``m`` of the last ``n``
evaluations breached (one spike is not enough) and **resolves** after ``m`` evaluations in a row
without a breach. Only these two transitions notify. The state machine, written down once::

    ok --(>= m of last n breached)--> firing --(m clean in a row)--> ok (a "resolved" event)

State and history are kept in a JSON-lines file so a restart neither re-fires nor forgets.

Rules in force (:func:`configured_rules`): a default set (:func:`default_rules`: error rate,
p99 latency, drift, live accuracy, traffic stop and log backlog, each on every endpoint) unless
``monitoring.default_alert_rules`` is false, extended by the rules of
``monitoring.alert_rules_file``; a file rule with the name of a default rule replaces it (so
``default-latency-p99`` with another threshold retunes it), any other name is added.
"""

from __future__ import annotations

import collections
import math
import threading
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from mlharbor.core.clock import utcnow
from mlharbor.core.errors import ConfigError

if TYPE_CHECKING:
    from mlharbor.settings import Settings

#: kind -> (what the value is, breach when value is "above" or "below" the threshold)
KINDS: dict[str, tuple[str, str]] = {
    "latency": ("latency percentile in seconds", "above"),
    "error_rate": ("share of requests that failed or fell back", "above"),
    "drift": ("importance-weighted share of drifted features", "above"),
    "accuracy": ("live accuracy from feedback", "below"),
    "traffic_stop": ("requests in the window", "below"),
    "log_backlog": ("prediction journal bytes not yet stored", "above"),
}


class AlertRule(BaseModel):
    name: str = Field(..., min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:-]+$")
    kind: str
    endpoint: str = Field("*", description="Endpoint name, or * for every endpoint.")
    threshold: float
    percentile: float = Field(0.95, gt=0, lt=1, description="latency rules only")
    window: str = Field("5m", description="Span each evaluation looks back over.")
    m: int = Field(3, ge=1)
    n: int = Field(5, ge=1)
    severity: str = Field("warning", pattern="^(info|warning|critical)$")
    description: str = ""

    @field_validator("kind")
    @classmethod
    def _kind(cls, value: str) -> str:
        if value not in KINDS:
            raise ValueError(f"unknown kind {value!r}; expected one of {', '.join(KINDS)}")
        return value

    @model_validator(mode="after")
    def _m_of_n(self) -> AlertRule:
        if self.m > self.n:
            raise ValueError(f"m ({self.m}) cannot exceed n ({self.n})")
        return self

    def breached(self, value: float) -> bool:
        return value > self.threshold if KINDS[self.kind][1] == "above" \
            else value < self.threshold


def load_rules(source: Path | Iterable[Mapping[str, Any]]) -> list[AlertRule]:
    """Rules from a YAML file (``rules: [...]``) or a list of mappings, checked."""
    items: Any = source
    if isinstance(source, Path):
        import yaml

        try:
            items = (yaml.safe_load(source.read_text(encoding="utf-8")) or {}).get("rules", [])
        except (OSError, yaml.YAMLError, AttributeError) as exc:
            raise ConfigError(f"Cannot read alert rules from {str(source)!r}: {exc}",
                              hint="Write a YAML mapping with a 'rules' list.") from exc
    rules = []
    for i, item in enumerate(items):
        try:
            rules.append(AlertRule.model_validate(item))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "rule"
            raise ConfigError(f"Alert rule #{i + 1} is invalid at {where}: {first['msg']}.",
                              hint=f"Kinds: {', '.join(KINDS)}.") from exc
    names = [r.name for r in rules]
    duplicated = {n for n in names if names.count(n) > 1}
    if duplicated:
        raise ConfigError(f"Alert rule names must be unique; repeated: {sorted(duplicated)}.")
    return rules


def default_rules(settings: Settings) -> list[AlertRule]:
    """The rules every installation starts with, on every endpoint (``*``: the worst endpoint
    counts). Thresholds are deliberately plain; retune one by writing a rule of the same name
    in ``monitoring.alert_rules_file``."""
    mon = settings.monitoring
    return load_rules([
        {"name": "default-error-rate", "kind": "error_rate", "threshold": 0.05, "window": "5m",
         "description": "More than 5% of requests answered by a fallback."},
        {"name": "default-latency-p99", "kind": "latency", "percentile": 0.99,
         "threshold": 1.0, "window": "5m",
         "description": "p99 request latency above 1 s."},
        # Strictly above the largest float below the share: at or above it, exactly when the
        # drift report (and the Drift page) says "Drift detected".
        {"name": "default-drift", "kind": "drift",
         "threshold": math.nextafter(mon.drift_dataset_share, 0.0), "window": "1h",
         "m": 2, "n": 3, "description": "Dataset drift over the last hour (importance-"
         f"weighted drifted share at or above monitoring.drift_dataset_share, "
         f"{mon.drift_dataset_share:g})."},
        {"name": "default-live-accuracy", "kind": "accuracy", "threshold": 0.7, "window": "1h",
         "m": 2, "n": 3, "description": "Accuracy from feedback labels below 0.7 over the last "
         "hour."},
        {"name": "default-traffic-stop", "kind": "traffic_stop", "threshold": 1,
         "window": "15m", "m": 2, "n": 2, "description": "An endpoint that served in the last "
         "day received no request for 15 minutes."},
        {"name": "default-log-backlog", "kind": "log_backlog",
         "threshold": float(mon.buffer_max_bytes // 2), "severity": "critical",
         "description": "The prediction journal is half full (monitoring.buffer_max_bytes); "
         "past full, records are dropped."},
    ])


def configured_rules(settings: Settings) -> tuple[list[AlertRule], dict[str, str]]:
    """The rules in force and where each comes from (``default`` or ``file``): the defaults
    unless ``monitoring.default_alert_rules`` is false, then the file's rules, replacing a
    default of the same name and adding the others."""
    mon = settings.monitoring
    rules: dict[str, AlertRule] = {}
    sources: dict[str, str] = {}
    if mon.default_alert_rules:
        for rule in default_rules(settings):
            rules[rule.name], sources[rule.name] = rule, "default"
    if mon.alert_rules_file is not None:
        for rule in load_rules(Path(mon.alert_rules_file)):
            rules[rule.name], sources[rule.name] = rule, "file"
    return list(rules.values()), sources


def _condition(rule: AlertRule) -> dict[str, str]:
    """How a person reads the rule's breach condition: ``direction`` ("above", "below", or
    "at or above" for a threshold just below a round number, as the default drift rule's) and
    ``threshold_text`` in the signal's unit."""
    direction, threshold = KINDS[rule.kind][1], rule.threshold
    rounded = round(threshold, 6)
    if direction == "above" and rounded != threshold and math.nextafter(rounded, 0.0) == threshold:
        direction, threshold = "at or above", rounded
    if rule.kind == "latency":
        text = f"{threshold:.4g} s (p{100 * rule.percentile:g})"
    elif rule.kind in ("error_rate", "drift"):
        text = f"{100 * threshold:.4g}%"
    elif rule.kind == "traffic_stop":
        text = f"{threshold:g} requests"
    elif rule.kind == "log_backlog":
        text = f"{threshold / 2**20:.4g} MiB"
    else:
        text = f"{threshold:.4g}"
    return {"direction": direction, "threshold_text": text}


Notify = Callable[[dict[str, Any]], Any]  # returns what happened to each delivery


class AlertManager:
    """Evaluates rules on signal values, keeps state and history, and notifies transitions."""

    def __init__(self, rules: list[AlertRule], *, state_file: Path | None = None,
                 notify: Notify | None = None, sources: Mapping[str, str] | None = None
                 ) -> None:
        self.rules = {r.name: r for r in rules}
        self.sources = {r.name: (sources or {}).get(r.name, "file") for r in rules}
        self._last: dict[str, tuple[float | None, str | None, datetime]] = {}
        self._evaluations: dict[str, int] = dict.fromkeys(self.rules, 0)
        self.state_file = state_file
        self.notify = notify
        self._lock = threading.Lock()
        self._recent: dict[str, collections.deque[bool]] = {
            r.name: collections.deque(maxlen=r.n) for r in rules}
        self._firing: dict[str, dict[str, Any]] = {}
        self._history: list[dict[str, Any]] = []
        self._load()

    def evaluate(self, values: Mapping[str, float | None], now: datetime | None = None, *,
                 where: Mapping[str, str | None] | None = None) -> list[dict[str, Any]]:
        """Record one evaluation per rule (``None``: no data, counts as no breach);
        ``where`` names, for a rule on every endpoint, the endpoint its value came from."""
        now = now or utcnow()
        events = []
        with self._lock:
            for name, rule in self.rules.items():
                value = values.get(name)
                self._last[name] = (value, (where or {}).get(name), now)
                self._evaluations[name] += 1
                recent = self._recent[name]
                recent.append(value is not None and rule.breached(value))
                breaches = sum(recent)
                if name not in self._firing and breaches >= rule.m:
                    event = self._event(rule, "firing", value, now, breaches)
                    self._firing[name] = event
                    events.append(event)
                elif name in self._firing and len(recent) >= rule.m and \
                        not any(list(recent)[-rule.m:]):
                    event = self._event(rule, "resolved", value, now, breaches)
                    event["fired_at"] = self._firing.pop(name)["at"]
                    events.append(event)
            self._history.extend(events)
            self._save(events)
        for event in events:
            if self.notify is not None:
                event["deliveries"] = self.notify(event)
        return events

    def active(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._firing.values())

    def rule_states(self) -> list[dict[str, Any]]:
        """Every rule in force with its state: firing or ok, the last value (and, for a rule
        on every endpoint, which endpoint it came from) and its breaches among the last n."""
        with self._lock:
            out = []
            for name, rule in self.rules.items():
                value, endpoint, at = self._last.get(name, (None, None, None))
                recent = self._recent[name]
                out.append({
                    **rule.model_dump(), "source": self.sources[name],
                    **_condition(rule), "meaning": KINDS[rule.kind][0],
                    "state": "firing" if name in self._firing else "ok",
                    "last_value": value, "last_endpoint": endpoint,
                    "last_evaluated_at": at.isoformat() if at is not None else None,
                    "breaches": sum(recent), "evaluations": len(recent),
                })
            return sorted(out, key=lambda r: (r["state"] != "firing", r["name"]))

    def history(self, limit: int = 100) -> list[dict[str, Any]]:
        with self._lock:
            return list(reversed(self._history[-limit:]))

    def _event(self, rule: AlertRule, state: str, value: float | None, now: datetime,
               breaches: int) -> dict[str, Any]:
        meaning = KINDS[rule.kind][0]
        condition = _condition(rule)
        worst = self._last.get(rule.name, (None, None, None))[1]
        subject = rule.endpoint if rule.endpoint != "*" else (
            f"{worst} (the worst endpoint)" if worst else "every endpoint")
        shown = f"{value:.4g}" if value is not None else "no data"
        return {
            "alert": rule.name, "state": state, "severity": rule.severity, "kind": rule.kind,
            "endpoint": rule.endpoint if rule.endpoint != "*" or not worst else worst,
            "value": value, "threshold": rule.threshold,
            "at": now.isoformat(), "breaches": f"{breaches} of last {rule.n}",
            "summary": (f"{rule.name} {state}: {meaning} of {subject} is {shown} "
                        f"({condition['direction']} {condition['threshold_text']} in "
                        f"{breaches} of the last "
                        f"{len(self._recent[rule.name])} evaluations)"),
            "description": rule.description,
        }

    def _save(self, events: list[dict[str, Any]]) -> None:
        if self.state_file is None or not events:
            return
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        with self.state_file.open("ab") as fh:
            for event in events:
                fh.write(orjson.dumps(event) + b"\n")

    def _load(self) -> None:
        if self.state_file is None or not self.state_file.exists():
            return
        for line in self.state_file.read_bytes().splitlines():
            try:
                event = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue  # a torn last line after a crash
            self._history.append(event)
            if event["alert"] in self.rules:
                if event["state"] == "firing":
                    self._firing[event["alert"]] = event
                    # Start from "still breaching" so a restart does not resolve it at once.
                    self._recent[event["alert"]].extend([True] * self.rules[event["alert"]].m)
                else:
                    self._firing.pop(event["alert"], None)
                    self._recent[event["alert"]].clear()
