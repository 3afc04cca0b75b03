"""Kubernetes scaling on mlharbor's own signal (prediction requests in flight per replica):
an HPA on the Pods metric, or a KEDA ScaledObject with a prometheus trigger (which alone may
scale to zero), checked by the real validators and against the metric serving exports."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlharbor.core.errors import InvalidInputError
from mlharbor.deploy.kubernetes import IN_FLIGHT_METRIC, plain_kinds
from tests.deploy.conftest import Deployed
from tests.deploy.test_kubernetes import docs_of, plan
from tests.deploy.validators import crd_errors, k8s_errors, load_docs, render_helm
from tests.support import cli_env, run_cli


def test_serving_exports_the_metric_the_manifests_scale_on() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from mlharbor.telemetry.metrics import ServingMetrics

    metrics = ServingMetrics()
    metrics.track_in_flight(lambda: 3)
    families = {f.name: f for f in text_string_to_metric_families(
        metrics.exposition().decode())}
    family = families[IN_FLIGHT_METRIC]
    assert family.type == "gauge" and [s.value for s in family.samples] == [3.0]


def test_an_hpa_on_requests_in_flight_per_replica(deployed: Deployed, tmp_path: Path) -> None:
    p = plan(deployed, tmp_path, autoscaler="in-flight", target_in_flight=5)
    docs = docs_of(p)
    hpa = docs["HorizontalPodAutoscaler"]
    assert k8s_errors(hpa) == []
    (metric,) = hpa["spec"]["metrics"]
    assert metric == {"type": "Pods", "pods": {
        "metric": {"name": IN_FLIGHT_METRIC},
        "target": {"type": "AverageValue", "averageValue": "5"}}}
    assert hpa["spec"]["scaleTargetRef"]["name"] == docs["Deployment"]["metadata"]["name"]
    assert any("prometheus-adapter" in note for note in p.notes)
    for doc in docs.values():
        assert k8s_errors(doc) == [], doc["kind"]


def test_a_keda_scaled_object_replaces_the_hpa_and_matches_the_crd(
        deployed: Deployed, tmp_path: Path) -> None:
    p = plan(deployed, tmp_path, autoscaler="keda", target_in_flight=4, min_replicas=1,
             replicas=1, max_replicas=6, namespace="models",
             prometheus_url="http://prom.observability:9090")
    assert [f.path for f in p.files] == [f"{k}.yaml" for k in (
        "configmap", "deployment", "service", "scaledobject", "pdb")]
    docs = docs_of(p)
    assert "HorizontalPodAutoscaler" not in docs  # KEDA makes and owns its HPA
    scaled = docs["ScaledObject"]
    assert crd_errors(scaled) == []
    spec = scaled["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                      "name": docs["Deployment"]["metadata"]["name"]}
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (1, 6)
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
    meta = trigger["metadata"]
    assert meta["serverAddress"] == "http://prom.observability:9090"
    assert meta["threshold"] == "4"
    assert meta["query"] == (f'sum({IN_FLIGHT_METRIC}{{namespace="models",'
                             f'app_kubernetes_io_name="churn"}})')
    # The pods carry the label the query selects on.
    pod_labels = docs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert pod_labels["app.kubernetes.io/name"] == "churn"
    for doc in docs.values():
        if doc["kind"] != "ScaledObject":
            assert k8s_errors(doc) == [], doc["kind"]


def test_keda_scales_to_zero_and_says_what_must_hold_the_first_request(
        deployed: Deployed, tmp_path: Path) -> None:
    p = plan(deployed, tmp_path, autoscaler="keda", min_replicas=0, replicas=0)
    scaled = docs_of(p)["ScaledObject"]
    assert crd_errors(scaled) == []
    assert scaled["spec"]["minReplicaCount"] == 0
    assert scaled["spec"]["triggers"][0]["metadata"]["activationThreshold"] == "0"
    assert any("scale from zero" in note and "503" in note for note in p.notes), p.notes


def test_the_keda_helm_chart_renders_back_to_the_plain_manifests(
        deployed: Deployed, tmp_path: Path) -> None:
    options: dict[str, Any] = {"autoscaler": "keda", "target_in_flight": 6}
    plain = docs_of(plan(deployed, tmp_path, **options))
    chart = plan(deployed, tmp_path, helm=True, **options)
    values = yaml.safe_load(chart.file("chart/churn/values.yaml").content)
    assert values["targetInFlight"] == "6" and "inFlightQuery" in values
    from mlharbor.deploy.kubernetes import KubernetesOptions

    kinds = plain_kinds(KubernetesOptions(None, autoscaler="keda"))  # type: ignore[arg-type]
    assert "scaledobject" in kinds and "hpa" not in kinds
    for kind in kinds:
        (doc,) = load_docs(render_helm(chart.file(f"chart/churn/templates/{kind}.yaml").content,
                                       values))
        assert doc == plain[doc["kind"]]
    tuned = {**values, "targetInFlight": 12, "maxReplicas": 30}
    (scaled,) = load_docs(render_helm(
        chart.file("chart/churn/templates/scaledobject.yaml").content, tuned))
    assert scaled["spec"]["triggers"][0]["metadata"]["threshold"] == "12"
    assert scaled["spec"]["maxReplicaCount"] == 30
    assert crd_errors(scaled) == []


@pytest.mark.parametrize("breakage", ["threshold as a number", "unknown spec field",
                                      "no scale target", "unknown metric type"])
def test_broken_scaled_objects_fail_the_crd_schema(deployed: Deployed, tmp_path: Path,
                                                   breakage: str) -> None:
    scaled = copy.deepcopy(docs_of(plan(deployed, tmp_path, autoscaler="keda"))["ScaledObject"])
    spec = scaled["spec"]
    if breakage == "threshold as a number":
        spec["triggers"][0]["metadata"]["threshold"] = 8
    elif breakage == "unknown spec field":
        spec["minReplicas"] = spec.pop("minReplicaCount")
    elif breakage == "no scale target":
        del spec["scaleTargetRef"]
    else:
        spec["triggers"][0]["metricType"] = "Average"
    assert crd_errors(scaled) != []


@pytest.mark.parametrize(("options", "match"), [
    ({"autoscaler": "memory"}, "Unknown autoscaler 'memory'; choose one of cpu, in-flight"),
    ({"min_replicas": 0, "replicas": 0}, "Only --autoscaler keda scales to zero"),
    ({"autoscaler": "in-flight", "min_replicas": 0, "replicas": 0}, "keda scales to zero"),
    ({"autoscaler": "keda", "target_in_flight": 0}, "1 or more; received 0"),
    ({"autoscaler": "keda", "prometheus_url": "prometheus:9090"}, "http"),
    ({"autoscaler": "keda", "min_replicas": 0, "max_replicas": 0, "replicas": 0}, "max >= 1"),
])
def test_scaling_options_are_checked(deployed: Deployed, tmp_path: Path,
                                     options: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        plan(deployed, tmp_path, **options)


def test_the_cli_writes_the_scaled_object_and_refuses_a_bad_autoscaler(
        deployed: Deployed, tmp_path: Path) -> None:
    out = tmp_path / "k8s"
    result = run_cli("deploy", "kubernetes", "churn@champion", "--output", str(out),
                     "--autoscaler", "keda", "--min-replicas", "0", "--replicas", "0",
                     "--target-in-flight", "3", env=cli_env(deployed.settings))
    assert result.returncode == 0, result.stderr
    (scaled,) = load_docs((out / "scaledobject.yaml").read_text())
    assert crd_errors(scaled) == [] and scaled["spec"]["minReplicaCount"] == 0
    assert not (out / "hpa.yaml").exists()
    bad = run_cli("deploy", "kubernetes", "churn@champion", "--dry-run", "--autoscaler",
                  "gpu", env=cli_env(deployed.settings), cwd=tmp_path)
    assert bad.returncode != 0
    assert "Unknown autoscaler 'gpu'" in bad.stderr and "Traceback" not in bad.stderr
