"""SageMaker against moto's server on loopback: create, then switch to a new version."""

from __future__ import annotations

import dataclasses
import io
import tarfile
from pathlib import Path
from typing import Any

import pytest

from mlharbor.core.errors import InvalidInputError, UnavailableError
from mlharbor.deploy.base import resolve_source
from mlharbor.deploy.catalog import get_target
from mlharbor.deploy.sagemaker import SageMakerOptions
from tests.deploy.conftest import Deployed

pytestmark = pytest.mark.s3
ROLE = "arn:aws:iam::123456789012:role/sagemaker-execution"


def options(deployed: Deployed, moto_server: str, bucket: str, **extra: Any) -> SageMakerOptions:
    return SageMakerOptions(registry=deployed.registry, role_arn=ROLE, bucket=bucket,
                            endpoint_url=moto_server, endpoint_name=extra.pop("name", "churn"),
                            poll_s=0.05, timeout_s=10, **extra)


def test_sagemaker_creates_then_switches_and_retires_the_old_config(
        deployed: Deployed, moto_server: str, s3_bucket: str, tmp_path: Path) -> None:
    import boto3

    target = get_target("sagemaker")
    sm = boto3.client("sagemaker", endpoint_url=moto_server, region_name="us-east-1")
    s3 = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    name = f"churn-{s3_bucket[-8:]}"
    source = resolve_source(deployed.registry, "churn@champion",
                            "123456789012.dkr.ecr.us-east-1.amazonaws.com/churn:1")
    opts = options(deployed, moto_server, s3_bucket, name=name)

    dry = target.deploy(source, opts, output=None, registry=deployed.registry, actor="t",
                        dry_run=True)
    assert [r.kind for r in dry.plan.resources] == ["s3 object", "sagemaker model",
                                                    "endpoint config", "endpoint"]
    with pytest.raises(Exception, match=r"ValidationException|Could not find"):
        sm.describe_endpoint(EndpointName=name)  # the dry run created nothing

    first = target.deploy(source, opts, output=None, registry=deployed.registry, actor="t")
    assert first.applied["strategy"] == "create" and first.applied["status"] == "InService"
    endpoint = sm.describe_endpoint(EndpointName=name)
    assert endpoint["EndpointStatus"] == "InService"
    first_config = endpoint["EndpointConfigName"]
    model = sm.describe_model(ModelName=first.plan.details["model_name"])
    assert model["PrimaryContainer"]["Image"] == source.image
    assert model["PrimaryContainer"]["Environment"]["MLHARBOR_MODEL_REF"] == "churn@champion"
    # SageMaker authenticates callers itself (IAM): no mlharbor key on /invocations.
    assert model["PrimaryContainer"]["Environment"][
        "MLHARBOR_SECURITY__ANONYMOUS_GRANTS"] == '["predictor"]'

    key = first.plan.details["model_data"].split("/", 3)[3]
    blob = s3.get_object(Bucket=s3_bucket, Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        assert sorted(tar.getnames()) == sorted(f.path for f in deployed.version.files)

    second = target.deploy(source, opts, output=None, registry=deployed.registry, actor="t")
    # moto does not implement UpdateEndpoint: the clear fallback is to recreate it.
    assert second.applied["strategy"] in ("blue-green", "recreate")
    assert second.applied["previous_config"] == first_config
    now = sm.describe_endpoint(EndpointName=name)
    assert now["EndpointStatus"] == "InService"
    assert now["EndpointConfigName"] == second.plan.details["endpoint_config"] != first_config
    configs = {c["EndpointConfigName"] for c in sm.list_endpoint_configs()["EndpointConfigs"]}
    assert first_config not in configs and now["EndpointConfigName"] in configs

    events = [e for e in deployed.registry.store.iter_audit()
              if e.action == "deploy.sagemaker" and e.details.get("endpoint") == name]
    assert [e.outcome for e in events] == ["success", "success"]
    assert events[-1].details["strategy"] == second.applied["strategy"]
    assert events[-1].details["image"] == source.image


def test_sagemaker_refuses_a_bad_role_and_records_failures(
        deployed: Deployed, moto_server: str, s3_bucket: str) -> None:
    target = get_target("sagemaker")
    source = resolve_source(deployed.registry, "churn@champion")
    bad = options(deployed, moto_server, s3_bucket)
    with pytest.raises(InvalidInputError, match="role"):
        target.plan(source, SageMakerOptions(registry=deployed.registry, role_arn="admin",
                                             bucket=s3_bucket), None)
    missing_bucket = dataclasses.replace(bad, bucket="no-such-bucket-anywhere")
    with pytest.raises(UnavailableError, match=r"NoSuchBucket|failed"):
        target.deploy(source, missing_bucket, output=None, registry=deployed.registry,
                      actor="t")
    failures = [e for e in deployed.registry.store.iter_audit()
                if e.action == "deploy.sagemaker" and e.outcome == "failure"]
    assert failures and failures[-1].details["error"] == "unavailable"
