"""A tracking write waiting on a database lock stalls only itself: the control plane's event
loop keeps answering everything else (health probes, reads, the dashboard's API), and the
write lands, whole, once the lock is released.

The lock is real: another SQLite connection holds the write lock (``BEGIN IMMEDIATE``), as a
long migration, a backup or a second process would, so the server's write transactions
queue on SQLite's busy timeout.
"""

from __future__ import annotations

import functools
import sqlite3
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import make_url

from mlharbor.api.app import create_app
from mlharbor.api.routes.mlflow_threads import WRITE_THREADS
from mlharbor.bootstrap import open_registry
from mlharbor.settings import Settings
from tests.security.fixtures import admin_headers_for
from tests.support import LiveServer, wait_until

MLFLOW = "/api/2.0/mlflow"


@pytest.fixture
def served(tmp_path: Any) -> Iterator[tuple[Any, str, dict[str, str], Settings]]:
    # No job runner or trigger loop: their writes would take the lock at moments of their own.
    settings = Settings(home=tmp_path / "home", security={"rate_limit_per_minute": 0},
                        pipelines={"run_jobs": False, "triggers": False})
    headers = admin_headers_for(settings)
    registry = open_registry(settings)
    app = create_app(settings, registry=registry)
    try:
        with LiveServer(app) as live:
            yield app, live.url, headers, settings
    finally:
        registry.close()


def _hold_write_lock(settings: Settings) -> sqlite3.Connection:
    path = make_url(settings.database_url_value).database
    assert path
    con = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    con.execute("BEGIN IMMEDIATE")  # the database's one write lock, until rollback
    return con


def test_the_loop_answers_while_tracking_writes_wait_on_a_lock(
        served: tuple[Any, str, dict[str, str], Settings]) -> None:
    app, url, headers, settings = served
    with httpx.Client(base_url=url, headers=headers, timeout=30) as http:
        run_id = http.post(f"{MLFLOW}/runs/create", json={"experiment_id": "0"}
                           ).json()["run"]["info"]["run_id"]
    # More writers than the tracking write threads: they must take neither the threads of
    # tracking reads nor those that serve synchronous routes (/livez, /readyz, native API).
    writers = WRITE_THREADS + 4
    answers: list[httpx.Response] = []
    failures: list[BaseException] = []

    def log(step: int) -> None:
        try:
            with httpx.Client(base_url=url, headers=headers, timeout=120) as client:
                answers.append(client.post(f"{MLFLOW}/runs/log-metric", json={
                    "run_id": run_id, "key": "loss", "value": 1.0 / (step + 1),
                    "timestamp": 1000 + step, "step": step}))
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    lock = _hold_write_lock(settings)
    threads = [threading.Thread(target=log, args=(i,)) for i in range(writers)]
    try:
        for thread in threads:
            thread.start()
        # Every tracking write thread is taken by a write waiting on the lock.
        wait_until(lambda: getattr(app.state, "mlflow_write_threads", None) is not None
                   and app.state.mlflow_write_threads.busy == WRITE_THREADS, 30,
                   "the tracking writes reaching the database")
        with httpx.Client(base_url=url, headers=headers, timeout=15) as http:
            assert http.get("/livez").status_code == 200
            assert http.get("/readyz").status_code == 200
            experiments = http.get("/api/v1/experiments")
            assert experiments.status_code == 200
            assert {e["name"]: e["runs"] for e in experiments.json()["items"]}["Default"] == 1
            assert http.get("/api/v1/runs", params={"experiment": "Default"}
                            ).status_code == 200
            # MLflow reads have threads of their own (and WAL readers never wait for a writer)
            run = http.get(f"{MLFLOW}/runs/get", params={"run_id": run_id})
            assert run.status_code == 200 and run.json()["run"]["data"].get("metrics") == []
            found = http.post(f"{MLFLOW}/runs/search", json={"experiment_ids": ["0"]})
            assert [r["info"]["run_id"] for r in found.json()["runs"]] == [run_id]
            bad = http.get(f"{MLFLOW}/runs/get", params={"run_id": "nope"})
            assert bad.status_code == 400
            assert bad.json()["error_code"] == "INVALID_PARAMETER_VALUE"
        assert not answers and not failures  # nothing got past the lock meanwhile
    finally:
        lock.rollback()
        lock.close()
        for thread in threads:
            thread.join(120)
    assert not failures
    assert sorted(r.status_code for r in answers) == [200] * writers
    with httpx.Client(base_url=url, headers=headers, timeout=30) as http:
        history = http.get(f"{MLFLOW}/metrics/get-history",
                           params={"run_id": run_id, "metric_key": "loss"}).json()["metrics"]
    assert sorted(p["step"] for p in history) == list(range(writers))


