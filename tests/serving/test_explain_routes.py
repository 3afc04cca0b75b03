"""The explain routes on a live server: attributions that add up to what predict answers,
both protocols, the same auth and limits as predict, opt-in per endpoint, fuzzed; and the
explainer cache (lazy, one build, its own bounded threads, dropped with the version)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from mlharbor.settings import ServerSettings, Settings
from tests.serving.conftest import FEATURES

ROWS = [{f: float(v) for f, v in zip(FEATURES, row, strict=True)}
        for row in np.random.default_rng(5).normal(size=(3, len(FEATURES)))]


def check_rows(body: dict[str, Any], expected: np.ndarray, output: str = "1") -> None:
    """Each row's base + sum(attributions) is its output, which is ``expected``."""
    assert body["features"] == FEATURES and body["outputs"] == [output]
    assert len(body["explanations"]) == len(expected)
    for row, want in zip(body["explanations"], expected, strict=True):
        part = row[output]
        assert set(part["attributions"]) == set(FEATURES)
        total = part["base_value"] + sum(part["attributions"].values())
        assert total == pytest.approx(part["output"], abs=1e-6)
        assert part["output"] == pytest.approx(want, abs=1e-5)


def test_both_protocols_explain_what_predict_answers(serve: Any, reference_proba: Any) -> None:
    """churn:1 is served by ONNX Runtime: the explainer reloads the native forest."""
    server = serve(ref="churn@champion", explain=True)
    expected = reference_proba("churn:1", ROWS)[:, 1]
    native = httpx.post(f"{server.url}/v1/endpoints/churn/explain", json=ROWS, timeout=60)
    assert native.status_code == 200, native.text
    body = native.json()
    assert body["method"] == "tree_shap" and body["space"] == "probability"
    assert (body["model"], body["version"]) == ("churn", 1) and body["request_id"]
    check_rows(body, expected)
    rows = [[r[f] for f in FEATURES] for r in ROWS]
    kserve = httpx.post(f"{server.url}/v1/models/churn:explain", json={"instances": rows},
                        timeout=60)
    assert kserve.status_code == 200, kserve.text
    check_rows(kserve.json(), expected)
    predict = httpx.post(f"{server.url}/v1/endpoints/churn/predict", json=ROWS).json()
    np.testing.assert_allclose(np.asarray(predict["probabilities"])[:, 1], expected, atol=1e-5)


def test_an_endpoint_without_explain_says_how_to_turn_it_on(serve: Any) -> None:
    server = serve(ref="churn@champion")
    native = httpx.post(f"{server.url}/v1/endpoints/churn/explain", json=ROWS)
    assert native.status_code == 409
    assert "--explain" in native.json()["error"]["hint"]
    kserve = httpx.post(f"{server.url}/v1/models/churn:explain", json={"instances": ROWS})
    assert kserve.status_code == 409 and "--explain" in kserve.json()["error"]


def test_bad_input_and_limits_are_refused_like_predict(home_settings: Settings,
                                                       serve: Any) -> None:
    small = home_settings.model_copy(update={"server": ServerSettings(max_body_bytes=4096)})
    server = serve(small, ref="churn@champion", explain=True)
    url = f"{server.url}/v1/endpoints/churn/explain"
    predict = f"{server.url}/v1/endpoints/churn/predict"
    bad: list[dict[str, Any]] = [
        {"json": [{k: v for k, v in ROWS[0].items() if k != "f7"}]},  # a missing column
        {"json": [{**ROWS[0], "f3": "high"}]},  # text in a number column
        {"content": b"{not json"},
        {"content": b"a,b", "headers": {"content-type": "text/csv"}},
        {"json": ROWS * 40},  # past the 4 KiB body limit
    ]
    for kwargs in bad:
        refused = httpx.post(url, **kwargs)
        assert 400 <= refused.status_code < 500, refused.text
        assert refused.status_code == httpx.post(predict, **kwargs).status_code, kwargs
    assert "f7" in httpx.post(url, **bad[0]).json()["error"]["message"]
    assert httpx.post(url, **bad[3]).status_code == 415
    assert httpx.post(url, **bad[4]).status_code == 413
    many = {"columns": FEATURES, "data": [[0.0] * len(FEATURES)] * 101}
    too_many = httpx.post(url, json=many)
    assert too_many.status_code in (400, 413), too_many.text
    kserve = httpx.post(f"{server.url}/v1/models/churn:explain", json={"rows": ROWS})
    assert kserve.status_code == 400 and "instances" in kserve.json()["error"]
    unknown = httpx.post(f"{server.url}/v1/endpoints/nope/explain", json=ROWS)
    assert unknown.status_code == 404


