"""Serverless targets: AWS Lambda (SAM), Azure Functions (Python v2 model) and Google Cloud Run.

Lambda and Cloud Run run the image ``mlharbor build`` makes (Lambda with the ``aws-lambda``
extra, which adds the runtime interface client); the Azure Functions app is a folder of Python
files whose handler lives in :mod:`mlharbor.deploy.handlers.azure_functions`.
"""

from __future__ import annotations

import dataclasses
import json
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlharbor.core.errors import InvalidInputError
from mlharbor.deploy.base import Plan, PlannedFile, PlannedResource, Target
from mlharbor.deploy.environment import PORT, ReplicaEnvironment
from mlharbor.deploy.rendering import render, template_text

if TYPE_CHECKING:
    from mlharbor.registry.service import Registry


@dataclasses.dataclass(frozen=True, slots=True)
class LambdaOptions:
    memory: int = 2048
    timeout: int = 30


class LambdaTarget(Target[LambdaOptions]):
    name = "lambda"
    summary = ("AWS Lambda container image behind API Gateway (REST and HTTP APIs) and a "
               "function URL, as a SAM template (sam deploy).")

    def _plan(self, plan: Plan, options: LambdaOptions) -> None:
        if not 512 <= options.memory <= 10240 or not 1 <= options.timeout <= 900:
            raise InvalidInputError(
                f"Lambda takes 512..10240 MB and 1..900 s; received {options.memory} MB and "
                f"{options.timeout} s.", field="memory")
        source = plan.source
        environment = {"MLHARBOR_MODEL_REF": source.ref, "MLHARBOR_HOME": "/tmp/mlharbor"}
        plan.files.append(PlannedFile("template.yaml", render(
            "serverless/sam.yaml.j2", ref=source.ref, version_ref=source.version.ref,
            image=source.image, memory=options.memory, timeout=options.timeout,
            environment=environment)))
        plan.notes.append(f"build the image with `mlharbor build {source.ref} --extra "
                          "aws-lambda --build --tag <ECR URI>`, push it, then `sam deploy "
                          "--parameter-overrides ImageUri=<ECR URI>`")
        plan.details = {"memory": options.memory}


@dataclasses.dataclass(frozen=True, slots=True)
class AzureFunctionsOptions:
    environment: ReplicaEnvironment
    bake_from: Registry | None = None
    actor: str = "local"


class AzureFunctionsTarget(Target[AzureFunctionsOptions]):
    name = "azure-functions"
    summary = ("Azure Functions app (Python v2 programming model, HTTP triggers /api/predict, "
               "/api/score, /api/health) to publish with `func azure functionapp publish`.")

    def _plan(self, plan: Plan, options: AzureFunctionsOptions) -> None:
        source = plan.source
        version = metadata.version("mlharbor")
        requirement = f"mlharbor=={version}"
        settings = {"MLHARBOR_MODEL_REF": source.ref, "FUNCTIONS_WORKER_RUNTIME": "python",
                    **{k: v for k, v in options.environment.config.items()
                       if not k.startswith("MLHARBOR_SERVER__") and k != "MLHARBOR_HOME"}}
        for ref in options.environment.secrets:
            settings[ref.env] = f"@Microsoft.KeyVault(SecretUri=<vault>/secrets/{ref.key})"
        plan.files += [
            PlannedFile("function_app.py", template_text("serverless/function_app.py")),
            PlannedFile("host.json", template_text("serverless/host.json")),
            PlannedFile("requirements.txt", f"azure-functions\n{requirement}\n"),
            PlannedFile(".funcignore", template_text("serverless/funcignore")),
            PlannedFile("app-settings.json", json.dumps(settings, indent=2) + "\n"),
        ]
        if options.bake_from is not None:
            plan.resources.append(PlannedResource("folder", "model/", "write",
                                                  f"a registry holding only {source.version.ref}"))
        plan.notes.append("app-settings.json lists the application settings; secrets are Key "
                          "Vault references to fill in, never values")
        plan.details = {"baked": options.bake_from is not None}

    def _apply(self, plan: Plan, options: AzureFunctionsOptions) -> dict[str, Any]:
        if options.bake_from is None or plan.output is None:
            return {}
        from mlharbor.deploy.bake import bake_version

        model = Path(plan.output) / "model"
        if model.exists():
            import shutil

            shutil.rmtree(model)
        bake_version(options.bake_from, plan.source.version, model, actor=options.actor)
        return {"baked": True}


@dataclasses.dataclass(frozen=True, slots=True)
class CloudRunOptions:
    environment: ReplicaEnvironment
    min_instances: int = 0
    max_instances: int = 10
    concurrency: int = 80
    cpu: str = "1"
    memory: str = "2Gi"


class CloudRunTarget(Target[CloudRunOptions]):
    name = "cloud-run"
    summary = ("Google Cloud Run service definition (Knative serving API) running the image; "
               "`gcloud run services replace service.yaml`.")

    def _plan(self, plan: Plan, options: CloudRunOptions) -> None:
        if not 0 <= options.min_instances <= options.max_instances or options.max_instances < 1:
            raise InvalidInputError(
                f"Instances must satisfy 0 <= min ({options.min_instances}) <= max "
                f"({options.max_instances}), max >= 1.", field="min_instances")
        source = plan.source
        # Cloud Run sets PORT itself and forbids setting it; the entrypoint reads it.
        environment = {k: v for k, v in options.environment.config.items()
                       if k != "MLHARBOR_SERVER__PORT"}
        labels = {"mlharbor-model": source.slug, "mlharbor-version": str(source.number)}
        plan.files.append(PlannedFile("service.yaml", render(
            "serverless/cloudrun.yaml.j2", name=source.slug, labels=labels, image=source.image,
            port=PORT, environment=environment, secrets=list(options.environment.secrets),
            min_instances=options.min_instances, max_instances=options.max_instances,
            concurrency=options.concurrency, cpu=options.cpu, memory=options.memory)))
        plan.notes.append("secrets come from Secret Manager secrets named "
                          f"{source.slug}-<key> (version 'latest')")
        plan.details = {"min_instances": options.min_instances}
