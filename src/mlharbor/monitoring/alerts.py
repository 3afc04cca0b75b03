"""Alert rules, their M-of-N state machine, and the history of what fired and resolved.

A rule watches one signal of one endpoint (:data:`KINDS`) against a threshold. Each evaluation
records whether the signal breached; the alert **fires** when at least ``m`` of the last ``n``
evaluations breached (one spike is not enough) and **resolves** after ``m`` evaluations in a row
without a breach. Only these two transitions notify. The state machine, written down once::

    ok --(>= m of last n breached)--> firing --(m clean in a row)--> ok (a "resolved" event)

State and history are kept in a JSON-lines file so a restart neither re-fires nor forgets.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from mlharbor.core.clock import utcnow
from mlharbor.core.errors import ConfigError

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


Notify = Callable[[dict[str, Any]], Any]  # returns what happened to each delivery


class AlertManager:
    """Evaluates rules on signal values, keeps state and history, and notifies transitions."""

    def __init__(self, rules: list[AlertRule], *, state_file: Path | None = None,
                 notify: Notify | None = None) -> None:
        self.rules = {r.name: r for r in rules}
        self.state_file = state_file
        self.notify = notify
        self._lock = threading.Lock()
        self._recent: dict[str, collections.deque[bool]] = {
            r.name: collections.deque(maxlen=r.n) for r in rules}
        self._firing: dict[str, dict[str, Any]] = {}
        self._history: list[dict[str, Any]] = []
        self._load()

    def evaluate(self, values: Mapping[str, float | None], now: datetime | None = None
                 ) -> list[dict[str, Any]]:
        """Record one evaluation per rule (``None``: no data, counts as no breach)."""
        now = now or utcnow()
        events = []
        with self._lock:
            for name, rule in self.rules.items():
                value = values.get(name)
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

    def history(self, limit: int = 100) -> list[dict[str, Any]]:
        with self._lock:
            return list(reversed(self._history[-limit:]))

    def _event(self, rule: AlertRule, state: str, value: float | None, now: datetime,
               breaches: int) -> dict[str, Any]:
        meaning, direction = KINDS[rule.kind]
        return {
            "alert": rule.name, "state": state, "severity": rule.severity, "kind": rule.kind,
            "endpoint": rule.endpoint, "value": value, "threshold": rule.threshold,
            "at": now.isoformat(), "breaches": f"{breaches} of last {rule.n}",
            "summary": (f"{rule.name} {state}: {meaning} of {rule.endpoint} is {value} "
                        f"({direction} {rule.threshold} in {breaches} of the last "
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