def test_small_metric_writes_are_answered_on_the_loop_when_nothing_holds_the_database(
        served: tuple[Any, str, dict[str, str], Settings]) -> None:
    """A log-metric, and a log-batch of a few metrics and nothing else, are written at once
    on the event loop (mlharbor.tracking.quick): no write thread is ever started for them.
    Any other write takes the threads (and so do these while another writer holds the
    database: the lock test above)."""
    from mlharbor.tracking import quick

    app, url, headers, _settings = served
    with httpx.Client(base_url=url, headers=headers, timeout=30) as http:
        run_id = http.post(f"{MLFLOW}/runs/create", json={"experiment_id": "0"}
                           ).json()["run"]["info"]["run_id"]
        assert getattr(app.state, "mlflow_write_threads", None) is not None  # runs/create
        app.state.mlflow_write_threads.close()  # and forget it: a new pool shows a thread
        app.state.mlflow_write_threads = None  # was used
        for step in range(3):
            assert http.post(f"{MLFLOW}/runs/log-metric", json={
                "run_id": run_id, "key": "loss", "value": 1.0 / (step + 1),
                "timestamp": 1000 + step, "step": step}).status_code == 200
        assert http.post(f"{MLFLOW}/runs/log-batch", json={"run_id": run_id, "metrics": [
            {"key": k, "value": 0.5, "timestamp": 2000, "step": 3} for k in ("acc", "loss")]}
                         ).status_code == 200
        assert app.state.mlflow_write_threads is None  # every write so far was on the loop
        writer = quick.for_engine(app.state.registry.store.db.engine)
        assert writer is not None and writer.writes == 4
        # A batch with a param is not a quick write: a thread takes it.
        assert http.post(f"{MLFLOW}/runs/log-batch", json={
            "run_id": run_id, "params": [{"key": "lr", "value": "0.1"}]}).status_code == 200
        assert app.state.mlflow_write_threads is not None
        history = http.get(f"{MLFLOW}/metrics/get-history",
                           params={"run_id": run_id, "metric_key": "loss"}).json()["metrics"]
        assert [p["step"] for p in history] == [0, 1, 2, 3]
        # Refusals on the loop are MLflow's, as on the threads.
        gone = http.post(f"{MLFLOW}/runs/log-metric", json={
            "run_id": "f" * 32, "key": "loss", "value": 1.0, "timestamp": 1, "step": 0})
        assert gone.status_code == 404 and gone.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"


def test_every_acknowledged_point_is_stored_once_whichever_path_wrote_it(
        served: tuple[Any, str, dict[str, str], Settings]) -> None:
    """Loops logging one point a call (written on the event loop when the database is free),
    others logging batches with params (always on the write threads), and another connection
    taking the database's write lock now and then (sending the quick writes to the threads
    meanwhile): every point answered 200 is in its key's history exactly once."""
    import time

    _app, url, headers, settings = served
    with httpx.Client(base_url=url, headers=headers, timeout=30) as http:
        run_id = http.post(f"{MLFLOW}/runs/create", json={"experiment_id": "0"}
                           ).json()["run"]["info"]["run_id"]
    acknowledged: dict[str, list[int]] = {}
    failures: list[BaseException] = []
    done = threading.Event()

    def single(key: str) -> None:
        try:
            with httpx.Client(base_url=url, headers=headers, timeout=120) as client:
                for step in range(40):
                    answer = client.post(f"{MLFLOW}/runs/log-metric", json={
                        "run_id": run_id, "key": key, "value": float(step),
                        "timestamp": 1000 + step, "step": step})
                    if answer.status_code == 200:
                        acknowledged.setdefault(key, []).append(step)
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    def batches(key: str) -> None:
        try:
            with httpx.Client(base_url=url, headers=headers, timeout=120) as client:
                for step in range(15):
                    answer = client.post(f"{MLFLOW}/runs/log-batch", json={
                        "run_id": run_id, "tags": [{"key": f"t-{key}", "value": str(step)}],
                        "metrics": [{"key": key, "value": 1.0, "timestamp": 5, "step": step}]})
                    if answer.status_code == 200:
                        acknowledged.setdefault(key, []).append(step)
        except BaseException as exc:
            failures.append(exc)

    def locker() -> None:
        while not done.is_set():
            lock = _hold_write_lock(settings)
            time.sleep(0.02)
            lock.rollback()
            lock.close()
            time.sleep(0.01)

    workers = [threading.Thread(target=single, args=(f"s{i}",)) for i in range(4)] + [
        threading.Thread(target=batches, args=(f"b{i}",)) for i in range(2)]
    holder = threading.Thread(target=locker)
    holder.start()
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(300)
    finally:
        done.set()
        holder.join(30)
    assert not failures
    assert {k: len(v) for k, v in acknowledged.items()} == {
        **{f"s{i}": 40 for i in range(4)}, **{f"b{i}": 15 for i in range(2)}}
    with httpx.Client(base_url=url, headers=headers, timeout=30) as http:
        for key, steps in acknowledged.items():
            history = http.get(f"{MLFLOW}/metrics/get-history", params={
                "run_id": run_id, "metric_key": key}).json()["metrics"]
            assert sorted(p["step"] for p in history) == sorted(steps), key


