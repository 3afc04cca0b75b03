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
