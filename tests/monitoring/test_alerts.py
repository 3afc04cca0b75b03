"""Alerts: M-of-N against spikes, firing then resolved, delivered to a real webhook receiver."""

from __future__ import annotations

import http.server
import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlharbor.core.errors import ConfigError
from mlharbor.core.records import PredictionRecord
from mlharbor.monitoring.alerts import AlertManager, load_rules
from mlharbor.monitoring.notify import Webhooks
from mlharbor.monitoring.promrules import prometheus_rules
from mlharbor.monitoring.service import Monitor
from mlharbor.monitoring.signals import signal_values
from mlharbor.settings import Settings
from tests.support import run_cli

RULES = [
    {"name": "churn-latency-p95", "kind": "latency", "endpoint": "churn", "threshold": 0.25,
     "percentile": 0.95, "window": "1m", "m": 3, "n": 5},
    {"name": "churn-errors", "kind": "error_rate", "endpoint": "churn", "threshold": 0.05},
    {"name": "churn-drift", "kind": "drift", "endpoint": "churn", "threshold": 0.3},
    {"name": "churn-accuracy", "kind": "accuracy", "endpoint": "churn", "threshold": 0.8,
     "window": "1d", "m": 1, "n": 1},
    {"name": "churn-silent", "kind": "traffic_stop", "endpoint": "churn", "threshold": 1,
     "window": "15m", "m": 2, "n": 2, "severity": "critical"},
    {"name": "log-backlog", "kind": "log_backlog", "threshold": 1e8},
]


class Receiver:
    """A real HTTP server on a free loopback port that keeps what it is sent."""

    def __init__(self, fail_first: int = 0) -> None:
        received: list[tuple[str, Any]] = []
        failures = [fail_first]

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if failures[0] > 0:
                    failures[0] -= 1
                    self.send_response(503)
                else:
                    received.append((self.path, json.loads(body)))
                    self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return None

        self.received = received
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver(fail_first=1)  # the first delivery fails: retries must cover it
    yield server
    server.close()


def test_sustained_breach_fires_once_spike_does_not_and_recovery_resolves(
        settings: Settings, receiver: Receiver) -> None:
    """Latency read from the real log, minute by minute: one slow minute, then five."""
    rule = load_rules([RULES[0]])
    monitor = Monitor(settings)
    alerts = AlertManager(rule, state_file=settings.home / "alerts.jsonl",
                          notify=Webhooks([receiver.url + "/generic"], [receiver.url + "/slack"],
                                          backoff_s=0.05))
    start = datetime.now(UTC) - timedelta(hours=1)
    slow = {2, 6, 7, 8, 9, 10}  # minute 2 is a spike; 6..10 is sustained
    events = []
    for minute in range(16):
        at = start + timedelta(minutes=minute)
        for i in range(50):
            latency = 0.4 if minute in slow else 0.02
            monitor.log.emit(PredictionRecord(f"m{minute}-{i}", "churn", "churn@champion", 1,
                                              {"x": i}, [0], latency, at + timedelta(seconds=i)))
        monitor.log.flush()
        monitor.log.compact()
        values = signal_values(monitor, rule, now=at + timedelta(minutes=1))
        events += [(minute, e["state"]) for e in alerts.evaluate(values, now=at)]
    assert events == [(8, "firing"), (13, "resolved")]
    paths = [path for path, _ in receiver.received]
    assert paths == ["/generic", "/slack", "/generic", "/slack"]
    generic = receiver.received[0][1]
    assert generic["alert"] == "churn-latency-p95" and generic["value"] == pytest.approx(0.4)
    assert "churn-latency-p95 resolved" in receiver.received[3][1]["text"]
    history = alerts.history()
    assert [e["state"] for e in history] == ["resolved", "firing"]
    assert history[1]["deliveries"][0]["attempts"] == 2 and history[1]["deliveries"][0][
        "delivered"]
    # A restart keeps the history and does not fire again.
    again = AlertManager(rule, state_file=settings.home / "alerts.jsonl")
    assert again.active() == [] and len(again.history()) == 2


def test_traffic_stop_fires_on_silence(settings: Settings) -> None:
    rule = load_rules([RULES[4]])
    alerts = AlertManager(rule)
    monitor = Monitor(settings)
    states = [e["state"] for _ in range(3)
              for e in alerts.evaluate(signal_values(monitor, rule))]
    assert states == ["firing"]


def test_bad_rules_are_refused_with_the_field() -> None:
    with pytest.raises(ConfigError, match="kind"):
        load_rules([{"name": "x", "kind": "vibes", "threshold": 1}])
    with pytest.raises(ConfigError, match=r"m \(3\) cannot exceed n \(2\)"):
        load_rules([{"name": "x", "kind": "latency", "threshold": 1, "m": 3, "n": 2}])


def test_exported_rules_pass_promtool(settings: Settings, tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    rules_file = tmp_path / "mlharbor-rules.yml"
    rules_file.write_text(yaml.safe_dump({"rules": RULES}))
    out = tmp_path / "rules.yml"
    result = run_cli("monitor", "export-rules", "--rules", str(rules_file), "--output",
                     str(out), env={"MLHARBOR_HOME": str(settings.home)})
    assert result.returncode == 0, result.stderr
    check = subprocess.run([promtool, "check", "rules", str(out)], capture_output=True,
                           text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 6 rules found" in check.stdout
    exported = yaml.safe_load(out.read_text())["groups"][0]["rules"]
    assert exported[0]["expr"].startswith("count_over_time(((histogram_quantile(0.95")
    assert exported == prometheus_rules(load_rules(RULES))["groups"][0]["rules"]
