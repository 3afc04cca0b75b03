"""The catalog of deploy targets, imported on first use; an unknown name lists the known ones."""

from __future__ import annotations

import importlib
from typing import Any

from mlharbor.core.errors import InvalidInputError
from mlharbor.deploy.base import Target

_TARGETS: dict[str, str] = {
    "kubernetes": "mlharbor.deploy.kubernetes:KubernetesTarget",
    "sagemaker": "mlharbor.deploy.sagemaker:SageMakerTarget",
    "lambda": "mlharbor.deploy.serverless:LambdaTarget",
    "azure-functions": "mlharbor.deploy.serverless:AzureFunctionsTarget",
    "cloud-run": "mlharbor.deploy.serverless:CloudRunTarget",
    "vertex": "mlharbor.deploy.cloud:VertexTarget",
    "azureml": "mlharbor.deploy.cloud:AzureMLTarget",
    "systemd": "mlharbor.deploy.systemd:SystemdTarget",
}


def known_targets() -> list[str]:
    return list(_TARGETS)


def get_target(name: str) -> Target[Any]:
    """The target called ``name``; an unknown name lists the known ones."""
    if name not in _TARGETS:
        raise InvalidInputError(
            f"Unknown deploy target {name!r}; known targets: {', '.join(_TARGETS)}.",
            hint="Run `mlharbor deploy --help` to see what each one does.",
            expected=list(_TARGETS), received=name,
        )
    module_name, cls_name = _TARGETS[name].split(":")
    target: Target[Any] = getattr(importlib.import_module(module_name), cls_name)()
    return target
