"""Isolation and limits on the serving port: every route, GraphQL included, sits behind the
same body limit and load shedding; the serving app has the control plane's Host allowlist."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import pytest

from mlharbor.settings import ServerSettings, ServingSettings, Settings
from tests.serving.conftest import FEATURES
from tests.serving.test_behaviour import faulty, metric

pytestmark = pytest.mark.slow
ROW = [{f: 0.1 * i for i, f in enumerate(FEATURES)}]
QUERY = {"query": "{ endpoints { name ready } }"}


def test_graphql_has_the_body_limit(home_settings: Settings, serve: Any) -> None:
    settings = home_settings.model_copy(update={"server": ServerSettings(max_body_bytes=4000)})
    server = serve(settings, ref="churn@champion")
    assert httpx.post(f"{server.url}/graphql", json=QUERY).status_code == 200
    padded = {**QUERY, "variables": {"pad": "x" * 8 * 4000}}  # 8x over the limit
    declared = httpx.post(f"{server.url}/graphql", json=padded)
    assert declared.status_code == 413, declared.text
    assert declared.json()["error"]["code"] == "body_too_large"

    def chunks() -> Any:  # no Content-Length: cut off as it streams past the limit
        import orjson

        body = orjson.dumps(padded)
        for i in range(0, len(body), 1000):
            yield body[i:i + 1000]

    streamed = httpx.post(f"{server.url}/graphql", content=chunks(),
                          headers={"content-type": "application/json"})
    assert streamed.status_code == 413, streamed.text


def test_graphql_is_shed_like_predictions(home_settings: Settings, registry: Any,
                                          serve: Any) -> None:
    settings = home_settings.model_copy(update={"serving": ServingSettings(
        max_concurrency=2, batching=False, poll_interval_s=0.2)})
    server = serve(settings, ref="churn:1",
                   loader=faulty(settings, registry, v1={"delay": 1.0}))
    url = f"{server.url}/v1/endpoints/churn/predict"
    slow = [threading.Thread(target=httpx.post, args=(url,), kwargs={"json": ROW,
                                                                      "timeout": 10})
            for _ in range(2)]
    for thread in slow:
        thread.start()
    deadline = time.monotonic() + 5
    while metric(httpx.get(f"{server.url}/metrics").text,
                 "mlharbor_in_flight_requests") < 2:
        assert time.monotonic() < deadline, "the slow predictions never got in flight"
        time.sleep(0.02)
    shed = httpx.post(f"{server.url}/graphql", json=QUERY)
    assert shed.status_code == 503, shed.text
    assert shed.headers["retry-after"] == "1"
    for thread in slow:
        thread.join()
    assert httpx.post(f"{server.url}/graphql", json=QUERY).status_code == 200
    text = httpx.get(f"{server.url}/metrics").text
    assert metric(text, "mlharbor_shed_requests_total") >= 1
    assert metric(text, 'mlharbor_requests_total{code="503",endpoint="other",'
                        'protocol="graphql"}') == 1


def test_host_allowlist_on_the_serving_port(home_settings: Settings, serve: Any) -> None:
    settings = home_settings.model_copy(update={"security": home_settings.security.model_copy(
        update={"allowed_hosts": ["models.example.com"]})})
    server = serve(settings, ref="churn@champion")
    for path in ("/livez", "/v1/endpoints/churn", "/metrics"):
        refused = httpx.get(f"{server.url}{path}", headers={"Host": "evil.example.com"})
        assert refused.status_code == 400, (path, refused.text)
        assert refused.json()["error"]["code"] == "invalid_host"
    rebound = httpx.post(f"{server.url}/graphql", json=QUERY,
                         headers={"Host": "evil.example.com:8080"})
    assert rebound.status_code == 400
    predicted = httpx.post(f"{server.url}/v1/endpoints/churn/predict", json=ROW,
                           headers={"Host": "evil.example.com"})
    assert predicted.status_code == 400
    for host in ("models.example.com", "models.example.com:443", "localhost:1",
                 f"127.0.0.1:{server.port}"):
        allowed = httpx.post(f"{server.url}/v1/endpoints/churn/predict", json=ROW,
                             headers={"Host": host})
        assert allowed.status_code == 200, (host, allowed.text)


def test_without_an_allowlist_loopback_connections_are_still_guarded(
        home_settings: Settings, serve: Any) -> None:
    # Bound to every interface with no allowlist: a connection that arrives on loopback (a
    # browser on this host, DNS-rebound) is still held to loopback names.
    settings = home_settings.model_copy(update={"server": ServerSettings(host="0.0.0.0")})
    server = serve(settings, ref="churn@champion")
    assert httpx.get(f"{server.url}/livez", headers={"Host": "evil.example.com"}
                     ).status_code == 400
    assert httpx.get(f"{server.url}/livez").status_code == 200


def test_the_allowlist_follows_the_address_really_bound(home_settings: Settings,
                                                        registry: Any) -> None:
    """``serve --host`` may differ from ``server.host``: the runner tells the app, and the
    allowlist is built for the address really bound."""
    from mlharbor.serving.app import create_serving_app

    app = create_serving_app(home_settings, registry, ref="churn@champion", auth=False)
    assert not app.asgi.loopback_only and "10.0.0.5" not in app.asgi.hosts
    app.listening_on("10.0.0.5")
    assert "10.0.0.5" in app.asgi.hosts and not app.asgi.loopback_only
    app.listening_on("0.0.0.0")  # every interface, no allowlist: loopback arrivals guarded
    assert app.asgi.loopback_only
    assert app.asgi.app is app.http  # the same app behind the rebuilt guard
