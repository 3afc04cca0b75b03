"""Managed cloud endpoints described as files: Vertex AI and Azure ML online endpoints.

Both run the image as a custom container. Vertex AI sends ``{"instances": [...]}`` to the
container's predict route and expects ``{"predictions": [...]}``: that is the KServe v1 route
``/v1/models/<name>:predict``, which the server answers natively; ``AIP_HTTP_PORT`` is honoured
by the image's entrypoint. Azure ML probes and scores through the routes named in the
deployment's ``inference_config`` (``/livez``, ``/readyz``, ``/invocations``).
"""

from __future__ import annotations

import dataclasses
import json

from mlharbor.core.errors import InvalidInputError
from mlharbor.deploy.base import Plan, PlannedFile, Target
from mlharbor.deploy.environment import MANAGED_ENDPOINT_AUTH, PORT
from mlharbor.deploy.rendering import render


@dataclasses.dataclass(frozen=True, slots=True)
class VertexOptions:
    machine_type: str = "n1-standard-2"
    min_replicas: int = 1
    max_replicas: int = 3
    endpoint_name: str | None = None


class VertexTarget(Target[VertexOptions]):
    name = "vertex"
    summary = ("Vertex AI: model upload spec (custom container) and the endpoint and "
               "deployment requests (`gcloud ai models upload` / `endpoints deploy-model`).")

    def _plan(self, plan: Plan, options: VertexOptions) -> None:
        if not 1 <= options.min_replicas <= options.max_replicas:
            raise InvalidInputError(
                f"Replicas must satisfy 1 <= min ({options.min_replicas}) <= max "
                f"({options.max_replicas}).", field="min_replicas")
        source = plan.source
        labels = {"mlharbor-model": source.slug, "mlharbor-version": str(source.number)}
        model = {
            "displayName": f"{source.slug}-v{source.number}",
            "description": f"mlharbor model server for {source.ref} ({source.version.ref})",
            "labels": labels,
            "containerSpec": {
                "imageUri": source.image,
                "args": ["serve"],
                "env": [{"name": "MLHARBOR_MODEL_REF", "value": source.ref},
                        *({"name": k, "value": v} for k, v in MANAGED_ENDPOINT_AUTH.items())],
                "ports": [{"containerPort": PORT}],
                "predictRoute": f"/v1/models/{source.model}:predict",
                "healthRoute": "/readyz",
            },
        }
        endpoint = {"displayName": options.endpoint_name or source.slug, "labels": labels}
        deployment = {
            "deployedModel": {
                "model": "projects/PROJECT/locations/REGION/models/MODEL_ID",
                "displayName": f"{source.slug}-v{source.number}",
                "dedicatedResources": {
                    "machineSpec": {"machineType": options.machine_type},
                    "minReplicaCount": options.min_replicas,
                    "maxReplicaCount": options.max_replicas,
                },
            },
            "trafficSplit": {"0": 100},
        }
        plan.files += [PlannedFile("model.json", _json(model)),
                       PlannedFile("endpoint.json", _json(endpoint)),
                       PlannedFile("deploy-model.json", _json(deployment))]
        plan.notes.append("deploy-model.json names the uploaded model as MODEL_ID: fill in the "
                          "id `gcloud ai models upload` returns")


@dataclasses.dataclass(frozen=True, slots=True)
class AzureMLOptions:
    instance_type: str = "Standard_DS3_v2"
    instance_count: int = 1
    endpoint_name: str | None = None
    deployment_name: str = "blue"


class AzureMLTarget(Target[AzureMLOptions]):
    name = "azureml"
    summary = ("Azure ML managed online endpoint and deployment YAML for the image "
               "(`az ml online-endpoint create` / `online-deployment create`).")

    def _plan(self, plan: Plan, options: AzureMLOptions) -> None:
        if options.instance_count < 1:
            raise InvalidInputError("--instance-count must be at least 1.",
                                    field="instance_count")
        source = plan.source
        endpoint = options.endpoint_name or source.slug
        tags = {"mlharbor-model": source.model, "mlharbor-version": str(source.number)}
        context = {"endpoint": endpoint, "deployment": options.deployment_name,
                   "ref": source.ref, "version_ref": source.version.ref,
                   "version": source.number, "image": source.image, "port": PORT,
                   "environment": {"MLHARBOR_MODEL_REF": source.ref,
                                   **MANAGED_ENDPOINT_AUTH},
                   "instance_type": options.instance_type,
                   "instance_count": options.instance_count, "tags": tags}
        plan.files += [
            PlannedFile("endpoint.yaml", render("cloud/azureml-endpoint.yaml.j2", **context)),
            PlannedFile("deployment.yaml", render("cloud/azureml-deployment.yaml.j2",
                                                  **context)),
        ]
        plan.notes.append(f"switch traffic once healthy: az ml online-endpoint update "
                          f"--name {endpoint} --traffic '{options.deployment_name}=100'")


def _json(data: object) -> str:
    return json.dumps(data, indent=2) + "\n"