def test_explaining_needs_the_predict_grant(registry: Any, serve: Any) -> None:
    from mlharbor.bootstrap import open_identities

    identities = open_identities(registry)
    identities.create_identity("app", kind="service", grants=["predictor@endpoint:churn"],
                               actor="test")
    identities.create_identity("eye", kind="service", grants=["viewer"], actor="test")
    predictor = {"Authorization": f"Bearer {identities.create_key('app', actor='test')[1]}"}
    viewer = {"Authorization": f"Bearer {identities.create_key('eye', actor='test')[1]}"}
    server = serve(ref="churn@champion", auth=True, explain=True)
    for path, body in (("/v1/endpoints/churn/explain", ROWS),
                       ("/v1/models/churn:explain", {"instances": ROWS})):
        assert httpx.post(server.url + path, json=body).status_code == 401, path
        assert httpx.post(server.url + path, json=body, headers=viewer).status_code == 403
        ok = httpx.post(server.url + path, json=body, headers=predictor, timeout=60)
        assert ok.status_code == 200, ok.text
    other = httpx.post(f"{server.url}/v1/endpoints/other/explain", json=ROWS,
                       headers=predictor)
    assert other.status_code == 403


def test_a_linear_endpoint_uses_the_profile_background(home_settings: Settings,
                                                        registry: Any, serve: Any) -> None:
    """A stored endpoint with ``explain: true``; the background comes from the reference
    profile registered with the training data, and the answer is the logistic margin."""
    from sklearn.linear_model import LogisticRegression

    from mlharbor.registry.bundles import register_model
    from mlharbor.registry.endpoints import EndpointSpec

    rng = np.random.default_rng(3)
    x = pd.DataFrame(rng.normal(size=(300, 3)), columns=["a", "b", "c"])
    y = (x.a - x.c > 0).astype(int)
    model = LogisticRegression().fit(x, y)
    register_model(registry, "lin", model, settings=home_settings, training_data=x)
    spec = EndpointSpec.model_validate({"name": "lin", "routes": [{"ref": "lin:1"}],
                                        "explain": True})
    server = serve(endpoints=[spec])
    rows = x.head(4).to_dict("records")
    answer = httpx.post(f"{server.url}/v1/endpoints/lin/explain", json=rows, timeout=60)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["method"] == "linear" and body["space"] == "margin"
    margins = model.decision_function(x.head(4))
    for row, want in zip(body["explanations"], margins, strict=True):
        part = row["1"]
        assert part["output"] == pytest.approx(want, abs=1e-6)
        assert part["base_value"] + sum(part["attributions"].values()) == pytest.approx(want)
        assert abs(part["attributions"]["b"]) < abs(part["attributions"]["a"]) + 1.0


def test_the_explain_routes_survive_the_fuzzer(home_settings: Settings, serve: Any) -> None:
    """The shared harness (tests/fuzzing.py) on the two explain operations of the serving
    OpenAPI document, against an endpoint with explanations on (the serving fuzz test covers
    them with explanations off)."""
    import schemathesis

    from tests.fuzzing import RouteFuzzer, report

    server = serve(ref="churn@champion", explain=True)
    doc = httpx.get(f"{server.url}/openapi.json").json()
    doc["paths"] = {p: v for p, v in doc["paths"].items() if "explain" in p}
    assert len(doc["paths"]) == 2
    fuzzer = RouteFuzzer(schemathesis.openapi.from_dict(doc), server.url,
                         known={"name": "churn", "model": "churn"}, max_examples=6,
                         hostile_examples=8)
    findings = fuzzer.run()
    assert fuzzer.statuses.get(200, 0) + fuzzer.statuses.get(400, 0) > 0, fuzzer.statuses
    assert not findings, report(findings, fuzzer.calls)


