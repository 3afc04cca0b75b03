"""Running servers follow the registry: alias moves under load, broken versions, endpoint edits."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import httpx
import pytest

from mlharbor.registry.endpoints import EndpointService
from tests.serving.conftest import FEATURES

pytestmark = pytest.mark.slow
ROW = [{f: 0.1 * i for i, f in enumerate(FEATURES)}]


def wait_for(predicate: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def route_status(client: httpx.Client, name: str = "churn") -> dict[str, Any]:
    body: dict[str, Any] = client.get(f"/v1/endpoints/{name}").json()
    return body["routes"][0] if "routes" in body else {}


class Load:
    """~200 requests/s from a background thread; remembers every outcome."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.versions: Counter[int] = Counter()
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as client:
            while not self.stop.is_set():
                started = time.perf_counter()
                try:
                    response = client.post("/v1/endpoints/churn/predict", json=ROW)
                    if response.status_code != 200:
                        self.failures.append(f"{response.status_code} {response.text[:200]}")
                    else:
                        self.versions[response.json()["version"]] += 1
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                time.sleep(max(0.0, 0.005 - (time.perf_counter() - started)))

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)


def test_alias_moves_under_load_lose_nothing(registry: Any, serve: Any) -> None:
    EndpointService(registry).create({"name": "churn", "routes": [{"ref": "churn@champion"}]},
                                     actor="test")
    server = serve()
    with httpx.Client(base_url=server.url) as client, Load(server.url) as load:
        wait_for(lambda: sum(load.versions.values()) > 20)
        for move in range(20):
            target = 2 if move % 2 == 0 else 1
            registry.set_alias("churn", "champion", target, reason=f"move {move}")
            wait_for(lambda t=target: route_status(client).get("serving_version") == t)
            time.sleep(0.1)
    assert load.failures == []
    assert set(load.versions) == {1, 2}
    assert sum(load.versions.values()) > 400


def test_a_version_that_fails_to_load_never_gets_traffic(registry: Any, serve: Any) -> None:
    server = serve(ref="churn@champion")
    with httpx.Client(base_url=server.url) as client, Load(server.url) as load:
        wait_for(lambda: sum(load.versions.values()) > 10)
        registry.set_alias("churn", "champion", 3, reason="bad build")
        status = wait_for(lambda: (s := route_status(client)).get("state") == "failed" and s)
        assert status["desired_version"] == 3 and status["serving_version"] == 1
        assert "IntegrityError" in status["reason"]
        time.sleep(0.5)
        assert client.get("/readyz").status_code == 200
        metrics = client.get("/metrics").text
    assert load.failures == []
    assert set(load.versions) == {1}
    assert 'mlharbor_model_load_failures_total{model="churn"} 1.0' in metrics


def test_endpoint_changes_are_picked_up(registry: Any, serve: Any) -> None:
    service = EndpointService(registry)
    service.create({"name": "scoring", "routes": [{"ref": "churn:1"}]}, actor="test")
    server = serve()
    with httpx.Client(base_url=server.url) as client:
        assert client.post("/v1/endpoints/scoring/predict", json=ROW).json()["version"] == 1
        service.update("scoring", {"routes": [{"ref": "churn:2"}]}, actor="test")
        wait_for(lambda: client.post("/v1/endpoints/scoring/predict",
                                     json=ROW).json()["version"] == 2)
        service.create({"name": "other", "routes": [{"ref": "churn:1"}]}, actor="test")
        wait_for(lambda: client.post("/v1/endpoints/other/predict", json=ROW).status_code
                 == 200)
        service.delete("scoring", actor="test")
        wait_for(lambda: client.post("/v1/endpoints/scoring/predict", json=ROW).status_code
                 == 404)


def test_a_database_outage_does_not_stop_serving(
    home_settings: Any, registry: Any, serve: Any
) -> None:
    from mlharbor.bootstrap import open_identities

    key = open_identities(registry).init_admin("ops", actor="test")[1]
    auth = {"Authorization": f"Bearer {key}"}
    EndpointService(registry).create({"name": "churn", "routes": [{"ref": "churn@champion"}]},
                                     actor="test")
    server = serve(auth=True)
    app = server.app
    with httpx.Client(base_url=server.url, headers=auth) as client:
        assert client.post("/v1/endpoints/churn/predict", json=ROW).status_code == 200
        db = home_settings.home / "mlharbor.db"
        app.reconciler.registry.store.db.engine.dispose()
        registry.store.db.engine.dispose()
        for suffix in ("", "-wal", "-shm"):
            path = db.with_name(db.name + suffix)
            if path.exists():
                path.rename(path.with_name(path.name + ".away"))
        wait_for(lambda: app.plane.sync_error is not None)
        for _ in range(20):
            response = client.post("/v1/endpoints/churn/predict", json=ROW)
            assert response.status_code == 200, response.text
        assert client.get("/readyz").status_code == 200
        assert "sync_error" in client.get("/v1/endpoints").text


def test_keys_outlive_a_database_outage_only_for_a_bounded_time(
    home_settings: Any, registry: Any
) -> None:
    import time

    import pytest

    from mlharbor.bootstrap import open_identities
    from mlharbor.core.errors import AuthenticationError, MlharborError
    from mlharbor.serving.auth import CachedIdentities

    store = open_identities(registry)
    key = store.init_admin("ops", actor="test")[1]
    cache = CachedIdentities(store, ttl_s=0.05, max_stale_s=1.0)
    assert cache.authenticate_key(key).name == "ops"
    with pytest.raises(AuthenticationError):
        cache.authenticate_key(key + "x")
    registry.store.db.engine.dispose()
    db = home_settings.home / "mlharbor.db"
    for suffix in ("", "-wal", "-shm"):
        path = db.with_name(db.name + suffix)
        if path.exists():
            path.rename(path.with_name(path.name + ".away"))
    (home_settings.home / "mlharbor.db").mkdir()  # the database cannot be opened any more
    time.sleep(0.1)
    assert cache.authenticate_key(key).name == "ops"  # stale, but within max_stale_s
    time.sleep(1.0)
    with pytest.raises(MlharborError) as refused:
        cache.authenticate_key(key)
    assert not isinstance(refused.value, AuthenticationError)  # unavailable, not "bad key"
