"""``mlharbor deploy TARGET REF``: one command per deploy target, each with ``--dry-run``.

Every command resolves REF in the registry, plans what the target creates (files under
``--output``, remote resources), prints the plan, and unless ``--dry-run`` writes, applies and
records the deployment in the audit ledger as ``deploy.<target>``. A dry run needs no
``--output``: it lists the files by their paths inside the folder a real run would fill.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

REF_HELP = "Model version to deploy: churn:3, churn@champion."
OUTPUT_HELP = "Folder for the generated files (not needed with --dry-run)."
IMAGE_HELP = "Image serving the version (default mlharbor/<model>:<version>, from mlharbor build)."
DRY_RUN_HELP = "Print what would be created; change nothing."
MODE_HELP = ("Registry the replicas read: 'baked' (the image's own), 'shared' (the team's "
             "PostgreSQL + S3 from the current settings); default shared when possible.")


def register(app: typer.Typer) -> None:
    deploy = typer.Typer(name="deploy", no_args_is_help=True, rich_markup_mode=None,
                         help="Deploy a model version to a platform (each target explains "
                         "itself with --help; --dry-run prints the plan).")
    app.add_typer(deploy)

    @deploy.command("kubernetes")
    def kubernetes(
        ctx: typer.Context, ref: str = typer.Argument(..., help=REF_HELP),
        output: Path | None = typer.Option(None, "--output", "-o", help=OUTPUT_HELP,
                                           show_default=False),
        image: str = typer.Option(None, help=IMAGE_HELP),
        helm: bool = typer.Option(False, "--helm", help="Write a Helm chart."),
        kserve: bool = typer.Option(False, "--kserve", help="Write a KServe InferenceService "
                                    "(the image as a custom predictor)."),
        knative: bool = typer.Option(False, "--knative", help="Write a Knative Service that "
                                     "scales to zero."),
        apply: bool = typer.Option(False, "--apply", help="Apply to the configured cluster "
                                   "(kubeconfig or in-cluster)."),
        namespace: str = typer.Option("default", help="Namespace for --apply."),
        replicas: int = typer.Option(2, help="Replicas at start."),
        min_replicas: int = typer.Option(2, help="Autoscaling minimum."),
        max_replicas: int = typer.Option(10, help="Autoscaling maximum."),
        target_cpu: int = typer.Option(70, help="Autoscaling CPU target (percent)."),
        autoscaler: str = typer.Option(
            "cpu", help="cpu (HPA on CPU), in-flight (HPA on the Pods metric "
            "mlharbor_in_flight_requests) or keda (KEDA ScaledObject on the same metric; "
            "--min-replicas 0 scales to zero)."),
        target_in_flight: int = typer.Option(
            8, help="Prediction requests in flight per replica to scale at (in-flight, keda)."),
        prometheus_url: str = typer.Option(
            "http://prometheus-server.monitoring.svc:80", help="Prometheus KEDA queries."),
        registry_mode: str = typer.Option(None, "--registry", help=MODE_HELP),
        dry_run: bool = typer.Option(False, "--dry-run", help=DRY_RUN_HELP),
    ) -> None:
        """Kubernetes manifests (Deployment with /livez and /readyz probes, Service, HPA,
        PodDisruptionBudget, ConfigMap, Secret references), or --helm / --kserve / --knative."""
        from mlharbor.deploy.kubernetes import KubernetesOptions

        settings = _settings(ctx)
        options = KubernetesOptions(
            _environment(settings, registry_mode), replicas=replicas,
            min_replicas=min_replicas, max_replicas=max_replicas, target_cpu=target_cpu,
            helm=helm, kserve=kserve, knative=knative, apply=apply, namespace=namespace,
            autoscaler=autoscaler, target_in_flight=target_in_flight,
            prometheus_url=prometheus_url)
        _run(ctx, "kubernetes", ref, image, output, options, dry_run)

    @deploy.command("sagemaker")
    def sagemaker(
        ctx: typer.Context, ref: str = typer.Argument(..., help=REF_HELP),
        role_arn: str = typer.Option(..., help="IAM role SageMaker assumes."),
        bucket: str = typer.Option(..., help="S3 bucket receiving the bundle."),
        prefix: str = typer.Option("mlharbor", help="Key prefix in the bucket."),
        image: str = typer.Option(None, help=IMAGE_HELP + " Must be in ECR."),
        endpoint_name: str = typer.Option(None, help="Endpoint name (default: the model)."),
        instance_type: str = typer.Option("ml.m5.large"),
        instance_count: int = typer.Option(1),
        region: str = typer.Option(None, help="AWS region (default from settings)."),
        endpoint_url: str = typer.Option(None, help="SageMaker API endpoint (emulators)."),
        wait: bool = typer.Option(True, "--wait/--no-wait", help="Wait until InService."),
        timeout: float = typer.Option(1800, help="Seconds to wait for InService."),
        dry_run: bool = typer.Option(False, "--dry-run", help=DRY_RUN_HELP),
    ) -> None:
        """Amazon SageMaker endpoint: bundle to S3, model, endpoint config, endpoint (created,
        or updated blue/green), waiting until InService."""
        from mlharbor.deploy.sagemaker import SageMakerOptions

        settings = _settings(ctx)
        with _registry(ctx) as registry:
            options = SageMakerOptions(
                registry=registry, role_arn=role_arn, bucket=bucket, prefix=prefix,
                endpoint_name=endpoint_name, instance_type=instance_type,
                instance_count=instance_count, region=region or settings.s3_region,
                endpoint_url=endpoint_url, s3_endpoint_url=settings.s3_endpoint_url,
                wait=wait, timeout_s=timeout)
            _run(ctx, "sagemaker", ref, image, None, options, dry_run, registry=registry)

    @deploy.command("lambda")
    def aws_lambda(
        ctx: typer.Context, ref: str = typer.Argument(..., help=REF_HELP),
        output: Path | None = typer.Option(None, "--output", "-o", help=OUTPUT_HELP,
                                           show_default=False),
        image: str = typer.Option(None, help=IMAGE_HELP + " Must be in ECR."),
        memory: int = typer.Option(2048, help="Function memory (MB)."),
        timeout: int = typer.Option(30, help="Function timeout (s)."),
        dry_run: bool = typer.Option(False, "--dry-run", help=DRY_RUN_HELP),
    ) -> None:
        """AWS Lambda container image behind API Gateway REST and HTTP APIs and a function
        URL, as a SAM template (validated with cfn-lint)."""
        from mlharbor.deploy.serverless import LambdaOptions

        _run(ctx, "lambda", ref, image, output, LambdaOptions(memory, timeout), dry_run)

    @deploy.command("azure-functions")
    def azure_functions(
        ctx: typer.Context, ref: str = typer.Argument(..., help=REF_HELP),
        output: Path | None = typer.Option(None, "--output", "-o", help=OUTPUT_HELP,
                                           show_default=False),
        bake: bool = typer.Option(True, "--bake/--no-bake", help="Ship the model in the app "
                                  "folder (default), or read the shared registry."),
        registry_mode: str = typer.Option(None, "--registry", help=MODE_HELP),
        dry_run: bool = typer.Option(False, "--dry-run", help=DRY_RUN_HELP),
    ) -> None:
        """Azure Functions app (Python v2 programming model): HTTP triggers /api/predict,
        /api/score and /api/health."""
        from mlharbor.cli.admin import cli_actor
        from mlharbor.deploy.serverless import AzureFunctionsOptions

        settings = _settings(ctx)
        environment = _environment(settings, registry_mode or ("baked" if bake else None))
        with _registry(ctx) as registry:
            options = AzureFunctionsOptions(environment, registry if bake else None,
                                            cli_actor())
            _run(ctx, "azure-functions", ref, None, output, options, dry_run,
                 registry=registry)

    @deploy.command("cloud-run")
    def cloud_run(
        ctx: typer.Context, ref: str = typer.Argument(..., help=REF_HELP),
        output: Path | None = typer.Option(None, "--output", "-o", help=OUTPUT_HELP,
                                           show_default=False),
        image: str = typer.Option(None, help=IMAGE_HELP + " Must be in Artifact Registry."),
        min_instances: int = typer.Option(0, help="0 scales to zero."),
        max_instances: int = typer.Option(10),
        registry_mode: str = typer.Option(None, "--registry", help=MODE_HELP),
        dry_run: bool = typer.Option(False, "--dry-run", help=DRY_RUN_HELP),
    ) -> None:
        """Google Cloud Run service definition (Knative serving API) for the image."""
        from mlharbor.deploy.serverless import CloudRunOptions

        options = CloudRunOptions(_environment(_settings(ctx), registry_mode),
                                  min_instances=min_instances, max_instances=max_instances)
        _run(ctx, "cloud-run", ref, image, output, options, dry_run)

    @deploy.command("vertex")
    def vertex(
        ctx: typer.Context, ref: str = typer.Argument(..., help=REF_HELP),
        output: Path | None = typer.Option(None, "--output", "-o", help=OUTPUT_HELP,
                                           show_default=False),
        image: str = typer.Option(None, help=IMAGE_HELP),
        machine_type: str = typer.Option("n1-standard-2"),
        min_replicas: int = typer.Option(1), max_replicas: int = typer.Option(3),
        dry_run: bool = typer.Option(False, "--dry-run", help=DRY_RUN_HELP),
    ) -> None:
        """Vertex AI model upload spec (custom container) and endpoint deployment request."""
        from mlharbor.deploy.cloud import VertexOptions

        _run(ctx, "vertex", ref, image, output,
             VertexOptions(machine_type, min_replicas, max_replicas), dry_run)

    @deploy.command("azureml")
    def azureml(
        ctx: typer.Context, ref: str = typer.Argument(..., help=REF_HELP),
        output: Path | None = typer.Option(None, "--output", "-o", help=OUTPUT_HELP,
                                           show_default=False),
        image: str = typer.Option(None, help=IMAGE_HELP),
        instance_type: str = typer.Option("Standard_DS3_v2"),
        instance_count: int = typer.Option(1),
        dry_run: bool = typer.Option(False, "--dry-run", help=DRY_RUN_HELP),
    ) -> None:
        """Azure ML managed online endpoint and deployment YAML for the image."""
        from mlharbor.deploy.cloud import AzureMLOptions

        _run(ctx, "azureml", ref, image, output, AzureMLOptions(instance_type, instance_count),
             dry_run)

    @deploy.command("systemd")
    def systemd(
        ctx: typer.Context, ref: str = typer.Argument(..., help=REF_HELP),
        output: Path | None = typer.Option(None, "--output", "-o", help=OUTPUT_HELP,
                                           show_default=False),
        executable: str = typer.Option("/opt/mlharbor/venv/bin/mlharbor",
                                       help="Absolute path of the mlharbor command."),
        user: str = typer.Option("mlharbor", help="System user running the server."),
        host: str = typer.Option("127.0.0.1"), port: int = typer.Option(8080),
        workers: int = typer.Option(None, help="Server worker processes."),
        tls_cert: Path = typer.Option(None, help="PEM certificate for HTTPS."),
        tls_key: Path = typer.Option(None, help="PEM private key for HTTPS."),
        registry_mode: str = typer.Option("baked", "--registry", help=MODE_HELP),
        dry_run: bool = typer.Option(False, "--dry-run", help=DRY_RUN_HELP),
    ) -> None:
        """A hardened systemd unit running `mlharbor serve REF` on this host."""
        from mlharbor.deploy.systemd import SystemdOptions

        options = SystemdOptions(_environment(_settings(ctx), registry_mode), executable,
                                 user, host, port, workers, tls_cert, tls_key)
        _run(ctx, "systemd", ref, None, output, options, dry_run)


def _settings(ctx: typer.Context) -> Any:
    from mlharbor.cli.main import settings_from

    return settings_from(ctx)


def _environment(settings: Any, mode: str | None) -> Any:
    from mlharbor.core.errors import InvalidInputError
    from mlharbor.deploy.environment import replica_environment

    if mode not in (None, "baked", "shared"):
        raise InvalidInputError(f"--registry must be 'baked' or 'shared'; received {mode!r}.",
                                field="registry", expected=["baked", "shared"], received=mode)
    return replica_environment(settings, mode)  # type: ignore[arg-type]


class _registry:
    """The registry, opened once per command and closed after it."""

    def __init__(self, ctx: typer.Context) -> None:
        self.ctx = ctx
        self.registry: Any = None

    def __enter__(self) -> Any:
        from mlharbor.bootstrap import open_registry

        self.registry = open_registry(_settings(self.ctx))
        return self.registry

    def __exit__(self, *exc: object) -> None:
        self.registry.close()


def _run(ctx: typer.Context, target_name: str, ref: str, image: str | None,
         output: Path | None, options: Any, dry_run: bool, registry: Any = None) -> None:
    if registry is None:
        with _registry(ctx) as opened:
            _run(ctx, target_name, ref, image, output, options, dry_run, opened)
        return
    from mlharbor.cli.admin import cli_actor
    from mlharbor.deploy.base import resolve_source
    from mlharbor.deploy.catalog import get_target

    target = get_target(target_name)
    source = resolve_source(registry, ref, image)
    result = target.deploy(source, options, output=output, registry=registry,
                           actor=cli_actor(), dry_run=dry_run)
    for line in result.plan.describe():
        typer.echo(line)
    if dry_run:
        if output is None and result.plan.files:
            typer.echo("  note   the files go under the --output folder of a real run")
        typer.echo("dry run: nothing was written or created")
    elif result.applied:
        typer.echo(f"done: {', '.join(f'{k}={v}' for k, v in result.applied.items())}")
