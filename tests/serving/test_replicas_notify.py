"""How registry changes reach serving replicas: PostgreSQL NOTIFY at commit, polling as the
fallback (SQLite, or while the listening connection is down), on a real PostgreSQL."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from mlharbor.core.errors import ConflictError
from mlharbor.registry.notify import APPLICATION_NAME, ChangeListener, conninfo
from mlharbor.settings import ServingSettings, Settings
from tests.conftest import _pg_admin_connect
from tests.support import LiveServer, wait_until

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_settings(pg_url: str, tmp_path: Any) -> Settings:
    return Settings(home=tmp_path / "home", database_url=pg_url)


@pytest.fixture
def pg_registry(pg_settings: Settings) -> Iterator[Any]:
    from mlharbor.bootstrap import open_registry

    registry = open_registry(pg_settings)
    yield registry
    registry.close()


class Heard:
    """Counts ``on_change`` calls; ``wait_for(n)`` waits until at least ``n``."""

    def __init__(self) -> None:
        self.count = 0
        self._cond = threading.Condition()

    def __call__(self) -> None:
        with self._cond:
            self.count += 1
            self._cond.notify_all()

    def wait_for(self, n: int, timeout: float = 10.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.count >= n, timeout)


def _terminate_listeners(database: str) -> int:
    with _pg_admin_connect() as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = %s AND datname = %s", (APPLICATION_NAME, database)
        ).fetchall()
    return len(rows)


def test_changes_serving_reads_notify_at_commit_and_nothing_else_does(
        pg_registry: Any) -> None:
    heard = Heard()
    listener = ChangeListener.for_database(pg_registry.store.db, heard)
    assert listener is not None
    listener.start()
    try:
        assert listener.connected.wait(10) and heard.wait_for(1)  # the look after connecting
        pg_registry.create_model("churn", actor="test")
        assert heard.wait_for(2)
        with pytest.raises(ConflictError):  # rolled back: nothing is delivered
            pg_registry.create_model("churn", actor="test")
        pg_registry.store.record(actor="test", action="job.submit", resource="job/1",
                                 outcome="success")  # not something serving reads
        time.sleep(1.0)
        assert heard.count == 2 and listener.notifications == 1
    finally:
        listener.stop()


def test_sqlite_has_no_listener_and_polls(tmp_path: Any) -> None:
    from mlharbor.bootstrap import open_registry

    registry = open_registry(Settings(home=tmp_path / "home"))
    try:
        assert conninfo(registry.store.db) is None
        assert ChangeListener.for_database(registry.store.db, lambda: None) is None
    finally:
        registry.close()


def test_a_lost_listening_connection_reconnects_and_hears_again(
        pg_registry: Any, pg_url: str) -> None:
    heard = Heard()
    listener = ChangeListener(conninfo(pg_registry.store.db) or "", heard).start()
    try:
        assert listener.connected.wait(10) and heard.wait_for(1)
        assert _terminate_listeners(pg_url.rsplit("/", 1)[1]) == 1
        wait_until(lambda: listener.reconnects > 0 and listener.connected.is_set(), 30,
                   "the listener did not reconnect")
        assert heard.wait_for(2)  # it looked once after reconnecting
        pg_registry.create_model("later", actor="test")
        assert heard.wait_for(3)
    finally:
        listener.stop()


@pytest.fixture
def two_versions(pg_registry: Any, pg_settings: Settings) -> dict[str, float]:
    """churn v1 and v2 (logistic regressions), @champion -> 1; returns a row to predict."""
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    from mlharbor.registry.bundles import register_model

    rng = np.random.default_rng(0)
    x = pd.DataFrame(rng.normal(size=(200, 4)), columns=["a", "b", "c", "d"])
    y = (x.a > 0).astype(int)
    for c in (0.1, 1.0):
        register_model(pg_registry, "churn", LogisticRegression(C=c).fit(x, y),
                       settings=pg_settings, sample_input=x.head(5))
    pg_registry.set_alias("churn", "champion", 1)
    return {k: float(v) for k, v in x.iloc[0].items()}


class Client(threading.Thread):
    """Predicts without pause until stopped; keeps every non-200 answer or error."""

    def __init__(self, url: str, row: dict[str, float]) -> None:
        super().__init__(daemon=True)
        self.url, self.row = url, row
        self.answered = 0
        self.failures: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as client:
            while not self.halt.is_set():
                try:
                    r = client.post("/v1/endpoints/churn/predict", json=[self.row])
                    if r.status_code == 200:
                        self.answered += 1
                    else:
                        self.failures.append(f"{r.status_code} {r.text[:200]}")
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                time.sleep(0.005)


def _served(url: str, row: dict[str, float]) -> int:
    r = httpx.post(f"{url}/v1/endpoints/churn/predict", json=[row], timeout=10)
    assert r.status_code == 200, r.text
    return int(r.json()["version"])


def _until(check: Callable[[], bool], timeout: float) -> None:
    """Wait for a served version; ``timeout`` stays below the 60 s poll interval where
    the test proves that a notification, not a poll, moved the server."""
    wait_until(check, timeout, "the server never served the version")


@pytest.mark.timeout(120)
def test_serving_converges_over_notify_and_keeps_serving_when_the_listener_is_cut(
        pg_settings: Settings, pg_registry: Any, pg_url: str,
        two_versions: dict[str, float]) -> None:
    from mlharbor.serving.app import create_serving_app

    # Polling every 60 s: converging within seconds is the notification's doing.
    settings = pg_settings.model_copy(update={"serving": ServingSettings(poll_interval_s=60)})
    app = create_serving_app(settings, pg_registry, ref="churn@champion", auth=False)
    row = two_versions
    with LiveServer(app) as server:
        listener = app.reconciler.listener
        assert listener is not None and listener.connected.wait(10)
        client = Client(server.url, row)
        client.start()
        try:
            assert _served(server.url, row) == 1
            pg_registry.set_alias("churn", "champion", 2, actor="test")
            _until(lambda: _served(server.url, row) == 2, 40)
            # The listening connection is cut (a database restart, a proxy's idle timeout):
            # serving goes on, the listener reconnects and looks once, so a change made
            # meanwhile still arrives long before the next poll.
            assert _terminate_listeners(pg_url.rsplit("/", 1)[1]) == 1
            pg_registry.set_alias("churn", "champion", 1, actor="test")
            _until(lambda: _served(server.url, row) == 1, 40)
            assert listener.reconnects >= 1
        finally:
            client.halt.set()
            client.join(10)
    assert client.answered > 0 and client.failures == [], client.failures[:5]


@pytest.mark.timeout(120)
def test_without_a_listener_serving_converges_by_polling(
        pg_settings: Settings, pg_registry: Any, two_versions: dict[str, float]) -> None:
    from mlharbor.serving.app import create_serving_app

    settings = pg_settings.model_copy(update={"serving": ServingSettings(poll_interval_s=0.5)})
    app = create_serving_app(settings, pg_registry, ref="churn@champion", auth=False)
    row = two_versions
    with LiveServer(app) as server:
        listener = app.reconciler.listener
        assert listener is not None
        listener.stop()  # as if it could not reconnect: polling alone must converge
        assert _served(server.url, row) == 1
        pg_registry.set_alias("churn", "champion", 2, actor="test")
        _until(lambda: _served(server.url, row) == 2, 10)
        assert listener.notifications == 0
