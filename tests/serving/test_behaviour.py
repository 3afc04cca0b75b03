"""Batching, canary and sticky routing, shadow, fallback, limits, metrics, logs and the sink."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import socket
import threading
import time
from collections import Counter
from typing import Any

import httpx
import numpy as np
import pytest

from mlharbor.registry.endpoints import EndpointSpec
from mlharbor.serving.loader import registry_loader
from mlharbor.serving.model import Outputs, ServedModel
from mlharbor.serving.sink import MemorySink
from mlharbor.settings import ServerSettings, ServingSettings, Settings
from tests.serving.conftest import FEATURES

pytestmark = pytest.mark.slow
ROW = [{f: 0.1 * i for i, f in enumerate(FEATURES)}]


class FaultyRunner:
    """Wraps a real runner: sleeps ``delay`` seconds per batch, or waits for ``gate`` (an
    Event the test sets) before answering, and/or raises."""

    def __init__(self, inner: Any, *, delay: float = 0.0, fail: bool = False,
                 gate: threading.Event | None = None) -> None:
        self.inner, self.delay, self.fail, self.gate = inner, delay, fail, gate
        self.runtime = inner.runtime
        self.blocked = 0  # batches waiting at the gate now

    def prepare(self, validator: Any, data: Any) -> Any:
        return self.inner.prepare(validator, data)

    def rows(self, x: Any) -> int:
        return int(self.inner.rows(x))

    def concat(self, xs: Any) -> Any:
        return self.inner.concat(xs)

    def run(self, x: Any) -> Outputs:
        time.sleep(self.delay)
        if self.gate is not None:
            self.blocked += 1
            try:
                assert self.gate.wait(60), "the test never opened the gate"
            finally:
                self.blocked -= 1
        if self.fail:
            raise RuntimeError("the model broke")
        return self.inner.run(x)  # type: ignore[no-any-return]


def faulty(settings: Settings, registry: Any, **by_version: dict[str, Any]) -> Any:
    """A loader whose versions named in ``by_version`` (``v1={"fail": True}``) run through a
    :class:`FaultyRunner`; ``load.runners`` holds the runners made, by version."""
    real = registry_loader(registry, settings)
    runners: dict[int, FaultyRunner] = {}

    def load(mv: Any) -> ServedModel:
        model = real(mv)
        options = by_version.get(f"v{mv.version}")
        if options:
            model.runner = runners[mv.version] = FaultyRunner(model.runner, **options)
        return model

    load.runners = runners  # type: ignore[attr-defined]
    return load


def spec(**body: Any) -> EndpointSpec:
    return EndpointSpec.model_validate({"name": "churn", **body})


def metric(text: str, prefix: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(prefix))


async def fire(url: str, n: int, concurrency: int, body: Any = None,
               headers: Any = None) -> list[httpx.Response]:
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=30,
                                 limits=httpx.Limits(max_connections=concurrency)) as client:
        async def one(i: int) -> httpx.Response:
            async with sem:
                return await client.post("/v1/endpoints/churn/predict",
                                         json=body[i] if isinstance(body, list) else ROW,
                                         headers=headers(i) if headers else None)
        return await asyncio.gather(*(one(i) for i in range(n)))


def test_micro_batching_answers_each_request_with_its_own_rows(
    home_settings: Settings, registry: Any, serve: Any, data: Any, reference_proba: Any,
) -> None:
    x, _y = data
    loader = faulty(home_settings, registry, v1={"delay": 0.08})
    server = serve(ref="churn:1", loader=loader)
    bodies = [x.iloc[i:i + 1 + i % 3].to_dict(orient="records") for i in range(48)]
    responses = asyncio.run(fire(server.url, 48, 16, body=bodies))
    for i, response in enumerate(responses):
        expected = reference_proba("churn:1", x.iloc[i:i + 1 + i % 3])
        np.testing.assert_allclose(response.json()["probabilities"], expected, atol=1e-6)
    text = httpx.get(f"{server.url}/metrics").text
    batches = metric(text, 'mlharbor_batch_rows_count{endpoint="churn"}')
    rows = metric(text, 'mlharbor_batch_rows_sum{endpoint="churn"}')
    assert rows == sum(len(b) for b in bodies)
    small = metric(text, 'mlharbor_batch_rows_bucket{endpoint="churn",le="4.0"}')
    assert batches < 48 and small < batches, "concurrent requests should share inference calls"


def test_fallback_on_error_then_default_answer(
    home_settings: Settings, registry: Any, serve: Any
) -> None:
    loader = faulty(home_settings, registry, v1={"fail": True})
    server = serve(loader=loader, endpoints=[
        spec(routes=[{"ref": "churn:1"}], fallback=["churn:2"],
             default_answer={"prediction": 0}),
        spec(name="lonely", routes=[{"ref": "churn:1"}], default_answer={"prediction": 1}),
        spec(name="bare", routes=[{"ref": "churn:1"}]),
    ])
    to_v2 = httpx.post(f"{server.url}/v1/endpoints/churn/predict", json=ROW)
    assert to_v2.status_code == 200 and to_v2.json()["version"] == 2
    assert to_v2.json()["fallback"] == {"reason": "error", "from": "churn:1", "to": "churn:2"}
    default = httpx.post(f"{server.url}/v1/endpoints/lonely/predict", json=ROW * 2)
    assert default.json()["predictions"] == [1, 1]
    assert default.json()["fallback"]["to"] == "default"
    bare = httpx.post(f"{server.url}/v1/endpoints/bare/predict", json=ROW)
    assert bare.status_code == 503 and "traceback" not in bare.text
    assert "no fallback" in bare.json()["error"]["message"]
    text = httpx.get(f"{server.url}/metrics").text
    assert metric(text, 'mlharbor_fallbacks_total{endpoint="churn",reason="error"}') == 1


def test_timeouts_fall_back_or_answer_504(
    home_settings: Settings, registry: Any, serve: Any
) -> None:
    # v1 answers only when the test opens the gate: every answer below comes while it is
    # still working, so each one came from the timeout, whatever the machine's speed. The
    # fallback chain shares the request's one deadline: once v1 has spent it, churn:2 is not
    # tried, and only the default answer (no model call) can still answer.
    gate = threading.Event()
    loader = faulty(home_settings, registry, v1={"gate": gate})
    server = serve(loader=loader, endpoints=[
        spec(routes=[{"ref": "churn:1"}], fallback=["churn:2"], limits={"timeout_ms": 100},
             default_answer={"prediction": 0}),
        spec(name="strict", routes=[{"ref": "churn:1"}], fallback=["churn:2"],
             limits={"timeout_ms": 100}),
    ])
    try:
        saved = httpx.post(f"{server.url}/v1/endpoints/churn/predict", json=ROW, timeout=30)
        assert saved.status_code == 200, saved.text
        assert saved.json()["fallback"] == {"reason": "timeout", "from": "churn:1",
                                            "to": "default"}
        assert saved.json()["predictions"] == [0]
        late = httpx.post(f"{server.url}/v1/endpoints/strict/predict", json=ROW, timeout=30)
        assert late.status_code == 504
        assert late.json()["error"]["code"] == "timeout"
        assert not gate.is_set() and loader.runners[1].blocked >= 1  # v1 never answered
    finally:
        gate.set()


def test_body_limit_and_load_shedding(home_settings: Settings, registry: Any,
                                      serve: Any) -> None:
    settings = home_settings.model_copy(update={
        "server": ServerSettings(max_body_bytes=4000),
        "serving": ServingSettings(max_concurrency=2, batching=False, poll_interval_s=0.2)})
    loader = faulty(settings, registry, v1={"delay": 0.3})
    server = serve(settings, ref="churn:1", loader=loader)
    big = httpx.post(f"{server.url}/v1/endpoints/churn/predict", json=ROW * 40)
    assert big.status_code == 413 and big.json()["error"]["code"] == "body_too_large"
    # refused on the headers alone: the body is never sent
    with socket.create_connection(("127.0.0.1", server.port), timeout=3) as sock:
        sock.sendall(b"POST /v1/endpoints/churn/predict HTTP/1.1\r\nhost: 127.0.0.1\r\n"
                     b"content-type: application/json\r\ncontent-length: 99999999\r\n\r\n")
        assert sock.recv(200).startswith(b"HTTP/1.1 413")
    responses = asyncio.run(fire(server.url, 8, 8))
    codes = Counter(r.status_code for r in responses)
    assert codes[200] >= 2 and codes[503] >= 1, codes
    shed = next(r for r in responses if r.status_code == 503)
    assert shed.headers["retry-after"] == "1"
    assert metric(httpx.get(f"{server.url}/metrics").text, "mlharbor_shed_requests_total") >= 1


class GatedSink(MemorySink):
    """Takes records only once the test opens ``gate``: a sink stuck as long as it likes."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.waiting = threading.Event()  # a write is blocked at the gate

    def write(self, records: Any) -> None:
        self.waiting.set()
        assert self.gate.wait(60), "the test never opened the gate"
        super().write(records)


