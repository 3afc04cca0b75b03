"""Every protocol on one core, against a real uvicorn server: native, OIP v2, MLflow, KServe v1."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import httpx
import numpy as np
import pytest

from tests.serving.conftest import FEATURES

pytestmark = pytest.mark.slow


@pytest.fixture
def server(serve: Any) -> Any:
    return serve(ref="churn@champion")


def test_native_records_and_columns_match_the_python_api(
    server: Any, data: Any, reference_proba: Any
) -> None:
    x, _y = data
    rows = x.head(5)
    expected = reference_proba("churn@champion", rows)
    with httpx.Client(base_url=server.url) as client:
        by_records = client.post("/v1/endpoints/churn/predict",
                                 json=rows.to_dict(orient="records"),
                                 headers={"x-request-id": "req-123"})
        by_columns = client.post("/v1/endpoints/churn/predict", json={
            "columns": FEATURES, "data": rows.to_numpy().tolist()})
        one = client.post("/v1/endpoints/churn/predict", json=rows.iloc[0].to_dict())
    for response in (by_records, by_columns):
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["version"] == 1 and body["model"] == "churn"
        assert body["classes"] == [0, 1]
        np.testing.assert_allclose(body["probabilities"], expected, atol=1e-6)
        assert body["predictions"] == list(np.argmax(expected, axis=1))
    assert by_records.json()["request_id"] == "req-123"
    assert by_records.headers["x-request-id"] == "req-123"
    assert by_records.headers["x-mlharbor-model-version"] == "1"
    assert one.json()["predictions"] == [int(np.argmax(expected[0]))]


@pytest.mark.parametrize(("body", "status", "field"), [
    ([{"f0": 1.0}], 422, "f1"),
    ([{**{f: 0.0 for f in FEATURES}, "f3": "high"}], 422, "f3"),
    ([{**{f: 0.0 for f in FEATURES}, "extra": 1}], 422, "extra"),
    ({"columns": ["f0"], "data": [[1, 2]]}, 400, "body.data[0]"),
    ("not json", 400, "body"),
    (42, 400, "body"),
])
def test_native_bad_input_is_a_clear_4xx(server: Any, body: Any, status: int,
                                         field: str) -> None:
    content = body.encode() if isinstance(body, str) else None
    kwargs: dict[str, Any] = {"content": content} if content else {"json": body}
    response = httpx.post(f"{server.url}/v1/endpoints/churn/predict", **kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    details = error.get("details", {})
    assert field in (details.get("column"), details.get("field")), error
    assert "traceback" not in response.text


def test_unknown_endpoint_and_method(server: Any) -> None:
    missing = httpx.post(f"{server.url}/v1/endpoints/nope/predict", json=[{"f0": 1}])
    assert missing.status_code == 404
    assert "churn" in missing.json()["error"]["hint"]
    assert httpx.get(f"{server.url}/v1/endpoints/churn/predict").status_code == 405
    assert httpx.get(f"{server.url}/nowhere").status_code == 404


def test_open_inference_with_tritonclient(server: Any, data: Any, reference_proba: Any) -> None:
    import tritonclient.http as triton

    x, _y = data
    rows = x.head(4)
    expected = reference_proba("churn@champion", rows)
    client = triton.InferenceServerClient(url=server.url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("churn")
    assert client.is_model_ready("churn", "1")
    assert not client.is_model_ready("nope")
    meta = client.get_model_metadata("churn")
    assert meta["versions"] == ["1"]
    assert [i["name"] for i in meta["inputs"]] == FEATURES
    assert client.get_server_metadata()["extensions"] == ["binary_tensor_data"]
    matrix = rows.to_numpy().astype(np.float32)
    for binary in (True, False):
        tensor = triton.InferInput("input", list(matrix.shape), "FP32")
        tensor.set_data_from_numpy(matrix, binary_data=binary)
        outputs = [triton.InferRequestedOutput("probabilities", binary_data=binary),
                   triton.InferRequestedOutput("predictions", binary_data=binary)]
        result = client.infer("churn", [tensor], outputs=outputs)
        np.testing.assert_allclose(result.as_numpy("probabilities"), expected, atol=1e-6)
        assert list(result.as_numpy("predictions")) == list(np.argmax(expected, axis=1))
    # default: no outputs named, tritonclient asks for every output in binary
    columns = []
    for name in FEATURES:
        tensor = triton.InferInput(name, [len(rows)], "FP64")
        tensor.set_data_from_numpy(rows[name].to_numpy(), binary_data=True)
        columns.append(tensor)
    result = client.infer("churn", columns, model_version="1", request_id="abc")
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected, atol=1e-6)
    assert result.get_response()["id"] == "abc"


def test_open_inference_errors(server: Any) -> None:
    url = f"{server.url}/v2/models/churn/infer"
    bad_shape = httpx.post(url, json={"inputs": [
        {"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]})
    assert bad_shape.status_code == 400
    assert "[n, 20]" in bad_shape.json()["error"]
    wrong_count = httpx.post(url, json={"inputs": [
        {"name": "x", "shape": [1, 20], "datatype": "FP32", "data": [1, 2]}]})
    assert wrong_count.status_code == 400
    assert httpx.post(f"{server.url}/v2/models/churn/versions/7/infer", json={"inputs": [
        {"name": "x", "shape": [1, 20], "datatype": "FP32", "data": [0] * 20}]}
    ).status_code == 404


def test_mlflow_scoring_protocol(server: Any, data: Any, reference_proba: Any) -> None:
    x, _y = data
    rows = x.head(3)
    expected = list(np.argmax(reference_proba("churn@champion", rows), axis=1))
    split = {"columns": FEATURES, "data": rows.to_numpy().tolist()}
    records = rows.to_dict(orient="records")
    bodies = [{"dataframe_split": split}, {"dataframe_records": records},
              {"instances": records}, {"instances": rows.to_numpy().tolist()},
              {"inputs": {c: rows[c].tolist() for c in FEATURES}}]
    with httpx.Client(base_url=server.url) as client:
        for body in bodies:
            response = client.post("/invocations", json=body)
            assert response.status_code == 200, (body.keys(), response.text)
            assert response.json() == {"predictions": expected}
        csv = client.post("/invocations", content=rows.to_csv(index=False),
                          headers={"content-type": "text/csv"})
        assert csv.json() == {"predictions": expected}
        two = client.post("/invocations", json={"dataframe_split": split,
                                                "instances": records})
        assert two.status_code == 400
        assert two.json()["error_code"] == "BAD_REQUEST"
        assert "exactly one" in two.json()["message"]
        assert client.get("/ping").status_code == 200
        assert client.get("/health").status_code == 200
        assert client.get("/version").text
        assert client.post("/invocations", content=b"a,b\n1,2\n",
                           headers={"content-type": "text/csv"}).status_code == 422


def test_kserve_v1(server: Any, data: Any, reference_proba: Any) -> None:
    x, _y = data
    rows = x.head(3)
    expected = list(np.argmax(reference_proba("churn@champion", rows), axis=1))
    with httpx.Client(base_url=server.url) as client:
        for instances in (rows.to_numpy().tolist(), rows.to_dict(orient="records")):
            response = client.post("/v1/models/churn:predict", json={"instances": instances})
            assert response.status_code == 200, response.text
            assert response.json() == {"predictions": expected}
        assert client.get("/v1/models/churn").json() == {"name": "churn", "ready": True}
        assert client.get("/v1/models").json() == {"models": ["churn"]}
        bad = client.post("/v1/models/churn:predict", json={"instances": []})
        assert bad.status_code == 400 and "error" in bad.json()


def test_health_status_and_metrics(server: Any) -> None:
    with httpx.Client(base_url=server.url) as client:
        assert client.get("/livez").status_code == 200
        assert client.get("/readyz").json() == {"status": "ready"}
        client.post("/v1/endpoints/churn/predict", json=[{f: 0.0 for f in FEATURES}])
        status = client.get("/v1/endpoints/churn").json()
        assert status["routes"][0]["serving_version"] == 1
        assert status["models"][0]["runtime"] == "onnx"
        text = client.get("/metrics").text
    for name in ("mlharbor_requests_total", "mlharbor_request_duration_seconds_bucket",
                 "mlharbor_batch_rows_bucket", "mlharbor_in_flight_requests",
                 "mlharbor_model_load_seconds_count", "mlharbor_fallbacks_total"):
        assert name in text, name
    assert 'endpoint="churn"' in text
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (scripts/system-deps.sh installs prometheus)")
    lint = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                          text=True, check=False)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_python_client(server: Any, data: Any, reference_proba: Any) -> None:
    import mlharbor
    from mlharbor.core.errors import NotFoundError, SchemaError

    x, _y = data
    with mlharbor.Client(server.url) as client:
        answer = client.predict("churn", x.head(6))
        np.testing.assert_allclose(answer.probabilities, reference_proba("churn@champion",
                                                                         x.head(6)), atol=1e-6)
        assert answer.version == 1 and len(answer.request_id) == 32
        assert client.predict("churn", x.head(1).to_dict(orient="records")).version == 1
        with pytest.raises(SchemaError) as caught:
            client.predict("churn", x.head(2).drop(columns=["f4"]))
        assert caught.value.details["column"] == "f4"
        with pytest.raises(NotFoundError):
            client.predict("nope", x.head(1))


def test_open_inference_errors_are_flat_for_tritonclient(
        home_settings: Any, registry: Any, serve: Any) -> None:
    """Every error on /v2 is {"error": "<message>"}, refusals by the security layer too, so
    tritonclient raises its exception with our text (it crashed on a nested object)."""
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    from mlharbor.bootstrap import open_identities

    identities = open_identities(registry)
    identities.create_identity("app", kind="service", grants=["predictor@endpoint:churn"],
                               actor="test")
    key = identities.create_key("app", actor="test")[1]
    server = serve(ref="churn@champion", auth=True)
    client = triton.InferenceServerClient(url=server.url.removeprefix("http://"))
    tensor = triton.InferInput("input", [1, 20], "FP64")
    tensor.set_data_from_numpy(np.zeros((1, 20)), binary_data=True)
    cases = [
        ({"Authorization": "Bearer mlh_not_a_key_at_all_000000000000"}, "churn", "401",
         "The API key is malformed"),
        ({}, "churn", "401", "needs credentials"),
        ({"Authorization": f"Bearer {key}"}, "nope", "403", "may not predict"),
    ]
    for headers, model, status, text in cases:
        with pytest.raises(InferenceServerException) as caught:
            client.infer(model, [tensor], headers=dict(headers))  # it adds to the dict
        assert caught.value.status() == status
        assert text in caught.value.message() and text in str(caught.value)
        raw = httpx.post(f"{server.url}/v2/models/{model}/infer", headers=headers,
                         json={"inputs": [{"name": "x", "shape": [1, 20], "datatype": "FP64",
                                           "data": [0.0] * 20}]})
        assert isinstance(raw.json()["error"], str) and text in raw.json()["error"]
    good = {"Authorization": f"Bearer {key}"}
    with pytest.raises(InferenceServerException) as caught:
        client.get_model_metadata("churn", model_version="9", headers=good)
    assert caught.value.status() == "404" and "no served version 9" in caught.value.message()
    # no route at all, a wrong method, a wrong Host: still the flat v2 shape
    for response in (httpx.get(f"{server.url}/v2/nowhere", headers=good),
                     httpx.get(f"{server.url}/v2/models/churn/infer", headers=good),
                     httpx.get(f"{server.url}/v2/health/live",
                               headers={"Host": "evil.example.com"})):
        assert response.status_code in (400, 404, 405), response.text
        assert isinstance(response.json()["error"], str), response.text
    # the native protocol keeps its own shape
    native = httpx.post(f"{server.url}/v1/endpoints/churn/predict", json=[{"f0": 1}])
    assert native.json()["error"]["code"] == "unauthenticated"


@pytest.mark.parametrize("auth", [False, True])
def test_kserve_liveness_allow_and_unsupported_content_types(serve: Any, registry: Any,
                                                             auth: bool) -> None:
    headers = {}
    if auth:
        from mlharbor.bootstrap import open_identities

        key = open_identities(registry).init_admin("ops", actor="test")[1]
        headers = {"Authorization": f"Bearer {key}"}
    server = serve(ref="churn@champion", auth=auth)
    alive = httpx.get(f"{server.url}/")  # public: orchestrators probe it without a key
    assert alive.status_code == 200 and alive.json() == {"status": "alive"}
    # 405 names what the path takes (from the route table when auth answers first), in the
    # protocol's own error shape
    wrong = httpx.get(f"{server.url}/v1/models/churn:predict", headers=headers)
    assert wrong.status_code == 405, wrong.text
    assert wrong.headers["allow"] == "POST"
    assert isinstance(wrong.json()["error"], str)
    for path, allow in (("/v1/endpoints/churn/predict", "POST"), ("/livez", "GET"),
                        ("/v2/models/churn", "GET")):
        response = httpx.delete(f"{server.url}{path}", headers=headers)
        assert response.status_code == 405, (path, response.text)
        assert response.headers["allow"] == allow
    if auth:
        return
    row = {"instances": [[0.0] * 20]}
    body_routes = {"/v1/models/churn:predict": "application/json",
                   "/v2/models/churn/infer": "application/json",
                   "/v1/endpoints/churn/predict": "application/json",
                   "/invocations": "application/json", "/graphql": "application/json"}
    for path, accepted in body_routes.items():
        for content_type in ("application/x-www-form-urlencoded", "text/plain",
                             "application/xml"):
            response = httpx.post(f"{server.url}{path}", content=b'{"a": 1}',
                                  headers={"content-type": content_type})
            assert response.status_code == 415, (path, content_type, response.text)
            assert accepted in response.text
    # accepted types (with parameters), and no Content-Type at all, are read as JSON
    ok = httpx.post(f"{server.url}/v1/models/churn:predict", content=orjson_dumps(row),
                    headers={"content-type": "application/json; charset=utf-8"})
    assert ok.status_code == 200, ok.text
    assert httpx.post(f"{server.url}/v1/models/churn:predict",
                      content=orjson_dumps(row)).status_code == 200


def orjson_dumps(value: Any) -> bytes:
    import orjson

    return orjson.dumps(value)


@pytest.mark.parametrize("shape", [[4294967296, 4294967296], [2**62, 4], [2**64], [-1, 20],
                                   [1, -20], [0, 2**40, 2**40], [3, 20], [1.5, 20], "20",
                                   [True, 20], [1] * 40])
def test_open_inference_shapes_that_do_not_fit_are_400(server: Any, shape: Any) -> None:
    response = httpx.post(f"{server.url}/v2/models/churn/infer", json={"inputs": [
        {"name": "x", "shape": shape, "datatype": "FP64", "data": [0.0] * 20}]})
    assert response.status_code in (400, 422), response.text
    message = response.json()["error"]
    assert "shape" in message, message
    assert httpx.get(f"{server.url}/readyz").status_code == 200


def _fake_request(doc: Any, blob: bytes = b"") -> Any:
    """A request as the HTTP layer hands it to the route (stdlib JSON: any integer)."""
    import json

    from mlharbor.serving.http import Request

    header = json.dumps(doc).encode()
    headers = [(b"inference-header-content-length", str(len(header)).encode())] if blob else []
    scope = {"method": "POST", "path": "/v2/models/m/infer", "headers": headers}
    return Request(scope, header + blob, "r", {"model": "m"})


@pytest.mark.parametrize("columns", [2])
def test_tensor_parser_raises_only_our_error(columns: int) -> None:
    """Property: for any shape, datatype and data length, the v2 tensor parser returns
    arrays of the declared shape or raises InvalidInputError, never anything else."""
    from types import SimpleNamespace

    from hypothesis import given, settings
    from hypothesis import strategies as st

    from mlharbor.core.errors import InvalidInputError
    from mlharbor.serving.protocols.open_inference import DTYPES, parse_inputs

    model = SimpleNamespace(signature=SimpleNamespace(names=("a", "b"), all_numeric=True))
    dims = st.one_of(st.integers(-3, 6), st.sampled_from([2**31, 2**32, 2**62, 2**63, 2**64,
                                                          2**70, -(2**63)]))
    shapes = st.one_of(st.lists(dims, max_size=10), st.just([]), st.integers(),
                       st.none(), st.lists(st.floats(allow_nan=False), max_size=3))
    values = st.one_of(st.integers(-(2**70), 2**70), st.floats(), st.booleans(),
                       st.text(max_size=3))

    junk = st.one_of(st.none(), st.integers(), st.lists(st.integers(), max_size=2),
                     st.dictionaries(st.text(max_size=2), st.integers(), max_size=2))

    @settings(derandomize=True, deadline=None, max_examples=400)
    @given(shape=shapes, datatype=st.one_of(st.sampled_from([*DTYPES, "NOPE"]), junk),
           data=st.one_of(st.lists(values, max_size=12),
                          st.lists(st.lists(values, max_size=3), max_size=4)),
           binary=st.one_of(st.none(), st.binary(max_size=40)))
    def check(shape: Any, datatype: str, data: Any, binary: bytes | None) -> None:
        tensor: dict[str, Any] = {"name": "a", "shape": shape, "datatype": datatype}
        if binary is None:
            tensor["data"] = data
        else:
            tensor["parameters"] = {"binary_data_size": len(binary)}
        try:
            _doc, parsed = parse_inputs(_fake_request({"inputs": [tensor]}, binary or b""),
                                        model)
        except InvalidInputError:
            return
        arrays = parsed.values() if isinstance(parsed, dict) else [parsed]
        assert all(isinstance(a, np.ndarray) for a in arrays)

    check()
