"""The bounded-memory model pool over HTTP (issue 15): refusals, bounded waits, in-flight safety,
``max_loaded_models`` alone, memory really freed on unload, and fallbacks that behave the same
with a budget as without one.

Real servers on loopback (``serve`` from tests/serving/conftest.py) with the registered churn
versions (ONNX Runtime, v3 corrupted so it fails to load). The only seam is the loader we own
(``create_serving_app(loader=...)``): it wraps the real registry loader to make a load slow, to
hold an inference at a gate, or to add weights to a model, never a library's internals.
"""

from __future__ import annotations

import gc
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from mlharbor.serving.loader import registry_loader
from mlharbor.serving.model import Outputs, ServedModel
from mlharbor.settings import ServingSettings, Settings
from tests.serving.conftest import FEATURES

pytestmark = pytest.mark.slow
ROWS = [{f: 0.1 * i - 0.5 * j for i, f in enumerate(FEATURES)} for j in range(3)]


def _settings(base: Settings, **serving: Any) -> Settings:
    return base.model_copy(update={"serving": ServingSettings(poll_interval_s=0.2, **serving)})


def _spec(name: str, ref: str, **body: Any) -> Any:
    from mlharbor.registry.endpoints import EndpointSpec

    return EndpointSpec.model_validate({"name": name, "routes": [{"ref": ref}], **body})


class GatedRunner:
    """Wraps a real runner: each batch waits until the test opens ``gate``."""

    def __init__(self, inner: Any, gate: threading.Event) -> None:
        self.inner, self.gate, self.runtime = inner, gate, inner.runtime
        self.waiting = 0

    def prepare(self, validator: Any, data: Any) -> Any:
        return self.inner.prepare(validator, data)

    def rows(self, x: Any) -> int:
        return int(self.inner.rows(x))

    def concat(self, xs: Any) -> Any:
        return self.inner.concat(xs)

    def run(self, x: Any) -> Outputs:
        self.waiting += 1
        try:
            assert self.gate.wait(30), "the test never opened the gate"
        finally:
            self.waiting -= 1
        return self.inner.run(x)  # type: ignore[no-any-return]