def test_records_reach_the_sink_without_being_waited_on(serve: Any) -> None:
    """Answers never wait for the sink: every request is answered while the sink is blocked
    (were serving waiting for it, the requests would hang until the gate opened), and
    opening the gate then delivers every record, the primary's and the shadow's."""
    sink = GatedSink()
    server = serve(sink=sink, endpoints=[spec(routes=[{"ref": "churn:1"}],
                                              shadow="churn:2")])
    ids = []
    try:
        for i in range(5):
            response = httpx.post(f"{server.url}/v1/endpoints/churn/predict", json=ROW,
                                  headers={"x-request-id": f"rec-{i}"}, timeout=30)
            assert response.status_code == 200
            ids.append(response.json()["request_id"])
        assert sink.waiting.wait(30), "no record was handed to the sink"
        assert sink.records == []  # all five answered while the sink took nothing
    finally:
        sink.gate.set()
    deadline = time.monotonic() + 30  # a hang guard, not a speed bound
    while len(sink.records) < 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    main = [r for r in sink.records if not r.shadow]
    shadow = [r for r in sink.records if r.shadow]
    assert [r.request_id for r in main] == ids
    assert sorted(r.request_id for r in shadow) == sorted(ids)
    assert {r.served_version for r in main} == {1} and {r.served_version for r in shadow} == {2}
    assert main[0].endpoint == "churn" and main[0].model_ref == "churn:1"
    assert main[0].latency_s > 0 and main[0].outputs.predictions.shape == (1,)


