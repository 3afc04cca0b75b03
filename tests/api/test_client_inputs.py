"""The Python client against a live serving server: the inputs a scikit-learn user has at hand
(numpy arrays, DataFrames, records, dicts of lists) give the model's own predictions, and every
failure is an mlharbor error (server down, timeouts, 401/403/404/422, a proxy's HTML page)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from mlharbor.client import Client
from mlharbor.core.errors import (
    AuthenticationError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
    SchemaError,
    TimeoutError_,
    UnavailableError,
)
from mlharbor.settings import Settings
from tests.support import LiveServer, free_port

# Columns on very different scales with weights of both signs: any column mix-up changes the
# predictions, so matching the in-process model proves the order the client chose.
COLUMNS = ["tenure", "charges", "calls", "age"]


@pytest.fixture(scope="module")
def fitted() -> tuple[Any, Any]:
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(7)
    x = pd.DataFrame({"tenure": rng.uniform(0, 72, 300), "charges": rng.uniform(20, 120, 300),
                      "calls": rng.integers(0, 10, 300).astype(float),
                      "age": rng.uniform(18, 90, 300)})
    y = ((x.charges / 50 - x.tenure / 30 + x.calls / 3 - x.age / 60) > 0).astype(int)
    return x, LogisticRegression(max_iter=2000).fit(x, y)


def _mixed() -> tuple[Any, Any]:
    """A pipeline over a number and a text column (one-hot encoded), as the demo's churn."""
    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    rng = np.random.default_rng(5)
    x = pd.DataFrame({"tenure": rng.uniform(0, 72, 200),
                      "plan": rng.choice(["basic", "plus", "pro"], 200)})
    y = ((x.tenure < 30) & (x.plan != "pro")).astype(int)
    model = Pipeline([
        ("pre", ColumnTransformer([("num", "passthrough", ["tenure"]),
                                   ("cat", OneHotEncoder(handle_unknown="ignore"), ["plan"])])),
        ("clf", LogisticRegression(max_iter=1000)),
    ]).fit(x, y)
    return x, model


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, fitted: tuple[Any, Any]
           ) -> Iterator[tuple[str, str, str]]:
    """A serving server (auth on) for ``churn`` and ``mixed``; yields its URL, a predictor
    key for every endpoint and a key allowed on another endpoint only."""
    from mlharbor.bootstrap import open_identities, open_registry
    from mlharbor.registry.bundles import register_model
    from mlharbor.registry.endpoints import EndpointSpec
    from mlharbor.serving.app import create_serving_app

    x, model = fitted
    settings = Settings(home=tmp_path_factory.mktemp("client") / "home")
    registry = open_registry(settings)
    register_model(registry, "churn", model, settings=settings, sample_input=x.head(20))
    mixed_x, mixed_model = _mixed()
    register_model(registry, "mixed", mixed_model, settings=settings,
                   sample_input=mixed_x.head(20))
    identities = open_identities(registry)
    keys = []
    for who, grant in (("app", "predictor"), ("other", "predictor@endpoint:x")):
        identities.create_identity(who, kind="service", grants=[grant], actor="test")
        keys.append(identities.create_key(who, actor="test")[1])
    specs = [EndpointSpec.model_validate({"name": n, "routes": [{"ref": f"{n}:1"}]})
             for n in ("churn", "mixed")]
    app = create_serving_app(settings, registry, endpoints=specs, auth=True)
    with LiveServer(app) as live:
        deadline = time.monotonic() + 60
        while httpx.get(f"{live.url}/readyz").status_code != 200:
            assert time.monotonic() < deadline, "the model never became ready"
            time.sleep(0.1)
        yield live.url, keys[0], keys[1]
    registry.close()


@pytest.fixture
def client(server: tuple[str, str, str]) -> Iterator[Client]:
    with Client(server[0], server[1]) as c:
        yield c


def _expected(fitted: tuple[Any, Any], rows: Any) -> list[int]:
    return [int(v) for v in fitted[1].predict(rows)]


def test_a_numpy_array_gives_the_models_own_predictions(
    client: Client, fitted: tuple[Any, Any]
) -> None:
    x, model = fitted
    rows = x.head(50)
    answer = client.predict("churn", rows.to_numpy())
    assert answer.predictions == _expected(fitted, rows)
    assert answer.probabilities is not None
    np.testing.assert_allclose(answer.probabilities, model.predict_proba(rows), atol=1e-4)
    assert client.columns("churn") == COLUMNS
    # One row as a 1-D array, and a plain list of lists, in the signature's order.
    assert client.predict("churn", rows.to_numpy()[3]).predictions == _expected(
        fitted, rows.iloc[[3]])
    assert client.predict("churn", rows.to_numpy().tolist()).predictions == _expected(
        fitted, rows)


def test_an_object_array_of_mixed_columns(client: Client) -> None:
    """What ``frame.to_numpy()`` gives for numbers and text: an object array."""
    x, model = _mixed()
    rows = x.tail(40)
    answer = client.predict("mixed", rows.to_numpy())
    assert answer.predictions == [int(v) for v in model.predict(rows)]
    assert client.columns("mixed") == ["tenure", "plan"]


