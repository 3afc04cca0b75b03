"""Kubernetes: plain manifests, a Helm chart, a KServe InferenceService or a Knative Service.

Every form is rendered from the same templates (``templates/kubernetes``), so the pod is the
same everywhere: the image's ``serve`` entrypoint on port 8080, probes on ``/livez`` and
``/readyz``, a non-root read-only container with every capability dropped, settings from a
ConfigMap and secrets only by reference (``<name>-secrets``). The Helm chart is the plain
manifests with the tunable values replaced by ``.Values`` expressions (see
:class:`~mlharbor.deploy.rendering.HelmValue`).

Scaling (``autoscaler``): ``cpu`` is an HPA on CPU utilisation; ``in-flight`` an HPA on
mlharbor's own signal, the Pods metric ``mlharbor_in_flight_requests`` (prediction requests
being handled, from each replica's ``/metrics``, made available to the HPA by a custom-metrics
adapter such as prometheus-adapter); ``keda`` a KEDA ``ScaledObject`` whose prometheus trigger
queries the same metric, and which alone may scale to zero (``min_replicas`` 0).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import yaml

from mlharbor.core.errors import InvalidInputError
from mlharbor.deploy.base import DeploymentSource, Plan, PlannedResource, Target
from mlharbor.deploy.environment import HOME, PORT, RegistryMode, ReplicaEnvironment
from mlharbor.deploy.rendering import HelmValue, render, yaml_document

PLAIN = ("configmap", "deployment", "service", "hpa", "pdb")
AUTOSCALERS = ("cpu", "in-flight", "keda")
#: The gauge serving exports on /metrics (mlharbor.telemetry.metrics): requests in flight.
IN_FLIGHT_METRIC = "mlharbor_in_flight_requests"


@dataclasses.dataclass(frozen=True, slots=True)
class KubernetesOptions:
    environment: ReplicaEnvironment
    replicas: int = 2
    min_replicas: int = 2
    max_replicas: int = 10
    target_cpu: int = 70
    cpu_request: str = "250m"
    cpu_limit: str = "2"
    memory_request: str = "512Mi"
    memory_limit: str = "2Gi"
    grace_seconds: int = 40
    helm: bool = False
    kserve: bool = False
    knative: bool = False
    apply: bool = False
    namespace: str = "default"
    autoscaler: str = "cpu"
    target_in_flight: int = 8
    prometheus_url: str = "http://prometheus-server.monitoring.svc:80"

    @property
    def mode(self) -> RegistryMode:
        return self.environment.mode


def plain_kinds(options: KubernetesOptions) -> tuple[str, ...]:
    """The plain manifests written: with KEDA, its ScaledObject instead of an HPA (KEDA makes
    and owns the HPA; two would fight over the replica count)."""
    if options.autoscaler == "keda":
        return tuple("scaledobject" if kind == "hpa" else kind for kind in PLAIN)
    return PLAIN


def in_flight_query(name: str, namespace: str) -> str:
    """PromQL for the requests in flight over every replica of ``name`` (pod labels as the
    usual kubernetes-pods scrape job maps them)."""
    return (f'sum({IN_FLIGHT_METRIC}{{namespace="{namespace}",'
            f'app_kubernetes_io_name="{name}"}})')


class KubernetesTarget(Target[KubernetesOptions]):
    name = "kubernetes"
    summary = ("Kubernetes manifests (Deployment, Service, HPA, PDB, ConfigMap), a Helm chart "
               "(--helm), a KServe InferenceService (--kserve) or a Knative Service (--knative).")

    def _plan(self, plan: Plan, options: KubernetesOptions) -> None:
        _check(options)
        context = manifest_context(plan.source, options)
        forms = [f for f in ("helm", "kserve", "knative") if getattr(options, f)] or ["plain"]
        if "plain" in forms:
            for kind in plain_kinds(options):
                plan.files.append(_file(f"{kind}.yaml", render(f"kubernetes/{kind}.yaml.j2",
                                                                **context)))
        if (options.kserve or options.knative) and "plain" not in forms:
            # The serverless forms read their settings from the same ConfigMap.
            plan.files.append(_file("configmap.yaml", render("kubernetes/configmap.yaml.j2",
                                                             **context)))
        if options.kserve:
            plan.files.append(_file("inferenceservice.yaml",
                                    render("kubernetes/kserve.yaml.j2", **context)))
        if options.knative:
            plan.files.append(_file("knative-service.yaml",
                                    render("kubernetes/knative.yaml.j2", **context)))
        if options.helm:
            from mlharbor.deploy.helm import chart_files

            plan.files.extend(chart_files(plan.source, options, context))
        secret = context["secret_name"]
        keys = ", ".join(r.key for r in options.environment.secrets)
        plan.notes.append(f"secrets are referenced, not written: Secret {secret!r} with keys "
                          f"{keys} (optional ones may be absent)")
        plan.notes.append(f"registry mode {options.mode}: " + (
            "the image carries its model" if options.mode == "baked"
            else "replicas share the database and S3 named in the ConfigMap and Secret"))
        plan.notes.extend(_scaling_notes(options, context))
        plan.details = {"forms": forms, "namespace": options.namespace,
                        "autoscaler": options.autoscaler}
        if options.apply:
            for doc in applicable_documents(plan):
                plan.resources.append(PlannedResource(
                    doc["kind"], f"{options.namespace}/{doc['metadata']['name']}", "apply",
                    doc["apiVersion"]))

    def _apply(self, plan: Plan, options: KubernetesOptions) -> dict[str, Any]:
        if not options.apply:
            return {}
        from mlharbor.deploy.kube_apply import apply_documents

        applied = apply_documents(applicable_documents(plan), namespace=options.namespace)
        return {"applied": applied}


def applicable_documents(plan: Plan) -> list[dict[str, Any]]:
    """The rendered resources of a plan (not the Helm chart, which Helm installs)."""
    docs: list[dict[str, Any]] = []
    for planned in plan.files:
        if planned.path.endswith(".yaml") and "/" not in planned.path:
            docs.extend(d for d in yaml.safe_load_all(planned.content) if d)
    return docs


def manifest_context(source: DeploymentSource, options: KubernetesOptions) -> dict[str, Any]:
    name = source.slug
    selector = {"app.kubernetes.io/name": name, "app.kubernetes.io/instance": name}
    labels = {
        **selector,
        "app.kubernetes.io/version": str(source.number),
        "app.kubernetes.io/component": "model-server",
        "app.kubernetes.io/managed-by": "mlharbor",
        "mlharbor.io/model": name,
        "mlharbor.io/version": str(source.number),
    }
    return {
        "name": name, "model": source.model, "labels": labels, "selector": selector,
        "image": source.image, "port": PORT, "home": HOME,
        "replicas": options.replicas, "min_replicas": options.min_replicas,
        "max_replicas": options.max_replicas, "target_cpu": options.target_cpu,
        "cpu_request": options.cpu_request, "cpu_limit": options.cpu_limit,
        "memory_request": options.memory_request, "memory_limit": options.memory_limit,
        "grace_seconds": options.grace_seconds,
        "autoscaler": options.autoscaler, "in_flight_metric": IN_FLIGHT_METRIC,
        # A quantity in the HPA, a string in KEDA's trigger metadata: a string fits both.
        "target_in_flight": str(options.target_in_flight),
        "prometheus_url": options.prometheus_url,
        "in_flight_query": in_flight_query(name, options.namespace),
        "config": dict(options.environment.config),
        "secrets": list(options.environment.secrets),
        "secret_name": f"{name}-secrets",
    }


def helm_context(context: dict[str, Any]) -> dict[str, Any]:
    """The manifest context with every tunable value replaced by its ``.Values`` reference."""
    values = dict(context)
    for key in ("image", "cpu_request", "cpu_limit", "memory_request", "memory_limit",
                "secret_name", "target_in_flight", "prometheus_url", "in_flight_query"):
        values[key] = HelmValue(_camel(key))
    for key in ("replicas", "min_replicas", "max_replicas", "target_cpu", "grace_seconds"):
        values[key] = HelmValue(_camel(key), quote=False)
    values["config"] = {k: HelmValue(f"config.{k}") for k in context["config"]}
    return values


def helm_values(context: dict[str, Any]) -> dict[str, Any]:
    """``values.yaml`` of the chart: the defaults the plain manifests were rendered with."""
    keys: tuple[str, ...] = (
        "image", "replicas", "min_replicas", "max_replicas", "target_cpu", "cpu_request",
        "cpu_limit", "memory_request", "memory_limit", "grace_seconds", "secret_name")
    if context["autoscaler"] == "in-flight":
        keys += ("target_in_flight",)
    elif context["autoscaler"] == "keda":
        keys += ("target_in_flight", "prometheus_url", "in_flight_query")
    values = {_camel(k): context[k] for k in keys}
    values["config"] = dict(context["config"])
    return values


def _camel(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(part.title() for part in rest)


def _file(path: str, content: str) -> Any:
    from mlharbor.deploy.base import PlannedFile

    return PlannedFile(path, content)


def _scaling_notes(options: KubernetesOptions, context: dict[str, Any]) -> list[str]:
    if options.autoscaler == "cpu":
        return []
    notes = [f"scales on {IN_FLIGHT_METRIC} (prediction requests in flight per replica), "
             f"target {options.target_in_flight}"]
    if options.autoscaler == "in-flight":
        notes.append(f"the HPA reads the Pods metric {IN_FLIGHT_METRIC} from the custom "
                     "metrics API: install a Prometheus scraping the pods (they carry "
                     "prometheus.io/scrape annotations) and prometheus-adapter exposing it")
    else:
        notes.append(f"KEDA queries {options.prometheus_url}: {context['in_flight_query']}; "
                     "install KEDA and a Prometheus scraping the pods")
    if options.min_replicas == 0:
        notes.append(
            "scale from zero: with no replica nothing is in flight, so something in front "
            "must hold the first request and wake the Deployment (the KEDA HTTP add-on's "
            "interceptor, or a trigger on your ingress's request rate); the replica that "
            "starts holds that request while its model loads instead of answering 503")
    return notes


def _check(options: KubernetesOptions) -> None:
    if options.autoscaler not in AUTOSCALERS:
        raise InvalidInputError(
            f"Unknown autoscaler {options.autoscaler!r}; choose one of "
            f"{', '.join(AUTOSCALERS)}.", field="autoscaler", expected=list(AUTOSCALERS),
            received=options.autoscaler)
    lowest = 0 if options.autoscaler == "keda" else 1
    if options.min_replicas < lowest or options.max_replicas < max(options.min_replicas, 1):
        raise InvalidInputError(
            f"Replicas must satisfy {lowest} <= min ({options.min_replicas}) <= max "
            f"({options.max_replicas}) and max >= 1.", field="min_replicas",
            hint="Only --autoscaler keda scales to zero (--min-replicas 0)."
            if options.min_replicas == 0 else None)
    if options.target_in_flight < 1:
        raise InvalidInputError(
            f"--target-in-flight is requests in flight per replica, 1 or more; received "
            f"{options.target_in_flight}.", field="target_in_flight")
    if options.autoscaler == "keda" and not options.prometheus_url.startswith(
            ("http://", "https://")):
        raise InvalidInputError(
            f"--prometheus-url must be an http(s) URL of the Prometheus KEDA queries; "
            f"received {options.prometheus_url!r}.", field="prometheus_url")
    if not options.min_replicas <= options.replicas <= options.max_replicas:
        raise InvalidInputError(
            f"--replicas {options.replicas} is outside the autoscaling range "
            f"{options.min_replicas}..{options.max_replicas}.", field="replicas")
    if not 1 <= options.target_cpu <= 100:
        raise InvalidInputError(
            f"--target-cpu must be a percentage in 1..100; received {options.target_cpu}.",
            field="target_cpu")
    if options.kserve and options.knative:
        raise InvalidInputError(
            "--kserve and --knative both create the serverless service; pick one.",
            hint="KServe runs on Knative already: --kserve gives the inference protocol routes.")


__all__ = ["KubernetesOptions", "KubernetesTarget", "manifest_context", "yaml_document"]
