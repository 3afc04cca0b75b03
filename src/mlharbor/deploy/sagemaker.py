"""Amazon SageMaker real-time endpoint: bundle to S3, model, endpoint config, endpoint.

Every deployment creates a *new* model and endpoint config named after the version and a time
stamp, so nothing live is touched until the switch. An existing endpoint is switched with
``UpdateEndpoint`` (SageMaker's blue/green: the new fleet takes traffic once healthy, then the
old one is removed). Where the API does not implement ``UpdateEndpoint`` (emulators such as
moto), the endpoint is deleted and created again on the new config (``strategy: recreate``,
with a gap in service, said in the plan and the ledger). Once the endpoint is ``InService`` the
previous config and model are deleted. The image answers SageMaker's contract: ``serve``
argument, ``GET /ping`` and ``POST /invocations`` on port 8080.
"""

from __future__ import annotations

import dataclasses
import io
import tarfile
import time
import uuid
from typing import TYPE_CHECKING, Any

from mlharbor.core.clock import utcnow
from mlharbor.core.errors import InvalidInputError, TimeoutError_, UnavailableError
from mlharbor.deploy.base import Plan, PlannedResource, Target
from mlharbor.deploy.environment import MANAGED_ENDPOINT_AUTH

if TYPE_CHECKING:
    from mlharbor.registry.service import Registry

UNSUPPORTED = {"NotImplemented", "InternalFailure", "UnknownOperationException",
               "InvalidAction", "NotImplementedError", "500"}


@dataclasses.dataclass(frozen=True, slots=True)
class SageMakerOptions:
    registry: Registry
    role_arn: str
    bucket: str
    prefix: str = "mlharbor"
    endpoint_name: str | None = None
    instance_type: str = "ml.m5.large"
    instance_count: int = 1
    region: str = "us-east-1"
    endpoint_url: str | None = None
    s3_endpoint_url: str | None = None
    wait: bool = True
    timeout_s: float = 1800.0
    poll_s: float = 15.0


class SageMakerTarget(Target[SageMakerOptions]):
    name = "sagemaker"
    summary = ("Amazon SageMaker real-time endpoint: uploads the bundle to S3, creates the "
               "model and endpoint config, then creates or updates (blue/green) the endpoint.")
    writes_files = False

    def _plan(self, plan: Plan, options: SageMakerOptions) -> None:
        if not options.role_arn.startswith("arn:"):
            raise InvalidInputError(
                f"--role-arn must be an IAM role ARN; received {options.role_arn!r}.",
                field="role_arn", expected="arn:aws:iam::<account>:role/<name>")
        if options.instance_count < 1:
            raise InvalidInputError("--instance-count must be at least 1.",
                                    field="instance_count")
        source = plan.source
        names = resource_names(plan, options)
        plan.resources += [
            PlannedResource("s3 object", names["data"], "upload", "the bundle as model.tar.gz"),
            PlannedResource("sagemaker model", names["model"], detail=source.image),
            PlannedResource("endpoint config", names["config"],
                            detail=f"{options.instance_count} x {options.instance_type}"),
            PlannedResource("endpoint", names["endpoint"], "deploy",
                            "created, or updated blue/green when it exists"),
        ]
        plan.notes.append("after the endpoint is InService the previous config and model "
                          "are deleted")
        plan.details = {"endpoint": names["endpoint"], "model_name": names["model"],
                        "endpoint_config": names["config"], "model_data": names["data"]}

    def _apply(self, plan: Plan, options: SageMakerOptions) -> dict[str, Any]:
        names = plan.details
        sm, s3 = _clients(options)
        _upload_bundle(s3, options, plan, names["model_data"])
        source = plan.source
        _call(sm.create_model, ModelName=names["model_name"],
              ExecutionRoleArn=options.role_arn,
              PrimaryContainer={
                  "Image": source.image, "ModelDataUrl": names["model_data"],
                  "Environment": {"MLHARBOR_MODEL_REF": source.ref,
                                  "MLHARBOR_HOME": "/tmp/mlharbor",
                                  **MANAGED_ENDPOINT_AUTH}},
              Tags=[{"Key": "mlharbor:model", "Value": source.model},
                    {"Key": "mlharbor:version", "Value": str(source.number)}])
        _call(sm.create_endpoint_config, EndpointConfigName=names["endpoint_config"],
              ProductionVariants=[{
                  "VariantName": "AllTraffic", "ModelName": names["model_name"],
                  "InitialInstanceCount": options.instance_count,
                  "InstanceType": options.instance_type, "InitialVariantWeight": 1.0}])
        endpoint = names["endpoint"]
        previous = _current_config(sm, endpoint)
        if previous is None:
            strategy = "create"
            _call(sm.create_endpoint, EndpointName=endpoint,
                  EndpointConfigName=names["endpoint_config"])
        else:
            strategy = _switch(sm, endpoint, names["endpoint_config"])
        status = _wait(sm, endpoint, options) if options.wait else "Creating"
        if previous is not None and status == "InService":
            _retire(sm, previous)
        return {"strategy": strategy, "status": status, "previous_config": previous}


