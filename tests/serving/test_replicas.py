"""Three real ``mlharbor serve`` replicas sharing PostgreSQL and S3 (moto's server) behind
HAProxy on loopback, as a team runs them when one machine is not enough.

* Alias and endpoint changes converge on every replica within the stated bound: the replicas
  poll only every 30 s here, so converging within seconds is the PostgreSQL notification's
  doing (polling is tested on its own in test_replicas_notify.py).
* The replicas' prediction logs are one log: traffic, drift and live accuracy (feedback sent
  through the balancer, to any replica) count every replica's rows, and no replica
  overwrites another's segments.
* SIGKILL one replica while clients send predictions through the balancer: no request fails
  (HAProxy retries an idempotent prediction whose replica refused or dropped it); restarted,
  the replica passes its health check and takes traffic again.
* A fresh replica's first prediction, sent as soon as its port accepts, is answered 200.

One fleet per module (starting it costs seconds); each test uses its own endpoint or leaves
the shared one as it found it, so the tests run in any order.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from mlharbor.settings import Settings
from tests.balancer import Balancer, Replicas
from tests.conftest import _pg_admin_connect, pg_available
from tests.support import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.s3,
              pytest.mark.xdist_group("replicas")]

FEATURES = [f"f{i}" for i in range(8)]
#: Replicas re-read the registry this rarely here: faster convergence is NOTIFY's.
POLL_INTERVAL_S = 30.0
#: The stated bound for a change to reach every replica over NOTIFY, loading included
#: (docs: "under a second, plus loading a version the replica does not hold yet").
CONVERGENCE_BOUND_S = 10.0


@dataclass
class Shared:
    settings: Settings
    registry: Any
    key: str
    env: dict[str, str]
    data: Any

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


@pytest.fixture(scope="module")
def shared(moto_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    """One PostgreSQL database and one S3 bucket with churn v1 and v2 registered (reference
    profiles from their training data), ``churn@champion`` -> 1, endpoint ``churn`` on it, and
    an admin API key."""
    reason = pg_available()
    if reason:
        pytest.skip(reason)
    import boto3
    import pandas as pd
    from sklearn.ensemble import RandomForestClassifier

    from mlharbor.bootstrap import open_identities, open_registry
    from mlharbor.registry.bundles import register_model
    from mlharbor.registry.endpoints import EndpointService

    aws = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
    database = f"mlharbor_replicas_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    bucket = f"mlharbor-replicas-{uuid.uuid4().hex[:10]}"
    with _pg_admin_connect() as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}"
    with pytest.MonkeyPatch.context() as mp:
        for name, value in aws.items():
            mp.setenv(name, value)
        boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1").create_bucket(
            Bucket=bucket)
        settings = Settings(home=tmp_path_factory.mktemp("control") / "home", database_url=url,
                            artifact_uri=f"s3://{bucket}/artifacts",
                            s3_endpoint_url=moto_server)
        registry = open_registry(settings)
        try:
            rng = np.random.default_rng(0)
            x = pd.DataFrame(rng.normal(size=(300, len(FEATURES))), columns=FEATURES)
            y = ((x.f0 + x.f1 - x.f2) > 0).astype(int)
            for seed in (1, 2):
                model = RandomForestClassifier(n_estimators=10, max_depth=5, random_state=seed)
                register_model(registry, "churn", model.fit(x, y), settings=settings,
                               sample_input=x.head(20), training_data=x,
                               metrics={"accuracy": 0.9})
            registry.set_alias("churn", "champion", 1)
            EndpointService(registry).create(
                {"name": "churn", "routes": [{"ref": "churn@champion"}]}, actor="test")
            key = open_identities(registry).init_admin("ops", actor="test")[1]
            env = {**aws, "MLHARBOR_DATABASE_URL": url,
                   "MLHARBOR_ARTIFACT_URI": settings.artifact_uri_value,
                   "MLHARBOR_S3_ENDPOINT_URL": moto_server,
                   "MLHARBOR_SERVING__POLL_INTERVAL_S": str(POLL_INTERVAL_S),
                   "MLHARBOR_SECURITY__RATE_LIMIT_PER_MINUTE": "0",
                   "MLHARBOR_MONITORING__SEGMENT_INTERVAL_S": "1"}
            yield Shared(settings, registry, key, env, x)
        finally:
            registry.close()
            with _pg_admin_connect() as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


@pytest.fixture(scope="module")
def fleet(shared: Shared, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[tuple[Replicas, Balancer]]:
    folder = tmp_path_factory.mktemp("replicas")
    replicas = Replicas(folder, shared.env, count=3, args=["--plain-logs"])
    try:
        for i in range(3):
            replicas.start(i, wait=False)
        for i in range(3):
            replicas.wait_ready(i)
        with Balancer(folder, replicas.ports) as balancer:
            for name in balancer.names:
                balancer.wait_for(name, "UP")
            yield replicas, balancer
    finally:
        replicas.stop()
    for i in range(3):
        assert "Traceback" not in replicas.log(i), replicas.log(i)[-3000:]


def _rows(shared: Shared, n: int, offset: int = 0) -> list[dict[str, float]]:
    part = shared.data.iloc[offset:offset + n]
    return [{k: float(v) for k, v in row.items()} for row in part.to_dict("records")]


def _served_version(url: str, endpoint: str, shared: Shared, *, predict: bool = True
                    ) -> int | None:
    """The version a replica answers ``endpoint`` with: by predicting, or (``predict``
    false, so that nothing is logged) by its status."""
    try:
        if not predict:
            r = httpx.get(f"{url}/v1/endpoints/{endpoint}", headers=shared.headers, timeout=5)
            routes = r.json().get("routes") if r.status_code == 200 else None
            return int(routes[0]["serving_version"]) if routes else None
        r = httpx.post(f"{url}/v1/endpoints/{endpoint}/predict", json=_rows(shared, 1),
                       headers=shared.headers, timeout=5)
    except (httpx.HTTPError, TypeError):
        return None
    return int(r.json()["version"]) if r.status_code == 200 else None


def _converge(replicas: Replicas, endpoint: str, version: int, shared: Shared,
              since: float, *, predict: bool = True) -> list[float]:
    """Seconds after ``since`` at which each replica (asked directly) served ``version``."""
    took: list[float | None] = [None] * len(replicas.ports)
    deadline = since + CONVERGENCE_BOUND_S
    while None in took and time.monotonic() < deadline:
        for i in range(len(took)):
            if took[i] is None and _served_version(replicas.url(i), endpoint, shared,
                                                   predict=predict) == version:
                took[i] = time.monotonic() - since
        time.sleep(0.02)
    assert None not in took, (
        f"replicas {[i for i, t in enumerate(took) if t is None]} did not serve {endpoint} "
        f"version {version} within {CONVERGENCE_BOUND_S}s (poll interval {POLL_INTERVAL_S}s)")
    return [t for t in took if t is not None]


@pytest.mark.timeout(300)
def test_alias_and_endpoint_changes_converge_on_every_replica_over_notify(
        fleet: tuple[Replicas, Balancer], shared: Shared) -> None:
    from mlharbor.registry.endpoints import EndpointService

    replicas, _balancer = fleet
    registry = shared.registry
    for i in range(3):
        assert _served_version(replicas.url(i), "churn", shared) == 1
    timings = {}
    try:
        start = time.monotonic()
        registry.set_alias("churn", "champion", 2, actor="test", reason="converge")
        timings["alias -> 2"] = _converge(replicas, "churn", 2, shared, start)

        start = time.monotonic()
        EndpointService(registry).update("churn", {"routes": [{"ref": "churn:1"}]},
                                         actor="test", reason="pin v1")
        timings["endpoint -> churn:1"] = _converge(replicas, "churn", 1, shared, start)

        start = time.monotonic()
        EndpointService(registry).update("churn", {"routes": [{"ref": "churn@champion"}]},
                                         actor="test", reason="back to the alias")
        timings["endpoint -> churn@champion (2)"] = _converge(replicas, "churn", 2, shared,
                                                               start)
    finally:  # leave the shared endpoint as the other tests expect it
        registry.set_alias("churn", "champion", 1, actor="test", reason="reset")
        EndpointService(registry).update("churn", {"routes": [{"ref": "churn@champion"}]},
                                         actor="test", reason="reset")
        _converge(replicas, "churn", 1, shared, time.monotonic())
    print("convergence (s, per replica):", {k: [round(t, 3) for t in v]
                                            for k, v in timings.items()})


def _segment_writers(shared: Shared, endpoint: str) -> Counter[str]:
    """Segments of ``endpoint`` in the shared S3 log, counted by writer id."""
    import boto3

    from mlharbor.monitoring.service import log_uri

    uri = log_uri(shared.settings)
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    s3 = boto3.client("s3", endpoint_url=shared.settings.s3_endpoint_url,
                      region_name="us-east-1", aws_access_key_id="testing",
                      aws_secret_access_key="testing")
    writers: Counter[str] = Counter()
    for page in s3.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=f"{prefix.rstrip('/')}/endpoint={endpoint}/"):
        for item in page.get("Contents", []):
            name = item["Key"].rsplit("/", 1)[1].removesuffix(".parquet")
            writers[name.split("-")[2]] += 1  # <first_at>-<last_at>-<writer>-<seq>
    return writers


@pytest.mark.timeout(300)
def test_the_prediction_logs_of_all_replicas_are_one_log(
        fleet: tuple[Replicas, Balancer], shared: Shared) -> None:
    from mlharbor.core.clock import utcnow
    from mlharbor.monitoring.service import Monitor
    from mlharbor.monitoring.traffic import traffic
    from mlharbor.registry.endpoints import EndpointService

    replicas, balancer = fleet
    EndpointService(shared.registry).create(
        {"name": "logged", "routes": [{"ref": "churn:2"}]}, actor="test")
    started = utcnow() - timedelta(seconds=5)
    # Created through the registry: every replica serves it (NOTIFY).
    _converge(replicas, "logged", 2, shared, time.monotonic(), predict=False)
    def answered_by_each() -> list[int]:
        return [_native_requests(httpx.get(f"{replicas.url(i)}/metrics",
                                           headers=shared.headers).text, "logged")
                for i in range(3)]

    before = answered_by_each()
    answered: Counter[str] = Counter()  # request id -> rows
    labels = []
    with httpx.Client(base_url=balancer.url, headers=shared.headers, timeout=30) as client:
        for n in range(60):  # round robin: 20 requests per replica, 1 or 3 rows each
            rows = _rows(shared, 1 + 2 * (n % 2), offset=n * 3)
            r = client.post("/v1/endpoints/logged/predict", json=rows)
            assert r.status_code == 200, r.text
            body = r.json()
            answered[body["request_id"]] = len(rows)
            for row, (features, prediction) in enumerate(zip(rows, body["predictions"],
                                                             strict=True)):
                truth = int(features["f0"] + features["f1"] - features["f2"] > 0)
                labels.append({"request_id": body["request_id"], "row": row, "label": truth})
                assert prediction in (0, 1)
        per_replica = [b - a for a, b in zip(before, answered_by_each(), strict=True)]
        # Every replica answered its share (HAProxy's round robin: a third each).
        assert sum(per_replica) == len(answered) and min(per_replica) > 0, per_replica
        # Ground truth for every row, in three batches: each to whichever replica HAProxy
        # picks, all stored in the one feedback store.
        for part in range(3):
            r = client.post("/v1/endpoints/logged/feedback", json={"labels": labels[part::3]})
            assert r.status_code == 200, r.text

    total_rows = sum(answered.values())
    monitor = Monitor(shared.settings, shared.registry)
    try:
        deadline = time.monotonic() + 60  # segments reach S3 within a segment interval or so
        while True:
            end = utcnow() + timedelta(seconds=5)
            table = monitor.log.scan("logged", started, end)  # no columns before a segment
            seen = (table.column("request_id").to_pylist()
                    if "request_id" in table.column_names else [])
            if len(seen) >= total_rows or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert Counter(seen) == Counter(answered), "the log lacks or repeats rows"
        writers = _segment_writers(shared, "logged")
        assert len(writers) == 3, writers  # one writer per replica, none overwrote another

        report = traffic(monitor.log, "logged", start=started, end=end,
                         step=timedelta(minutes=1))
        assert report["totals"]["requests"] == len(answered), report["totals"]

        drift = monitor.drift("logged", start=started, end=end)
        assert drift["window"]["rows"] == total_rows, drift["window"]
        assert drift["version"] == 2

        deadline = time.monotonic() + 60  # labels wait in the inbox for their predictions
        while True:
            perf = monitor.performance("logged", start=started, end=end,
                                       window=timedelta(minutes=10))
            labelled = sum(r["labelled_rows"] for r in perf)
            if labelled >= total_rows or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert labelled == total_rows, perf
        assert {r["version"] for r in perf if r["labelled_rows"]} == {2}
    finally:
        monitor.log.close()
        EndpointService(shared.registry).delete("logged", actor="test")


def _native_requests(exposition: str, endpoint: str) -> int:
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if (sample.name == "mlharbor_requests_total"
                    and sample.labels.get("endpoint") == endpoint
                    and sample.labels.get("code") == "200"):
                total += sample.value
    return int(total)


@pytest.mark.timeout(300)
def test_killing_a_replica_fails_only_its_requests_in_flight_and_it_rejoins(
        fleet: tuple[Replicas, Balancer], shared: Shared) -> None:
    replicas, balancer = fleet
    stop = threading.Event()
    outcomes: Counter[str] = Counter()
    failures: list[str] = []  # answers other than 200: none may be
    cut: list[str] = []  # connections the SIGKILL broke after the replica began answering
    lock = threading.Lock()
    rows = _rows(shared, 2)

    def client() -> None:
        with httpx.Client(base_url=balancer.url, headers=shared.headers, timeout=30) as c:
            while not stop.is_set():
                try:
                    r = c.post("/v1/endpoints/churn/predict", json=rows)
                    key = str(r.status_code)
                    if r.status_code != 200:
                        failures.append(f"{r.status_code}: {r.text[:200]}")
                except httpx.HTTPError as exc:  # the connection broke mid-answer
                    key = type(exc).__name__
                    cut.append(repr(exc))
                with lock:
                    outcomes[key] += 1

    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(2)
        before_kill = sum(outcomes.values())
        replicas.kill(1)
        balancer.wait_for("r1", "DOWN")  # the health check noticed
        time.sleep(1)
        during = sum(outcomes.values()) - before_kill
        restarted_at = time.monotonic()
        replicas.start(1)
        balancer.wait_for("r1", "UP")  # passed its health check: back in rotation
        rejoined_s = time.monotonic() - restarted_at
        time.sleep(2)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    served_by_restarted = _native_requests(httpx.get(f"{replicas.url(1)}/metrics",
                                                     headers=shared.headers).text,
                                           "churn")
    print(f"kill test: {dict(outcomes)}; {during} requests while r1 was down; "
          f"rejoined {rejoined_s:.1f}s after restart")
    assert before_kill > 0 and during > 0
    assert failures == [], failures[:5]
    # The balancer retries a request the dead replica never answered; one it was answering
    # when killed (headers sent, body not) cannot be retried: at most one per client thread,
    # the requests in flight on the killed replica.
    assert len(cut) <= len(threads), cut
    assert served_by_restarted > 0  # the balancer sends it traffic again


@pytest.mark.timeout(300)
@pytest.mark.parametrize("loading", ["at start", "on first request"])
def test_a_fresh_replicas_first_request_sent_as_its_port_opens_is_answered(
        shared: Shared, tmp_path_factory: pytest.TempPathFactory, loading: str) -> None:
    """Scale from zero: the request that woke a replica must not get 503 while its model
    loads (kserve#2882). A replica loading at start opens its port once the model is warm;
    one with a model memory budget loads on the first request, which waits for it
    (``serving.model_load_wait_s``) and is answered."""
    env = dict(shared.env)
    if loading == "on first request":
        env["MLHARBOR_SERVING__MODEL_MEMORY_BUDGET"] = str(2 << 30)
    spare = Replicas(tmp_path_factory.mktemp("spare"), env, count=1, args=["--plain-logs"])
    proc = spare.start(0, wait=False)
    try:
        def accepts() -> bool:  # the request goes out the moment the port accepts
            assert proc.poll() is None, spare.log(0)[-3000:]
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", spare.ports[0]), 0.05).close()
                return True
            return False

        wait_until(accepts, 90, "the replica never listened", interval=0.005)
        opened = time.monotonic()
        r = httpx.post(f"{spare.url(0)}/v1/endpoints/churn/predict", json=_rows(shared, 1),
                       headers=shared.headers, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["version"] == 1
        print(f"first request ({loading}): answered {time.monotonic() - opened:.2f}s after "
              "the port opened")
    finally:
        spare.stop()
    assert "Traceback" not in spare.log(0), spare.log(0)[-3000:]


def test_the_balancer_configuration_is_what_the_docs_say(tmp_path: Path) -> None:
    """Health checks on /readyz and retries of idempotent predictions on another replica;
    HAProxy itself checks the file (-c)."""
    import subprocess

    from tests.balancer import haproxy_config

    text = haproxy_config(8080, [8081, 8082], tmp_path / "s.sock")
    for line in ("option httpchk", "uri /readyz", "retry-on conn-failure empty-response",
                 "option redispatch", "retries 3", "server r1 127.0.0.1:8082 check"):
        assert line in text, line
    (tmp_path / "h.cfg").write_text(text)
    check = subprocess.run(["haproxy", "-c", "-f", str(tmp_path / "h.cfg")],
                           capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stderr