class Loader:
    """The real registry loader, plus what a test asks of given versions: ``slow`` (a load
    waits for this Event; :meth:`hold` makes one that lets the start-up priming through),
    ``gated`` (inference waits for it), ``ballast`` (bytes of weights
    added to the model). Keeps weak references to what it loaded, and counts loads."""

    def __init__(self, settings: Settings, registry: Any) -> None:
        self.real = registry_loader(registry, settings)
        self.slow: dict[int, threading.Event] = {}
        self.gated: dict[int, threading.Event] = {}
        self.ballast: dict[int, int] = {}
        self.loads: list[int] = []
        self.made: list[tuple[int, weakref.ref[Any], weakref.ref[Any]]] = []
        self.runners: dict[int, GatedRunner] = {}

    def hold(self, version: int) -> threading.Event:
        """An Event that holds loads of ``version`` once the test clears it (it starts set, so
        the server's start-up priming of the runtime is not held)."""
        event = self.slow[version] = threading.Event()
        event.set()
        return event

    def __call__(self, mv: Any) -> ServedModel:
        if mv.version in self.slow:
            assert self.slow[mv.version].wait(30), "the test never let the load finish"
        model = self.real(mv)
        if mv.version in self.gated:
            model.runner = self.runners[mv.version] = GatedRunner(model.runner,
                                                                  self.gated[mv.version])
        if mv.version in self.ballast:
            model.ballast = np.ones(self.ballast[mv.version] // 8)  # type: ignore[attr-defined]
        self.loads.append(mv.version)
        runner = getattr(model.runner, "inner", model.runner)
        session = runner.model.session  # the ONNX Runtime InferenceSession (churn is ONNX)
        self.made.append((mv.version, weakref.ref(model), weakref.ref(session)))
        return model


@pytest.fixture
def loader(home_settings: Settings, registry: Any) -> Loader:
    return Loader(home_settings, registry)


def _models(url: str) -> dict[str, dict[str, Any]]:
    body = httpx.get(f"{url}/v1/endpoints").json()
    return {f"{m['model']}:{m['version']}": m for m in body["models"]}


def _until(check: Callable[[], bool], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return check()


def _predict(url: str, endpoint: str, **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{url}/v1/endpoints/{endpoint}/predict", json=ROWS, timeout=30, **kwargs)


def _expected(reference_proba: Any, ref: str) -> Any:
    import pandas as pd

    return reference_proba(ref, pd.DataFrame(ROWS, columns=FEATURES))


def _metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name))


# -- refusals and waits -------------------------------------------------------------------


def test_a_model_bigger_than_the_whole_budget_is_refused(
        home_settings: Settings, serve: Any, loader: Loader) -> None:
    """Its model file alone is bigger: refused before loading (503 model_too_large naming both
    sizes; status says refused). Measured bigger while loading: refused too, and dropped."""
    budget = 16 << 20
    loader.ballast[2] = 48 << 20  # v2 takes ~48 MiB once loaded: more than the budget
    tiny = serve(_settings(home_settings, model_memory_budget=1000), loader=loader,
                 endpoints=[_spec("churn", "churn:1")])
    refused = _predict(tiny.url, "churn")
    assert refused.status_code == 503, refused.text
    error = refused.json()["error"]
    assert error["code"] == "model_too_large"
    file_size = _models(tiny.url)["churn:1"]["memory_bytes"]
    assert str(file_size) in error["message"] and "1000 bytes" in error["message"]
    assert "its model file" in error["message"]
    assert _models(tiny.url)["churn:1"]["state"] == "refused"
    assert _predict(tiny.url, "churn").json()["error"]["code"] == "model_too_large"

    server = serve(_settings(home_settings, model_memory_budget=budget), loader=loader,
                   endpoints=[_spec("small", "churn:1"), _spec("big", "churn:2")])
    assert _predict(server.url, "small").status_code == 200
    big = _predict(server.url, "big")
    assert big.status_code == 503 and big.json()["error"]["code"] == "model_too_large"
    assert f"{budget} bytes" in big.json()["error"]["message"]
    assert "measured while it loaded" in big.json()["error"]["message"]
    status = _models(server.url)
    assert status["churn:2"]["state"] == "refused"
    assert status["churn:2"]["memory_bytes"] > budget
    assert status["churn:1"]["state"] == "ready"  # the refusal unloaded nothing
    tried = loader.loads.count(2)
    assert _predict(server.url, "big").json()["error"]["code"] == "model_too_large"
    assert loader.loads.count(2) == tried  # never tried again
    assert _until(lambda: all(ref() is None for v, ref, _s in loader.made if v == 2))


def test_a_request_waiting_past_the_load_wait_gets_503_with_retry_after(
        home_settings: Settings, serve: Any, loader: Loader, reference_proba: Any) -> None:
    release = loader.hold(1)
    server = serve(_settings(home_settings, max_loaded_models=4, model_load_wait_s=0.3),
                   loader=loader, endpoints=[_spec("churn", "churn:1")])
    release.clear()
    try:
        waited = _predict(server.url, "churn")
        assert waited.status_code == 503, waited.text
        assert waited.json()["error"]["code"] == "model_loading"
        assert "0.3s" in waited.json()["error"]["message"]
        assert int(waited.headers["retry-after"]) >= 1
        assert _models(server.url)["churn:1"]["state"] == "loading"
    finally:
        release.set()
    assert _until(lambda: _models(server.url)["churn:1"]["state"] == "ready")
    answered = _predict(server.url, "churn")
    assert answered.status_code == 200
    np.testing.assert_allclose(answered.json()["probabilities"],
                               _expected(reference_proba, "churn:1"), atol=1e-6)
    assert loader.loads == [1, 1]  # the priming load, then the one the requests shared


def test_bad_input_is_refused_before_anything_loads(home_settings: Settings, serve: Any,
                                                    loader: Loader) -> None:
    server = serve(_settings(home_settings, max_loaded_models=1), loader=loader,
                   endpoints=[_spec("churn", "churn:1")])
    primed = len(loader.loads)
    bad = httpx.post(f"{server.url}/v1/endpoints/churn/predict", json=[{"f0": 1.0}])
    assert bad.status_code == 422 and "f1" in bad.text
    assert len(loader.loads) == primed and _models(server.url)["churn:1"]["state"] == "unloaded"


# -- the LRU ------------------------------------------------------------------------------


def test_max_loaded_models_alone(home_settings: Settings, serve: Any, loader: Loader,
                                 reference_proba: Any) -> None:
    server = serve(_settings(home_settings, max_loaded_models=1), loader=loader,
                   endpoints=[_spec("one", "churn:1"), _spec("two", "churn:2")])
    for endpoint, ref in (("one", "churn:1"), ("two", "churn:2"), ("one", "churn:1"),
                          ("two", "churn:2")):
        answer = _predict(server.url, endpoint)
        assert answer.status_code == 200, answer.text
        assert answer.json()["version"] == int(ref[-1])
        np.testing.assert_allclose(answer.json()["probabilities"],
                                   _expected(reference_proba, ref), atol=1e-6)
        ready = [r for r, m in _models(server.url).items() if m["state"] == "ready"]
        assert ready == [ref]
    assert _metric(server.url, "mlharbor_model_unloads_total") >= 3


def test_a_model_with_requests_in_flight_is_never_unloaded(
        home_settings: Settings, serve: Any, loader: Loader, reference_proba: Any) -> None:
    gate = loader.gated[1] = threading.Event()
    server = serve(_settings(home_settings, max_loaded_models=1, batching=False,
                             inline_max_us=0),  # inference on a thread: the gate holds it
                   loader=loader, endpoints=[_spec("one", "churn:1"), _spec("two", "churn:2")])
    answers: list[httpx.Response] = []
    held = threading.Thread(target=lambda: answers.append(_predict(server.url, "one")))
    held.start()
    try:
        assert _until(lambda: 1 in loader.runners and loader.runners[1].waiting == 1)
        two = _predict(server.url, "two")  # needs v1's slot: v1 is answering, so it stays
        assert two.status_code == 200 and two.json()["version"] == 2
        status = _models(server.url)
        assert status["churn:1"]["state"] == "ready" and status["churn:2"]["state"] == "ready"
    finally:
        gate.set()
        held.join(30)
    assert answers and answers[0].status_code == 200, answers
    np.testing.assert_allclose(answers[0].json()["probabilities"],
                               _expected(reference_proba, "churn:1"), atol=1e-6)


def test_unloaded_versions_free_their_model_and_runtime_session(
        home_settings: Settings, serve: Any, loader: Loader) -> None:
    """Nothing keeps an unloaded version alive: its ServedModel, its ONNX Runtime session (and
    so the batcher that held them) are freed by reference counting alone."""
    server = serve(_settings(home_settings, max_loaded_models=1), loader=loader,
                   endpoints=[_spec("one", "churn:1"), _spec("two", "churn:2")])
    for endpoint in ("one", "two", "one", "two"):
        assert _predict(server.url, endpoint).status_code == 200
    gc.disable()  # freed by reference counting, not by a later collection
    try:
        def alive() -> list[int]:
            return [v for v, m, s in loader.made if m() is not None or s() is not None]

        assert _until(lambda: alive() == [2]), alive()  # only the version loaded now
    finally:
        gc.enable()
    assert len(loader.made) >= 4  # the priming load, then four loads: each one freed
    session = loader.made[-1][2]()
    assert type(session).__name__ == "InferenceSession"


# -- fallbacks: the same with a budget as without ---------------------------------------


@pytest.fixture(params=["eager", "budget"])
def mode(request: pytest.FixtureRequest) -> dict[str, Any]:
    return {} if request.param == "eager" else {"model_memory_budget": 256 << 20}


def test_a_primary_that_fails_to_load_walks_the_fallback_chain(
        home_settings: Settings, serve: Any, loader: Loader, mode: dict[str, Any],
        reference_proba: Any) -> None:
    server = serve(_settings(home_settings, **mode), loader=loader, endpoints=[
        _spec("chained", "churn:3", fallback=["churn:2"]),
        _spec("fixed", "churn:3", default_answer={"prediction": 1}),
        _spec("bare", "churn:3")])
    for _ in range(2):  # the first request (its load fails) and the next ones alike
        answer = _predict(server.url, "chained")
        assert answer.status_code == 200, answer.text
        assert answer.json()["version"] == 2
        assert answer.json()["fallback"] == {"reason": "error", "from": "churn:3",
                                             "to": "churn:2"}
        np.testing.assert_allclose(answer.json()["probabilities"],
                                   _expected(reference_proba, "churn:2"), atol=1e-6)
        fixed = _predict(server.url, "fixed")
        assert fixed.status_code == 200 and fixed.json()["predictions"] == [1, 1, 1]
        bare = _predict(server.url, "bare")
        assert bare.status_code == 503 and "churn:3" in bare.json()["error"]["message"]
        assert "traceback" not in bare.text.lower()
    assert _models(server.url)["churn:3"]["state"] == "failed"
    endpoints = {e["name"]: e for e in httpx.get(f"{server.url}/v1/endpoints").json()[
        "endpoints"]}
    assert endpoints["chained"]["ready"] is False  # a stand-in never makes it ready


def test_a_primary_not_loaded_is_waited_for_not_skipped(
        home_settings: Settings, serve: Any, loader: Loader, reference_proba: Any) -> None:
    release = loader.hold(1)
    server = serve(_settings(home_settings, model_memory_budget=256 << 20), loader=loader,
                   endpoints=[_spec("churn", "churn:1", fallback=["churn:2"])])
    release.clear()
    threading.Timer(0.5, release.set).start()  # a load that takes half a second
    answer = _predict(server.url, "churn")
    assert answer.status_code == 200, answer.text
    assert answer.json()["version"] == 1 and "fallback" not in answer.json()
    np.testing.assert_allclose(answer.json()["probabilities"],
                               _expected(reference_proba, "churn:1"), atol=1e-6)


def test_past_the_load_wait_a_loaded_fallback_answers(
        home_settings: Settings, serve: Any, loader: Loader, reference_proba: Any) -> None:
    # (Loads run one at a time, so a fallback that is not loaded either waits behind the slow
    # primary: it answers when it is in memory, as here, where another endpoint uses it.)
    release = loader.hold(1)
    server = serve(_settings(home_settings, model_memory_budget=256 << 20,
                             model_load_wait_s=0.3), loader=loader,
                   endpoints=[_spec("churn", "churn:1", fallback=["churn:2"]),
                              _spec("two", "churn:2")])
    assert _predict(server.url, "two").status_code == 200
    release.clear()
    try:
        answer = _predict(server.url, "churn")
        assert answer.status_code == 200, answer.text
        assert answer.json()["version"] == 2
        assert answer.json()["fallback"]["from"] == "churn:1"
        np.testing.assert_allclose(answer.json()["probabilities"],
                                   _expected(reference_proba, "churn:2"), atol=1e-6)
    finally:
        release.set()
    assert _until(lambda: _models(server.url)["churn:1"]["state"] == "ready")
    assert _predict(server.url, "churn").json()["version"] == 1


@pytest.fixture(autouse=True)
def _no_leftover_gates(loader: Loader) -> Iterator[None]:
    yield
    for event in (*loader.slow.values(), *loader.gated.values()):
        event.set()  # a failed test must not leave a server thread waiting
