"""The JSON routes the dashboard reads, over plain HTTP on the harbor's live control plane:
traffic, audit trail, deployment ledger, lineage, evaluation report; auth and bad parameters."""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
import pytest

from tests.ui.harbor import REQUESTS, Harbor

NEW_ROUTES = [
    "/api/v1/monitoring/endpoints/churn/traffic", "/api/v1/audit", "/api/v1/audit/head",
    "/api/v1/deployments", "/api/v1/models/churn/versions/1/lineage",
    "/api/v1/models/churn/versions/1/report", "/ui/whoami",
]


def get(harbor: Harbor, path: str, role: str = "admin", **params: Any) -> httpx.Response:
    return httpx.get(f"{harbor.url}{path}", params=params, timeout=60,
                     headers={"Authorization": f"Bearer {harbor.keys[role]}"})


def test_every_new_route_needs_credentials_and_audit_needs_audit_read(harbor: Harbor) -> None:
    for path in NEW_ROUTES:
        answer = httpx.get(f"{harbor.url}{path}")
        assert answer.status_code == 401, path
        assert answer.json()["error"]["code"] == "unauthenticated"
        assert get(harbor, path, "admin").status_code == 200, path
    for path in ("/api/v1/audit", "/api/v1/audit/head"):
        refused = get(harbor, path, "viewer")
        assert refused.status_code == 403 and "audit.read" in refused.json()["error"]["message"]
    for path in NEW_ROUTES[3:]:
        assert get(harbor, path, "viewer").status_code == 200, path
    assert "audit.read" not in get(harbor, "/ui/whoami", "viewer").json()["actions"]
    assert "audit.read" in get(harbor, "/ui/whoami", "admin").json()["actions"]


@pytest.mark.parametrize(("path", "params", "field"), [
    ("/api/v1/monitoring/endpoints/churn/traffic", {"window": "an hour"}, "window"),
    ("/api/v1/monitoring/endpoints/churn/traffic", {"window": "-1h"}, "window"),
    ("/api/v1/monitoring/endpoints/churn/traffic", {"step": "0s"}, "step"),
    ("/api/v1/monitoring/endpoints/churn/traffic", {"window": "5m", "step": "1h"}, "step"),
    ("/api/v1/monitoring/endpoints/churn/traffic", {"window": "7d", "step": "1s"}, "step"),
    ("/api/v1/monitoring/endpoints/churn/drift", {"window": "x"}, "window"),
    ("/api/v1/monitoring/endpoints/churn/performance", {"step": "1y"}, "step"),
    ("/api/v1/audit", {"limit": "0"}, "limit"),
    ("/api/v1/audit", {"action": "drop table;"}, "action"),
    ("/api/v1/audit", {"before": "soon"}, "before"),
    ("/api/v1/deployments", {"kind": "rollout"}, "kind"),
    ("/api/v1/deployments", {"before": "yesterday"}, "before"),
    ("/api/v1/models/churn/versions/1/report", {"format": "pdf"}, "format"),
])
def test_bad_query_parameters_are_422_naming_the_parameter(
        harbor: Harbor, path: str, params: dict[str, str], field: str) -> None:
    answer = get(harbor, path, **params)
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["code"] == "invalid_input" and error["message"].startswith(f"{field}:")
    assert error["details"][0]["field"] == field


def test_a_bad_window_says_how_to_write_one(harbor: Harbor) -> None:
    error = get(harbor, "/api/v1/monitoring/endpoints/churn/traffic", window="soon").json()
    assert "'soon' is not understood" in error["error"]["message"]
    assert "15m, 24h" in error["error"]["message"]


def test_traffic_counts_each_request_once_and_leaves_shadows_out(harbor: Harbor) -> None:
    from mlharbor.monitoring.service import Monitor

    body = get(harbor, "/api/v1/monitoring/endpoints/churn/traffic", window="1h",
               step="1m").json()
    assert len(body["buckets"]) in (60, 61) and body["step_s"] == 60
    totals = body["totals"]
    # 40 requests of 1, 2, 3, 1, 2 ... rows (79 rows), each copied to the shadow.
    assert harbor.served_rows == 79
    assert totals["requests"] == REQUESTS and totals["shadow_requests"] == REQUESTS
    assert sum(b["requests"] for b in body["buckets"]) == REQUESTS
    assert totals["error_rate"] == 0.0
    assert 0 < totals["latency_p50_s"] <= totals["latency_p95_s"] <= totals["latency_p99_s"]
    split = {(s["model_ref"], s["version"]): s["requests"] for s in body["split"]}
    assert set(split) == {("churn@champion", 2), ("churn:1", 1)}
    assert sum(split.values()) == REQUESTS
    # The same percentile from the log read independently, one latency per request.
    monitor = Monitor(harbor.settings, harbor.registry)
    try:
        frame = monitor.log.scan("churn", columns=["row", "shadow", "latency_s"]).to_pandas()
    finally:
        monitor.log.close()
    requests = frame[(frame["row"] == 0) & ~frame["shadow"].astype(bool)]
    assert len(requests) == REQUESTS
    assert totals["latency_p95_s"] == pytest.approx(np.quantile(requests["latency_s"], 0.95))


