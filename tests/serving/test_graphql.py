"""GraphQL on the serving app: models, versions, endpoints, predict, and the abuse limits."""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
import pytest

pytestmark = pytest.mark.slow


def gql(url: str, query: str, **variables: Any) -> dict[str, Any]:
    response = httpx.post(f"{url}/graphql", json={"query": query, "variables": variables})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_queries_and_predict(serve: Any, data: Any, reference_proba: Any) -> None:
    server = serve(ref="churn@champion")
    models = gql(server.url, "{ models { name latestVersion aliases "
                             "versions(limit: 5) { version status runtime aliases } } }")
    churn = models["data"]["models"][0]
    assert churn["name"] == "churn" and churn["aliases"] == {"champion": 1}
    assert [v["version"] for v in churn["versions"]] == [3, 2, 1]
    endpoints = gql(server.url, "{ endpoints { name ready routes { ref servingVersion } } }")
    assert endpoints["data"]["endpoints"] == [
        {"name": "churn", "ready": True,
         "routes": [{"ref": "churn@champion", "servingVersion": 1}]}]
    x, _y = data
    rows = x.head(2).to_dict(orient="records")
    answer = gql(server.url, "mutation($r: JSON!) { predict(endpoint: \"churn\", records: $r)"
                             " { version predictions probabilities requestId } }", r=rows)
    result = answer["data"]["predict"]
    assert result["version"] == 1
    np.testing.assert_allclose(result["probabilities"],
                               reference_proba("churn@champion", x.head(2)), atol=1e-6)
    bad = gql(server.url, "mutation($r: JSON!) { predict(endpoint: \"churn\", records: $r)"
                          " { version } }", r=[{"f0": 1}])
    assert bad["errors"][0]["extensions"] == {"code": "schema_mismatch", "status": 422}
    missing = gql(server.url, '{ model(name: "ghost") { name } }')
    assert missing["errors"][0]["extensions"]["status"] == 404


def test_depth_and_cost_limits(serve: Any) -> None:
    server = serve(ref="churn@champion")
    fine = "{ models { versions { name } } }"
    deep = ("{ __schema { types { fields { type { fields { type { fields { type { name } } } } }"
            " } } } }")
    assert "depth" in gql(server.url, deep)["errors"][0]["message"].lower()
    nested = "{ a: models { name } " + " ".join(f"m{i}: models {{ name }}"
                                                   for i in range(20)) + " }"
    too_many_aliases = gql(server.url, nested)
    assert "aliases" in too_many_aliases["errors"][0]["message"].lower()
    huge = "{ models { " + "name " * 3000 + "} }"
    assert "token" in gql(server.url, huge)["errors"][0]["message"].lower()
    assert "errors" not in gql(server.url, fine)
