"""Kubernetes manifests, Helm chart, KServe and Knative: real validators, and fields we rely on."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlharbor.core.errors import ConfigError, InvalidInputError
from mlharbor.deploy.base import DeploymentSource, Plan, default_image
from mlharbor.deploy.environment import replica_environment
from mlharbor.deploy.kubernetes import PLAIN, KubernetesOptions, KubernetesTarget
from mlharbor.settings import Settings
from tests.deploy.conftest import Deployed
from tests.deploy.validators import crd_errors, k8s_errors, load_docs, render_helm


def plan(deployed: Deployed, tmp_path: Path, settings: Settings | None = None,
         **options: Any) -> Plan:
    source = DeploymentSource("churn@champion", deployed.version,
                              default_image(deployed.version))
    env = replica_environment(settings or deployed.settings, options.pop("mode", None))
    return KubernetesTarget().plan(source, KubernetesOptions(env, **options), tmp_path)


def docs_of(p: Plan) -> dict[str, dict[str, Any]]:
    found = {}
    for f in p.files:
        if "/" not in f.path:
            for doc in load_docs(f.content):
                found[doc["kind"]] = doc
    return found


def test_plain_manifests_pass_strict_kubernetes_validation(deployed: Deployed,
                                                           tmp_path: Path) -> None:
    docs = docs_of(plan(deployed, tmp_path))
    assert set(docs) == {"ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler",
                         "PodDisruptionBudget"}
    for doc in docs.values():
        assert k8s_errors(doc) == [], doc["kind"]


def test_deployment_has_probes_resources_and_a_locked_down_container(
        deployed: Deployed, tmp_path: Path) -> None:
    dep = docs_of(plan(deployed, tmp_path))["Deployment"]
    pod = dep["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "mlharbor/churn:1"
    assert container["args"] == ["serve"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": 8080}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 8080}
    assert container["resources"]["requests"] == {"cpu": "250m", "memory": "512Mi"}
    assert container["resources"]["limits"]["memory"] == "2Gi"
    ctx = container["securityContext"]
    assert ctx["runAsNonRoot"] is True and ctx["readOnlyRootFilesystem"] is True
    assert ctx["allowPrivilegeEscalation"] is False and ctx["capabilities"] == {"drop": ["ALL"]}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert mounts == {"/var/lib/mlharbor", "/tmp"}  # the only writable places
    assert dep["spec"]["selector"]["matchLabels"].items() <= \
        dep["spec"]["template"]["metadata"]["labels"].items()


def test_replicas_share_postgres_and_s3_through_configmap_and_secret(
        deployed: Deployed, tmp_path: Path) -> None:
    shared = Settings(home=tmp_path / "h", database_url="postgresql+psycopg://u:pw@db/ml",
                      artifact_uri="s3://models/prod", s3_endpoint_url="http://minio:9000")
    docs = docs_of(plan(deployed, tmp_path, shared))
    config = docs["ConfigMap"]["data"]
    assert config["MLHARBOR_ARTIFACT_URI"] == "s3://models/prod"
    assert config["MLHARBOR_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert "pw" not in yaml.safe_dump(docs)  # the database URL is a secret reference only
    (container,) = docs["Deployment"]["spec"]["template"]["spec"]["containers"]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]}
    assert refs["MLHARBOR_DATABASE_URL"] == {"name": "churn-secrets", "key": "database-url",
                                             "optional": False}
    assert refs["AWS_SECRET_ACCESS_KEY"]["optional"] is True
    assert container["envFrom"] == [{"configMapRef": {"name": "churn-config"}}]
    for doc in docs.values():
        assert k8s_errors(doc) == []


def test_sharing_a_local_sqlite_registry_is_refused(deployed: Deployed, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="PostgreSQL"):
        plan(deployed, tmp_path, mode="shared")


def test_kserve_inference_service_matches_the_crd_schema(deployed: Deployed,
                                                         tmp_path: Path) -> None:
    p = plan(deployed, tmp_path, kserve=True)
    assert [f.path for f in p.files] == ["configmap.yaml", "inferenceservice.yaml"]
    (config,) = load_docs(p.file("configmap.yaml").content)
    assert k8s_errors(config) == []
    (doc,) = load_docs(p.file("inferenceservice.yaml").content)
    assert crd_errors(doc) == []
    predictor = doc["spec"]["predictor"]
    assert (doc["apiVersion"], doc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    assert predictor["containers"][0]["image"] == "mlharbor/churn:1"
    assert predictor["containers"][0]["ports"][0]["containerPort"] == 8080
    assert predictor["minReplicas"] == 2 and predictor["maxReplicas"] == 10


def test_knative_service_scales_to_zero_and_matches_the_crd_schema(deployed: Deployed,
                                                                   tmp_path: Path) -> None:
    p = plan(deployed, tmp_path, knative=True)
    (doc,) = load_docs(p.file("knative-service.yaml").content)
    assert crd_errors(doc) == []
    template = doc["spec"]["template"]
    assert template["metadata"]["annotations"]["autoscaling.knative.dev/min-scale"] == "0"
    (container,) = template["spec"]["containers"]
    assert container["ports"] == [{"name": "http1", "containerPort": 8080, "protocol": "TCP"}]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_helm_chart_renders_back_to_the_plain_manifests(deployed: Deployed,
                                                        tmp_path: Path) -> None:
    plain = docs_of(plan(deployed, tmp_path))
    chart = plan(deployed, tmp_path, helm=True)
    meta = yaml.safe_load(chart.file("chart/churn/Chart.yaml").content)
    assert meta["apiVersion"] == "v2" and meta["name"] == "churn"
    values = yaml.safe_load(chart.file("chart/churn/values.yaml").content)
    assert values["image"] == "mlharbor/churn:1" and values["replicas"] == 2
    for kind_file in PLAIN:
        template = chart.file(f"chart/churn/templates/{kind_file}.yaml").content
        assert "{{ .Values." in template or kind_file in ("service", "pdb")
        (doc,) = load_docs(render_helm(template, values))
        assert doc == plain[doc["kind"]]
        assert k8s_errors(doc) == []
    bumped = {**values, "replicas": 4, "image": "registry.local/churn:9"}
    dep = load_docs(render_helm(chart.file("chart/churn/templates/deployment.yaml").content,
                                bumped))[0]
    assert dep["spec"]["replicas"] == 4
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.local/churn:9"


@pytest.mark.parametrize("breakage", ["probe port as a word", "replicas as text",
                                      "unknown field", "missing selector"])
def test_broken_manifests_fail_kubernetes_validation(deployed: Deployed, tmp_path: Path,
                                                     breakage: str) -> None:
    dep = copy.deepcopy(docs_of(plan(deployed, tmp_path))["Deployment"])
    spec = dep["spec"]
    container = spec["template"]["spec"]["containers"][0]
    if breakage == "probe port as a word":
        container["livenessProbe"]["httpGet"]["port"] = {"number": 8080}
    elif breakage == "replicas as text":
        spec["replicas"] = "two"
    elif breakage == "unknown field":
        container["securityContxt"] = container.pop("securityContext")
    else:
        del spec["selector"]
    assert k8s_errors(dep) != []


def test_broken_crds_fail_their_schemas(deployed: Deployed, tmp_path: Path) -> None:
    (isvc,) = load_docs(plan(deployed, tmp_path, kserve=True).file(
        "inferenceservice.yaml").content)
    isvc["spec"]["predictor"]["minReplicas"] = "two"
    assert crd_errors(isvc) != []
    (ksvc,) = load_docs(plan(deployed, tmp_path, knative=True).file(
        "knative-service.yaml").content)
    ksvc["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "8080"
    assert crd_errors(ksvc) != []
    # A kind validated by nothing is a failure, never a pass.
    assert k8s_errors(isvc) and "no schema" in k8s_errors(isvc)[0]


def test_options_are_checked(deployed: Deployed, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="autoscaling range"):
        plan(deployed, tmp_path, replicas=20)
    with pytest.raises(InvalidInputError, match="pick one"):
        plan(deployed, tmp_path, kserve=True, knative=True)


def test_apply_without_a_cluster_says_so(deployed: Deployed, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("kubernetes", reason="pip install kubernetes")
    from mlharbor.deploy.kube_apply import apply_documents

    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-such-kubeconfig"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    docs = list(docs_of(plan(deployed, tmp_path)).values())
    with pytest.raises(ConfigError, match="No Kubernetes cluster is configured"):
        apply_documents(docs, namespace="default")