def test_named_forms_give_the_same_predictions(client: Client, fitted: tuple[Any, Any]) -> None:
    x, _model = fitted
    rows = x.head(30)
    expected = _expected(fitted, rows)
    shuffled = rows[list(reversed(COLUMNS))]  # names, not positions, decide
    assert client.predict("churn", shuffled).predictions == expected
    assert client.predict("churn", rows.to_dict("records")).predictions == expected
    assert client.predict("churn", rows.to_dict("list")).predictions == expected
    as_arrays = {c: rows[c].to_numpy() for c in COLUMNS}
    assert client.predict("churn", as_arrays).predictions == expected
    assert client.predict("churn", rows.iloc[0]).predictions == expected[:1]


def test_wrong_width_is_our_error_naming_the_columns(client: Client,
                                                     fitted: tuple[Any, Any]) -> None:
    x, _model = fitted
    with pytest.raises(SchemaError) as err:
        client.predict("churn", x.to_numpy()[:5, :3])
    message = str(err.value)
    assert "3 values" in message and "4 columns" in message
    assert "tenure, charges, calls, age" in message
    assert err.value.details["expected"] == COLUMNS
    with pytest.raises(SchemaError, match="different lengths"):
        client.predict("churn", {"tenure": [1.0, 2.0], "charges": [3.0]})
    with pytest.raises(SchemaError, match="3 dimensions"):
        client.predict("churn", np.zeros((2, 2, 4)))
    with pytest.raises(InvalidInputError, match="predict takes") as bad:
        client.predict("churn", object())
    assert len(str(bad.value)) < 400


def test_server_errors_map_to_our_classes(server: tuple[str, str, str], client: Client,
                                          fitted: tuple[Any, Any]) -> None:
    url, _key, other_key = server
    x, _model = fitted
    with Client(url) as anonymous, pytest.raises(AuthenticationError) as err:
        anonymous.predict("churn", x.head(2))
    assert err.value.details["status"] == 401
    with Client(url, "mlh_not_a_real_key") as wrong, pytest.raises(AuthenticationError):
        wrong.predict("churn", x.head(2))
    with Client(url, other_key) as elsewhere, pytest.raises(PermissionDeniedError):
        elsewhere.predict("churn", x.head(2))
    with pytest.raises(NotFoundError):
        client.predict("nope", x.head(2))
    with pytest.raises(NotFoundError):  # the v2 metadata route's error body has no code
        client.predict("nope", x.head(2).to_numpy())
    with pytest.raises(SchemaError) as missing:  # 422 from the server's signature check
        client.predict("churn", x.head(2).drop(columns=["age"]))
    assert "age" in str(missing.value)
    assert missing.value.details["status"] == 422


def test_server_down_is_unavailable_naming_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with Client(url, "key") as client:
        with pytest.raises(UnavailableError) as err:
            client.predict("churn", [{"tenure": 1.0}])
        assert url in str(err.value)
        assert "running" in str(err.value)  # what to check
        assert isinstance(err.value.__cause__, httpx.ConnectError)
        with pytest.raises(UnavailableError) as err:  # reading the signature for an array
            client.predict("churn", np.zeros((1, 4)))
        assert isinstance(err.value.__cause__, httpx.ConnectError)


def test_a_server_that_never_answers_is_a_timeout() -> None:
    with socket.socket() as listener:  # accepts connections (backlog) but never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        with Client(url, timeout=0.3) as client, pytest.raises(TimeoutError_) as err:
            client.predict("churn", [{"tenure": 1.0}])
    assert url in str(err.value) and "timeout=" in str(err.value)
    assert isinstance(err.value.__cause__, httpx.TimeoutException)


async def _proxy_page(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """What a proxy answers when the server behind it is gone: HTML, status 502."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 502,
                "headers": [(b"content-type", b"text/html")]})
    await send({"type": "http.response.body", "body": b"<html>502 Bad Gateway</html>"})


def test_a_non_json_error_page_is_unavailable() -> None:
    with LiveServer(_proxy_page) as proxy, Client(proxy.url) as client, \
            pytest.raises(UnavailableError) as err:
        client.predict("churn", [{"tenure": 1.0}])
    assert "502" in str(err.value) and proxy.url in str(err.value)


def test_missing_values_travel_as_null(client: Client, fitted: tuple[Any, Any]) -> None:
    """pd.NA and NaN in a frame reach the server (as JSON null), which names the column."""
    import pandas as pd

    x, _model = fitted
    rows = x.head(3).astype(object)
    rows.iloc[1, 1] = pd.NA
    with pytest.raises(SchemaError, match=r"Column 'charges' .* missing value .* at row 1"):
        client.predict("churn", rows)
    with pytest.raises(InvalidInputError, match="cannot be sent as JSON"):
        client.predict("churn", [{"tenure": object()}])


@pytest.mark.parametrize("url", ["localhost:8080", "127.0.0.1:8080", "ftp://host", "http://",
                                 "http://[::1", "http://host:port"])
def test_a_url_that_cannot_work_is_refused_at_once(url: str) -> None:
    with pytest.raises(InvalidInputError, match="http:// or https:// with a host") as err:
        Client(url)
    assert repr(url) in str(err.value)