def resource_names(plan: Plan, options: SageMakerOptions) -> dict[str, str]:
    source = plan.source
    # Unique per deployment (SageMaker refuses a second model or config of the same name).
    stamp = f"{utcnow():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:4]}"
    base = f"{source.slug[:30]}-v{source.number}-{stamp}"
    key = f"{options.prefix.strip('/')}/{source.model}/{source.number}/model.tar.gz"
    return {"model": base, "config": base, "endpoint": options.endpoint_name or source.slug,
            "data": f"s3://{options.bucket}/{key}"}


def _clients(options: SageMakerOptions) -> tuple[Any, Any]:
    import boto3

    session = boto3.session.Session(region_name=options.region)
    return (session.client("sagemaker", endpoint_url=options.endpoint_url),
            session.client("s3", endpoint_url=options.s3_endpoint_url or options.endpoint_url))


def _upload_bundle(s3: Any, options: SageMakerOptions, plan: Plan, url: str) -> None:
    folder = options.registry.download(plan.source.version)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for f in plan.source.version.files:
            tar.add(folder / f.path, arcname=f.path)
    key = url.split("/", 3)[3]
    _call(s3.put_object, Bucket=options.bucket, Key=key, Body=buffer.getvalue(),
          Metadata={"mlharbor-version": plan.source.version.ref})


def _current_config(sm: Any, endpoint: str) -> str | None:
    from botocore.exceptions import ClientError

    try:
        found = sm.describe_endpoint(EndpointName=endpoint)
    except ClientError as exc:
        if _code(exc) in ("ValidationException", "ResourceNotFound"):
            return None
        raise UnavailableError(f"Describing endpoint {endpoint!r} failed: {exc}") from exc
    return str(found["EndpointConfigName"])


def _switch(sm: Any, endpoint: str, config: str) -> str:
    """Blue/green with UpdateEndpoint; recreate where the API lacks it."""
    from botocore.exceptions import ClientError

    try:
        sm.update_endpoint(EndpointName=endpoint, EndpointConfigName=config)
        return "blue-green"
    except ClientError as exc:
        status = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        if _code(exc) not in UNSUPPORTED and status not in ("500", "501"):
            raise UnavailableError(f"Updating endpoint {endpoint!r} failed: {exc}") from exc
    # This SageMaker API (an emulator) cannot update in place: delete, then create again.
    _call(sm.delete_endpoint, EndpointName=endpoint)
    _call(sm.create_endpoint, EndpointName=endpoint, EndpointConfigName=config)
    return "recreate"


def _wait(sm: Any, endpoint: str, options: SageMakerOptions) -> str:
    deadline = time.monotonic() + options.timeout_s
    while True:
        found = _call(sm.describe_endpoint, EndpointName=endpoint)
        status = str(found["EndpointStatus"])
        if status == "InService":
            return status
        if status in ("Failed", "OutOfService"):
            raise UnavailableError(
                f"Endpoint {endpoint!r} is {status}: {found.get('FailureReason', 'no reason')}.",
                hint="Check the endpoint's CloudWatch logs (/aws/sagemaker/Endpoints/...).")
        if time.monotonic() > deadline:
            raise TimeoutError_(f"Endpoint {endpoint!r} is still {status} after "
                                f"{options.timeout_s:.0f} s.", hint="Run again with --no-wait "
                                "and check it later, or raise --timeout.")
        time.sleep(options.poll_s)


def _retire(sm: Any, config: str) -> None:
    """Delete the previous endpoint config and its models (best effort: they are idle)."""
    from botocore.exceptions import ClientError

    try:
        found = sm.describe_endpoint_config(EndpointConfigName=config)
        sm.delete_endpoint_config(EndpointConfigName=config)
        for variant in found.get("ProductionVariants", []):
            sm.delete_model(ModelName=variant["ModelName"])
    except ClientError:
        return


def _call(fn: Any, **kwargs: Any) -> Any:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return fn(**kwargs)
    except (ClientError, BotoCoreError) as exc:
        name = getattr(fn, "__name__", "call")
        raise UnavailableError(f"SageMaker/S3 {name} failed: {exc}",
                               hint="Check the AWS credentials, region and role.") from exc


def _code(exc: Any) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))