def test_a_version_not_in_memory_loads_through_the_pool_to_be_explained(
        home_settings: Settings, serve: Any, reference_proba: Any) -> None:
    """With serving.max_loaded_models, explaining a version that is not loaded loads it
    through the pool (the other is unloaded), as predict would; it used to be explained by a
    second copy loaded beside the pool, outside the memory bound, and never kept."""
    from mlharbor.registry.endpoints import EndpointSpec
    from mlharbor.settings import ServingSettings

    def spec(name: str, ref: str) -> Any:
        return EndpointSpec.model_validate({"name": name, "routes": [{"ref": ref}],
                                            "explain": True})

    lazy = home_settings.model_copy(update={"serving": ServingSettings(
        poll_interval_s=0.2, max_loaded_models=1)})
    server = serve(lazy, endpoints=[spec("one", "churn:1"), spec("two", "churn:2")])

    def loaded() -> list[str]:
        body = httpx.get(f"{server.url}/v1/endpoints").json()
        return [f"{m['model']}:{m['version']}" for m in body["models"] if m["state"] == "ready"]

    assert httpx.post(f"{server.url}/v1/endpoints/one/predict", json=ROWS).status_code == 200
    assert loaded() == ["churn:1"]
    for _ in range(2):
        answer = httpx.post(f"{server.url}/v1/endpoints/two/explain", json=ROWS, timeout=60)
        assert answer.status_code == 200, answer.text
        assert answer.json()["version"] == 2
        check_rows(answer.json(), reference_proba("churn:2", ROWS)[:, 1])
        assert loaded() == ["churn:2"]


# -- the explainer cache ----------------------------------------------------------------------


class _Model:
    """A served-model stand-in: the cache only keys on name, version and identity."""

    def __init__(self, name: str, version: int) -> None:
        self.name, self.version = name, version


class _Explainer:
    def __init__(self, gate: threading.Event) -> None:
        self.gate = gate
        self.threads: list[str] = []

    def explain(self, data: Any) -> Any:
        self.threads.append(threading.current_thread().name)
        self.gate.wait(10)
        return data


def _pool_with(*models: _Model) -> Any:
    from mlharbor.serving.pool import ModelPool, PoolEntry

    pool = ModelPool(lambda mv: None)  # type: ignore[arg-type,return-value]
    for m in models:
        pool.entries[(m.name, m.version)] = PoolEntry(m.name, m.version, state="ready",
                                                      model=m)  # type: ignore[arg-type]
    return pool


def test_the_cache_builds_once_runs_apart_and_drops_with_the_version() -> None:
    from mlharbor.core.errors import UnavailableError
    from mlharbor.serving.explaining import ExplainerCache

    gate = threading.Event()
    built: list[_Explainer] = []

    def build(model: Any) -> Any:
        built.append(_Explainer(gate))
        return built[-1]

    v1 = _Model("m", 1)
    pool = _pool_with(v1)
    cache = ExplainerCache(build, pool, queue=3)

    async def scenario() -> None:
        first = [asyncio.ensure_future(cache.explain(v1, i, timeout_s=10)) for i in range(3)]
        await asyncio.sleep(0.2)
        with pytest.raises(UnavailableError, match="already waiting"):
            await cache.explain(v1, 9, timeout_s=10)  # the queue of 3 is full: 503 at once
        gate.set()
        assert await asyncio.gather(*first) == [0, 1, 2]

    asyncio.run(scenario())
    assert len(built) == 1  # racing requests share one build
    assert set(built[0].threads) == {"mlharbor-explain_0"}  # never an inference thread
    assert cache.held() == [("m", 1)]
    pool.entries.pop(("m", 1))  # the pool dropped the version
    assert cache.held() == []
    cache.close()


def test_a_timed_out_explanation_keeps_its_place_until_done() -> None:
    from mlharbor.core.errors import TimeoutError_
    from mlharbor.serving.explaining import ExplainerCache

    gate = threading.Event()
    v1 = _Model("m", 1)
    cache = ExplainerCache(lambda m: _Explainer(gate), _pool_with(v1), queue=1)

    async def scenario() -> None:
        with pytest.raises(TimeoutError_, match=r"timeout of 0\.2s"):
            await cache.explain(v1, 1, timeout_s=0.2)
        from mlharbor.core.errors import UnavailableError

        with pytest.raises(UnavailableError):  # the timed-out work still runs
            await cache.explain(v1, 2, timeout_s=1)
        gate.set()
        await asyncio.sleep(0.2)
        assert await cache.explain(v1, 3, timeout_s=5) == 3

    asyncio.run(scenario())
    cache.close()


def test_serve_explain_needs_a_reference(tmp_path: Path) -> None:
    from mlharbor.cli.serve import serve_with_monitoring
    from mlharbor.core.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="endpoints update NAME --explain"):
        serve_with_monitoring(Settings(home=tmp_path / "home"), explain=True, port=0)
