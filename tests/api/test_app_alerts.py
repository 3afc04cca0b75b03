"""``mlharbor server`` runs the alert loop: ``create_app`` builds it from
``monitoring.alert_rules_file``, its lifespan starts and stops it, and
``/api/v1/monitoring/alerts`` answers from the running loop's manager."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import yaml

from mlharbor.api.app import create_app
from mlharbor.settings import Settings
from tests.security.fixtures import admin_headers_for
from tests.support import LiveServer

# No traffic at all on "churn": its traffic_stop rule breaches on every evaluation.
RULES = [
    {"name": "churn-silent", "kind": "traffic_stop", "endpoint": "churn", "threshold": 1,
     "window": "15m", "m": 2, "n": 2, "severity": "critical"},
    {"name": "log-backlog", "kind": "log_backlog", "threshold": 1e8},
]


def _settings(tmp_path: Path, rules: bool) -> Settings:
    monitoring: dict[str, object] = {"evaluation_interval_s": 0.2, "default_alert_rules": False}
    if rules:
        rules_file = tmp_path / "rules.yml"
        rules_file.write_text(yaml.safe_dump({"rules": RULES}))
        monitoring["alert_rules_file"] = str(rules_file)
    return Settings(home=tmp_path / "home", monitoring=monitoring)


def test_the_alerts_route_answers_from_the_running_loop(tmp_path: Path) -> None:
    settings = _settings(tmp_path, rules=True)
    app = create_app(settings)
    loop = app.state.alert_loop
    assert loop is not None and app.state.alerts is loop.alerts
    assert sorted(loop.alerts.rules) == ["churn-silent", "log-backlog"]
    headers = admin_headers_for(settings)
    try:
        with LiveServer(app) as server:
            assert loop._thread is not None and loop._thread.is_alive()  # started on startup
            deadline = time.monotonic() + 20
            body: dict[str, list[dict[str, object]]] = {"active": []}
            while not body["active"] and time.monotonic() < deadline:
                time.sleep(0.1)
                answer = httpx.get(f"{server.url}/api/v1/monitoring/alerts", headers=headers)
                assert answer.status_code == 200, answer.text
                body = answer.json()
            # m=2 of n=2: firing needs two evaluations, i.e. the loop kept ticking.
            assert [a["alert"] for a in body["active"]] == ["churn-silent"]
            assert body["active"][0]["state"] == "firing"
            assert body["active"][0]["breaches"] == "2 of last 2"
            assert [h["alert"] for h in body["history"]] == ["churn-silent"]
        assert not loop._thread.is_alive()  # stopped on shutdown
    finally:
        app.state.registry.close()
    # The firing alert was kept in the manager's state file under the home.
    assert "churn-silent" in (settings.home / "monitoring" / "alerts.jsonl").read_text()


def test_without_rules_there_is_no_loop_and_no_alerts(tmp_path: Path) -> None:
    settings = _settings(tmp_path, rules=False)
    app = create_app(settings)
    assert app.state.alert_loop is None and getattr(app.state, "alerts", None) is None
    assert getattr(app.state, "monitor", None) is None  # nothing opened for alerts
    headers = admin_headers_for(settings)
    try:
        with LiveServer(app) as server:
            answer = httpx.get(f"{server.url}/api/v1/monitoring/alerts", headers=headers)
            assert answer.status_code == 200
            assert answer.json() == {"active": [], "history": []}
    finally:
        app.state.registry.close()