def test_json_logs_carry_the_request_id(
    home_settings: Settings, registry: Any, serve: Any
) -> None:
    from mlharbor.telemetry.logging import configure_json_logging

    stream = io.StringIO()
    saved = {n: (logging.getLogger(n).handlers, logging.getLogger(n).propagate,
                 logging.getLogger(n).level) for n in ("mlharbor", "uvicorn", "uvicorn.error")}
    configure_json_logging(stream=stream)
    try:
        loader = faulty(home_settings, registry, v1={"fail": True})
        server = serve(loader=loader, endpoints=[spec(routes=[{"ref": "churn:1"}],
                                                      fallback=["churn:2"])])
        httpx.post(f"{server.url}/v1/endpoints/churn/predict", json=ROW,
                   headers={"x-request-id": "trace-me"})
    finally:
        for name, (handlers, propagate, level) in saved.items():
            logger = logging.getLogger(name)
            logger.handlers, logger.propagate = handlers, propagate
            logger.setLevel(level)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    failed = [line for line in lines if line.get("event") == "prediction.failed"]
    assert failed and failed[0]["request_id"] == "trace-me"
    assert failed[0]["level"] == "warning" and failed[0]["endpoint"] == "churn"
    assert any(line.get("event") == "model.loaded" for line in lines)


def test_auth_guards_predictions_but_not_probes(
    home_settings: Settings, registry: Any, serve: Any
) -> None:
    from mlharbor.bootstrap import open_identities

    identities = open_identities(registry)
    identities.create_identity("app", kind="service", grants=["predictor@endpoint:churn"],
                               actor="test")
    key = identities.create_key("app", actor="test")[1]
    server = serve(ref="churn@champion", auth=True)
    url = f"{server.url}/v1/endpoints/churn/predict"
    assert httpx.post(url, json=ROW).status_code == 401
    ok = httpx.post(url, json=ROW, headers={"Authorization": f"Bearer {key}"})
    assert ok.status_code == 200, ok.text
    for probe in ("/livez", "/readyz", "/v2/health/ready", "/ping"):
        assert httpx.get(server.url + probe).status_code == 200, probe
    other = httpx.post(f"{server.url}/v1/endpoints/other/predict", json=ROW,
                       headers={"Authorization": f"Bearer {key}"})
    assert other.status_code == 403


def test_fallback_to_the_previous_version_of_the_alias(
    home_settings: Settings, registry: Any, serve: Any
) -> None:
    registry.set_alias("churn", "champion", 2, reason="promote v2")
    loader = faulty(home_settings, registry, v2={"fail": True})
    server = serve(loader=loader, endpoints=[spec(routes=[{"ref": "churn@champion"}],
                                                  fallback=["previous"])])
    answer = httpx.post(f"{server.url}/v1/endpoints/churn/predict", json=ROW).json()
    assert answer["version"] == 1
    assert answer["fallback"] == {"reason": "error", "from": "churn:2", "to": "churn:1"}
    status = httpx.get(f"{server.url}/v1/endpoints/churn").json()
    assert status["fallback"] == ["churn:1"]
