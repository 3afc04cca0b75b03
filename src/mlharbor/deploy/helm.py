"""The Helm chart of a Kubernetes deployment: the plain manifests with ``.Values`` in them.

Templates are rendered from the same Jinja templates as the plain manifests, with each tunable
value replaced by a Helm expression, so ``helm template`` with the default ``values.yaml`` gives
back exactly the plain manifests.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mlharbor.deploy.base import PlannedFile
from mlharbor.deploy.rendering import render, yaml_document

if TYPE_CHECKING:
    from mlharbor.deploy.base import DeploymentSource
    from mlharbor.deploy.kubernetes import KubernetesOptions


def chart_files(source: DeploymentSource, options: KubernetesOptions,
                context: dict[str, Any]) -> list[PlannedFile]:
    from mlharbor.deploy.kubernetes import helm_context, helm_values, plain_kinds

    root = f"chart/{context['name']}"
    chart = {
        "apiVersion": "v2",
        "name": context["name"],
        "description": f"mlharbor model server for {source.model} version {source.number}",
        "type": "application",
        "version": f"0.1.{source.number}",
        "appVersion": str(source.number),
    }
    files = [
        PlannedFile(f"{root}/Chart.yaml", yaml_document(chart)),
        PlannedFile(f"{root}/values.yaml", yaml_document(helm_values(context))),
    ]
    templated = helm_context(context)
    files += [PlannedFile(f"{root}/templates/{kind}.yaml",
                          render(f"kubernetes/{kind}.yaml.j2", **templated))
              for kind in plain_kinds(options)]
    return files