def test_the_audit_trail_is_newest_first_paged_and_filtered(harbor: Harbor) -> None:
    everything = get(harbor, "/api/v1/audit", limit=1000).json()["items"]
    seqs = [e["seq"] for e in everything]
    assert seqs == sorted(seqs, reverse=True) and len(seqs) >= 10
    paged: list[int] = []
    before = None
    while True:
        params: dict[str, Any] = {"limit": 3, **({"before": before} if before else {})}
        page = get(harbor, "/api/v1/audit", **params).json()
        paged += [e["seq"] for e in page["items"]]
        before = page["next_before"]
        if before is None:
            break
    assert paged == seqs
    deploys = get(harbor, "/api/v1/audit", action="deploy.*").json()["items"]
    assert [e["action"] for e in deploys] == ["deploy.kubernetes"]
    created = get(harbor, "/api/v1/audit", action="endpoint.create").json()["items"]
    assert [(e["actor"], e["resource"]) for e in created] == [("deployer-1", "endpoint/churn")]
    head = get(harbor, "/api/v1/audit/head").json()
    assert head["seq"] == seqs[0] and head["hash"] == everything[0]["hash"]


def test_the_deployment_ledger_merges_alias_moves_endpoint_revisions_and_deploys(
        harbor: Harbor) -> None:
    items = get(harbor, "/api/v1/deployments").json()["items"]
    assert [i["at"] for i in items] == sorted((i["at"] for i in items), reverse=True)
    summary = [(i["kind"], i["action"], i["subject"]) for i in items]
    assert summary == [
        ("deploy", "deploy.kubernetes", "model/churn/version/2"),
        ("endpoint", "endpoint.create", "churn"),
        ("alias", "alias.moved", "churn@champion"),
        ("alias", "alias.set", "churn@champion"),
    ]
    assert items[1]["routes"] == [{"ref": "churn@champion", "weight": 75.0},
                                  {"ref": "churn:1", "weight": 25.0}]
    assert (items[2]["from_version"], items[2]["to_version"]) == (1, 2)
    only_aliases = get(harbor, "/api/v1/deployments", kind="alias").json()["items"]
    assert [i["kind"] for i in only_aliases] == ["alias", "alias"]
    assert get(harbor, "/api/v1/deployments", model="other").json()["items"] == []
    assert len(get(harbor, "/api/v1/deployments", model="churn").json()["items"]) == 4
    first = get(harbor, "/api/v1/deployments", limit=2).json()
    rest = get(harbor, "/api/v1/deployments", limit=2, before=first["next_before"]).json()
    assert [i["action"] for i in first["items"] + rest["items"]] == [s[1] for s in summary]


def test_lineage_and_evaluation_report_of_a_version(harbor: Harbor) -> None:
    lineage = get(harbor, "/api/v1/models/churn/versions/1/lineage").json()
    assert lineage["ref"] == "churn:1" and lineage["has_evaluation"]
    assert lineage["has_reference_profile"]
    assert lineage["lineage"]["dataset"]["fingerprint"].startswith("sha256:")
    assert lineage["lineage"]["seed"] == 7
    assert "reference_profile" not in lineage["lineage"]
    assert "evaluation" not in lineage["lineage"]
    assert [(m["from_version"], m["to_version"]) for m in lineage["alias_moves"]] == [
        (None, 1), (1, 2)]
    report = get(harbor, "/api/v1/models/churn/versions/2/report").json()["report"]
    assert report["primary_metric"] == "f1" and report["passed"] is True
    assert 0 < report["holdout"]["metrics"]["f1"] <= 1
    assert report["champion"]["ref"] == "churn:1"
    page = get(harbor, "/api/v1/models/churn/versions/2/report", format="html")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<svg" in page.text and "<script" not in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"]
    missing = get(harbor, "/api/v1/models/churn/versions/9/lineage")
    assert missing.status_code == 404


def test_scoped_keys_read_only_their_own_model_or_endpoint(harbor: Harbor) -> None:
    from mlharbor.bootstrap import open_identities

    identities = open_identities(harbor.registry)
    other_model = identities.create_key("viewer-1", scopes=["model:other"], actor="test")[1]
    other_endpoint = identities.create_key("viewer-1", scopes=["endpoint:other"],
                                           actor="test")[1]
    own_model = identities.create_key("viewer-1", scopes=["model:churn"], actor="test")[1]

    def status(path: str, key: str) -> int:
        return httpx.get(f"{harbor.url}{path}", timeout=60,
                         headers={"Authorization": f"Bearer {key}"}).status_code

    for path in ("/api/v1/models/churn/versions/1/lineage",
                 "/api/v1/models/churn/versions/1/report"):
        assert status(path, other_model) == 403, path
        assert status(path, own_model) == 200, path
    traffic = "/api/v1/monitoring/endpoints/churn/traffic"
    assert status(traffic, other_endpoint) == 403
    assert status(traffic, other_model) == 403
    # Whoever holds a valid key may ask what it may do, scoped or not.
    for key in (other_model, other_endpoint, own_model):
        assert status("/ui/whoami", key) == 200