def test_worker_pool_runs_every_call_at_most_size_at_once_and_ends_idle_threads(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio
    import time

    from mlharbor.api.routes import mlflow_threads
    from mlharbor.api.routes.mlflow_threads import WorkerPool

    monkeypatch.setattr(mlflow_threads, "IDLE_S", 0.05)
    pool = WorkerPool(3, "test-pool")
    running, most = 0, 0
    guard = threading.Lock()
    together = threading.Barrier(3, timeout=30)

    def call(i: int) -> int:
        nonlocal running, most
        with guard:
            running += 1
            most = max(most, running)
        if i < 3:  # the first three meet: the pool runs its size at once (else this breaks)
            together.wait()
        time.sleep(0.01)  # the later calls overlap too: none may make a fourth thread
        with guard:
            running -= 1
        if i == 7:
            raise ValueError("call 7 fails")
        return i * i

    async def burst() -> list[Any]:
        return await asyncio.gather(*(pool.run(functools.partial(call, i)) for i in range(20)),
                                    return_exceptions=True)

    results = asyncio.run(burst())
    assert results[:7] == [i * i for i in range(7)] and results[8:] == [
        i * i for i in range(8, 20)]
    assert isinstance(results[7], ValueError) and "call 7" in str(results[7])
    assert most == 3  # the pool's size, never more
    wait_until(lambda: pool._threads == 0, 30, "idle pool threads ending")
    assert asyncio.run(pool.run(lambda: "again")) == "again"  # a new thread starts


def test_the_worker_pools_stop_with_the_app(tmp_path: Any) -> None:
    """The app's shutdown ends its MLflow worker threads (they lingered for IDLE_S, a
    minute, holding the app: once per app a process built and stopped), and an app started
    again makes new pools that work."""
    settings = Settings(home=tmp_path / "home", security={"rate_limit_per_minute": 0})
    headers = admin_headers_for(settings)
    registry = open_registry(settings)
    app = create_app(settings, registry=registry)
    try:
        pools = []
        for _start in range(2):
            with LiveServer(app) as live, httpx.Client(base_url=live.url, headers=headers,
                                                       timeout=30) as http:
                run = http.post(f"{MLFLOW}/runs/create", json={"experiment_id": "0"})
                assert run.status_code == 200
                got = http.get(f"{MLFLOW}/runs/get",
                               params={"run_id": run.json()["run"]["info"]["run_id"]})
                assert got.status_code == 200
                pools += [app.state.mlflow_write_threads, app.state.mlflow_read_threads]
            assert app.state.mlflow_write_threads is None
            assert app.state.mlflow_read_threads is None
        assert len({id(p) for p in pools}) == 4  # new pools after the restart
        wait_until(lambda: all(p._threads == 0 for p in pools), 20,
                   "the worker threads of a stopped app ending")
    finally:
        registry.close()


def test_a_closed_pool_finishes_its_queue_and_runs_later_calls() -> None:
    import asyncio

    from mlharbor.api.routes.mlflow_threads import WorkerPool

    pool = WorkerPool(2, "test-close")
    release = threading.Event()

    def hold(i: int) -> int:
        assert release.wait(30)
        return i

    async def scenario() -> list[Any]:
        first = [asyncio.ensure_future(pool.run(functools.partial(hold, i)))
                 for i in range(4)]
        await asyncio.sleep(0)  # the calls are queued (2 running, 2 waiting)
        wait_until(lambda: pool.busy == 2, 20, "two calls running")
        pool.close()  # queued before the close: they still run
        release.set()
        done = await asyncio.gather(*first)
        wait_until(lambda: pool._threads == 0, 20, "the closed pool's threads ending")
        return [*done, await pool.run(lambda: "after")]  # a later call starts a thread

    assert asyncio.run(scenario()) == [0, 1, 2, 3, "after"]
