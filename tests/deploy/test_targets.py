"""Every target: one command with --help, a --dry-run that changes nothing, a ledger entry.
Plus the cloud specs (Vertex AI, Azure ML) and the systemd unit."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mlharbor.core.errors import InvalidInputError
from mlharbor.deploy.base import resolve_source
from mlharbor.deploy.catalog import get_target, known_targets
from mlharbor.deploy.cloud import AzureMLOptions, AzureMLTarget, VertexOptions, VertexTarget
from mlharbor.deploy.environment import replica_environment
from mlharbor.deploy.systemd import SystemdOptions, SystemdTarget
from tests.deploy.conftest import Deployed
from tests.support import cli_env, run_cli

FILE_TARGETS = {
    "kubernetes": [], "lambda": [], "azure-functions": [],
    "cloud-run": [], "vertex": [], "azureml": [], "systemd": [],
}


def test_unknown_target_lists_the_known_ones() -> None:
    with pytest.raises(InvalidInputError) as caught:
        get_target("heroku")
    for name in known_targets():
        assert name in str(caught.value)


@pytest.mark.parametrize("name", known_targets())
def test_every_target_loads_and_explains_itself(name: str) -> None:
    target = get_target(name)
    assert target.name == name and len(target.summary) > 40


def test_cli_help_for_every_target() -> None:
    listing = run_cli("deploy", "--help")
    assert listing.returncode == 0
    for name in known_targets():
        assert name in listing.stdout
        helped = run_cli("deploy", name, "--help")
        assert helped.returncode == 0, helped.stderr
        assert "--dry-run" in helped.stdout
    build = run_cli("build", "--help")
    assert build.returncode == 0 and "--no-bake" in build.stdout and "--push" in build.stdout


@pytest.mark.slow
def test_cli_dry_run_writes_nothing_then_a_real_run_is_recorded(
        deployed: Deployed, tmp_path: Path) -> None:
    env = cli_env(deployed.settings)
    for name, extra in FILE_TARGETS.items():
        out = tmp_path / name
        dry = run_cli("deploy", name, "churn@champion", "--output", str(out), "--dry-run",
                      *extra, env=env)
        assert dry.returncode == 0, dry.stderr
        assert "write" in dry.stdout and "dry run" in dry.stdout
        assert not out.exists()
    cloud = run_cli("deploy", "sagemaker", "churn@champion", "--bucket", "models", "--dry-run",
                    "--role-arn", "arn:aws:iam::123456789012:role/sm", env=env)
    assert cloud.returncode == 0, cloud.stderr
    assert "upload s3 object s3://models/mlharbor/churn/1/model.tar.gz" in cloud.stdout
    real = run_cli("deploy", "kubernetes", "churn@champion", "-o", str(tmp_path / "k8s"),
                   env=env)
    assert real.returncode == 0, real.stderr
    assert (tmp_path / "k8s" / "deployment.yaml").is_file()
    events = [e for e in deployed.registry.store.iter_audit()
              if e.action == "deploy.kubernetes"]
    assert events[-1].outcome == "success"
    assert events[-1].resource == f"model/churn/version/{deployed.version.version}"
    assert events[-1].details["image"] == "mlharbor/churn:1"
    assert events[-1].details["target"] == "kubernetes"
    build = run_cli("build", "churn@champion", "-o", str(tmp_path / "ctx"), "--dry-run",
                    "--build", env=env)
    assert build.returncode == 0 and "Dockerfile" in build.stdout
    assert not (tmp_path / "ctx").exists()
    missing = run_cli("deploy", "kubernetes", "churn:99", "-o", str(tmp_path / "x"), env=env)
    assert missing.returncode == 3 and len(missing.stderr.strip().splitlines()) == 1


def test_vertex_spec(deployed: Deployed, tmp_path: Path) -> None:
    image = "europe-docker.pkg.dev/p/r/churn:1"
    source = resolve_source(deployed.registry, "churn@champion", image)
    plan = VertexTarget().plan(source, VertexOptions(), tmp_path)
    model = json.loads(plan.file("model.json").content)
    spec = model["containerSpec"]
    assert spec["imageUri"] == "europe-docker.pkg.dev/p/r/churn:1"
    assert spec["ports"] == [{"containerPort": 8080}]
    # Vertex posts {"instances": [...]} to predictRoute: the KServe v1 route takes exactly that.
    assert spec["predictRoute"] == "/v1/models/churn:predict"
    assert spec["healthRoute"] == "/readyz"
    deploy = json.loads(plan.file("deploy-model.json").content)
    resources = deploy["deployedModel"]["dedicatedResources"]
    assert resources["minReplicaCount"] == 1 and resources["machineSpec"]["machineType"]
    assert deploy["trafficSplit"] == {"0": 100}
    assert json.loads(plan.file("endpoint.json").content)["displayName"] == "churn"
    with pytest.raises(InvalidInputError):
        VertexTarget().plan(source, VertexOptions(min_replicas=3, max_replicas=1), tmp_path)


def test_azureml_spec(deployed: Deployed, tmp_path: Path) -> None:
    source = resolve_source(deployed.registry, "churn@champion", "reg.azurecr.io/churn:1")
    plan = AzureMLTarget().plan(source, AzureMLOptions(), tmp_path)
    endpoint = yaml.safe_load(plan.file("endpoint.yaml").content)
    assert endpoint["name"] == "churn" and endpoint["auth_mode"] == "key"
    assert endpoint["$schema"].endswith("managedOnlineEndpoint.schema.json")
    dep = yaml.safe_load(plan.file("deployment.yaml").content)
    assert dep["$schema"].endswith("managedOnlineDeployment.schema.json")
    assert dep["endpoint_name"] == "churn" and dep["name"] == "blue"
    routes = dep["environment"]["inference_config"]
    assert routes["liveness_route"] == {"port": 8080, "path": "/livez"}
    assert routes["readiness_route"] == {"port": 8080, "path": "/readyz"}
    assert routes["scoring_route"] == {"port": 8080, "path": "/invocations"}
    assert dep["environment"]["image"] == "reg.azurecr.io/churn:1"
    # Azure ML authenticates callers itself: the container lets them predict without a key.
    assert dep["environment_variables"] == {
        "MLHARBOR_MODEL_REF": "churn@champion",
        "MLHARBOR_SECURITY__ANONYMOUS_GRANTS": '["predictor"]'}
    assert dep["instance_count"] == 1


def systemd_analyze() -> str:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    return exe


def test_systemd_unit_verifies_and_is_hardened(deployed: Deployed, tmp_path: Path) -> None:
    exe = systemd_analyze()
    source = resolve_source(deployed.registry, "churn@champion")
    options = SystemdOptions(replica_environment(deployed.settings, "baked"),
                             executable=str(Path(sys.executable).parent / "mlharbor"))
    result = SystemdTarget().deploy(source, options, output=tmp_path,
                                    registry=deployed.registry, actor="test")
    unit = tmp_path / "mlharbor-churn.service"
    assert unit in result.written
    text = unit.read_text()
    for line in ("NoNewPrivileges=yes", "ProtectSystem=strict", "CapabilityBoundingSet=",
                 "PrivateTmp=yes", "User=mlharbor", "StateDirectory=mlharbor/churn"):
        assert line in text.splitlines()
    assert "serve churn@champion --host 127.0.0.1 --port 8080" in text
    verified = subprocess.run([exe, "verify", str(unit)], capture_output=True, text=True,
                              check=False)
    assert verified.returncode == 0, verified.stderr
    assert verified.stderr.strip() == ""
    # Exposure 0 (locked down) .. 10 (unprotected); a hardened unit stays under 2.
    score = subprocess.run([exe, "security", "--offline=true", "--threshold=20", str(unit)],
                           capture_output=True, text=True, check=False)
    exposure = float(score.stdout.rsplit("exposure level for", 1)[1].split(":")[1].split()[0])
    assert exposure < 2.0, score.stdout[-400:]
    broken = tmp_path / "broken.service"
    broken.write_text(text.replace("ProtectSystem=", "ProtectSystm=").replace(
        options.executable, "/no/such/mlharbor"))
    failed = subprocess.run([exe, "verify", str(broken)], capture_output=True, text=True,
                            check=False)
    assert failed.returncode != 0 and "ProtectSystm" in failed.stderr
