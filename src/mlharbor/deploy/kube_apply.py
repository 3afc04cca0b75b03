"""Applying rendered resources to the cluster the kubeconfig (or the pod) points at.

Server-side apply through the dynamic client, so built-in kinds and custom resources
(KServe, Knative) take the same path and re-applying is idempotent.
"""

from __future__ import annotations

from typing import Any

from mlharbor.core.errors import ConfigError, UnavailableError

FIELD_MANAGER = "mlharbor"


def apply_documents(docs: list[dict[str, Any]], *, namespace: str) -> list[str]:
    """Apply ``docs`` in order; returns ``Kind/name`` of each."""
    try:
        from kubernetes import client, config, dynamic
        from kubernetes.config.config_exception import ConfigException
    except ImportError as exc:
        raise ConfigError(
            "Applying to a cluster needs the Kubernetes Python client.",
            hint="pip install 'mlharbor[kubernetes]', or apply the written files with kubectl.",
        ) from exc
    try:
        config.load_kube_config()
    except (ConfigException, OSError) as kube_exc:
        try:
            config.load_incluster_config()
        except ConfigException as exc:
            raise ConfigError(
                f"No Kubernetes cluster is configured ({kube_exc}).",
                hint="Point KUBECONFIG at a kubeconfig (or run inside a pod), or drop --apply "
                "and apply the written files yourself.",
            ) from exc
    api = dynamic.DynamicClient(client.ApiClient())
    applied: list[str] = []
    for doc in docs:
        label = f"{doc['kind']}/{doc['metadata']['name']}"
        try:
            resource = api.resources.get(api_version=doc["apiVersion"], kind=doc["kind"])
            resource.server_side_apply(body=doc, namespace=namespace,
                                       field_manager=FIELD_MANAGER, force_conflicts=True)
        except Exception as exc:  # the client raises many unrelated types
            raise UnavailableError(
                f"Applying {label} in namespace {namespace!r} failed: {exc}.",
                hint="Check the cluster connection and that the resource's CRD is installed "
                "(KServe, Knative).",
            ) from exc
        applied.append(label)
    return applied
