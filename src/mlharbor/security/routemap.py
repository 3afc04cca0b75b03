"""The route -> action table: every HTTP route of every mounted app, mapped to a policy action.

A rule names the method and the path *template* exactly as the framework declares it
(``/api/v1/models/{name}``), the action from :data:`mlharbor.security.policy.ACTIONS`, and how
to find the resource in the path parameters. ``PUBLIC`` rules need no credentials at all;
``AUTHENTICATED`` rules need valid credentials and no grant.

Adding routes: append rules to :data:`RULES` (or pass ``extra_rules`` when installing the
middleware). A route with no rule is refused (403) and a test fails, so nothing is reachable by
accident. Mounted sub-apps (GraphQL, dashboard) are matched by their mount path with the
template ``MOUNT/{path:path}``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from mlharbor.security.policy import Resource, check_action

PUBLIC = "public"
# Any caller with valid credentials, whatever their grants (what a caller may learn of itself).
AUTHENTICATED = "authenticated"
ResourceFinder = Callable[[Mapping[str, Any]], Resource | None]


def model_param(param: str = "name") -> ResourceFinder:
    """The model named by path parameter ``param``."""
    def find(params: Mapping[str, Any]) -> Resource | None:
        value = params.get(param)
        return Resource("model", str(value)) if value else None
    return find


def endpoint_param(param: str = "name") -> ResourceFinder:
    def find(params: Mapping[str, Any]) -> Resource | None:
        value = params.get(param)
        return Resource("endpoint", str(value)) if value else None
    return find


def model_of_reference(param: str = "reference") -> ResourceFinder:
    """The model of a reference ``name``, ``name:3`` or ``name@alias``."""
    def find(params: Mapping[str, Any]) -> Resource | None:
        value = str(params.get(param) or "")
        name = value.split("@", 1)[0].split(":", 1)[0]
        return Resource("model", name) if name else None
    return find


@dataclasses.dataclass(frozen=True, slots=True)
class RouteRule:
    method: str
    path: str
    action: str
    resource: ResourceFinder | None = None

    def __post_init__(self) -> None:
        if self.action not in (PUBLIC, AUTHENTICATED):
            check_action(self.action)

    def resource_for(self, params: Mapping[str, Any]) -> Resource | None:
        return self.resource(params) if self.resource else None


def _rules(method: str, action: str, resource: ResourceFinder | None,
           *paths: str) -> list[RouteRule]:
    return [RouteRule(method, p, action, resource) for p in paths]


_API = "/api/v1"
_MODEL = model_param()
_ENDPOINT = endpoint_param()

# -- issue 16: MLflow's tracking REST API, artifact proxy and the registry routes
# register_model uses (mlharbor.api.routes.mlflow_*). Reading (searches too) needs `read`;
# logging runs, uploading files and registering need `model.write` (editors: the people who
# train and register). No model or endpoint is in these paths, so grants must be global.
# Any other /api/2.0/mlflow path answers MLflow's "not supported" error to any caller with
# valid credentials.
_ML = "/api/2.0/mlflow"
_MLA = "/api/2.0/mlflow-artifacts/artifacts"
_MLFLOW_RULES: tuple[RouteRule, ...] = (
    *_rules("GET", "read", None, *(f"{_ML}/{p}" for p in (
        "experiments/get", "experiments/get-by-name", "runs/get", "metrics/get-history",
        "artifacts/list", "logged-models/{model_id}", "registered-models/get",
        "model-versions/get", "registered-models/search", "model-versions/search",
        "registered-models/alias", "model-versions/get-download-uri")),
      _MLA, f"{_MLA}/{{path:path}}"),
    *_rules("POST", "read", None, *(f"{_ML}/{p}" for p in (
        "experiments/search", "runs/search", "logged-models/search",
        "registered-models/get-latest-versions"))),
    *_rules("POST", "model.write", None, *(f"{_ML}/{p}" for p in (
        "experiments/create", "experiments/update", "experiments/delete",
        "experiments/restore", "experiments/set-experiment-tag",
        "experiments/delete-experiment-tag", "runs/create", "runs/update", "runs/delete",
        "runs/restore", "runs/log-metric", "runs/log-parameter", "runs/set-tag",
        "runs/delete-tag", "runs/log-batch", "runs/log-inputs", "runs/outputs",
        "runs/log-model", "logged-models", "logged-models/{model_id}/params",
        "registered-models/create", "model-versions/create"))),
    *_rules("POST", "alias.write", None, f"{_ML}/registered-models/alias"),
    *_rules("DELETE", "alias.write", None, f"{_ML}/registered-models/alias"),
    *_rules("PATCH", "model.write", None, f"{_ML}/logged-models/{{model_id}}",
            f"{_ML}/logged-models/{{model_id}}/tags"),
    *_rules("DELETE", "model.write", None, f"{_ML}/logged-models/{{model_id}}/tags/{{tag_key}}",
            f"{_MLA}/{{path:path}}"),
    *_rules("PUT", "model.write", None, f"{_MLA}/{{path:path}}"),
    *(RouteRule(m, f"{_ML}/{{path:path}}", AUTHENTICATED)
      for m in ("GET", "POST", "PUT", "PATCH", "DELETE")),
)

RULES: tuple[RouteRule, ...] = (
    *_rules("GET", PUBLIC, None, "/livez", "/readyz"),
    *_rules("GET", "read", None, "/docs", "/docs/oauth2-redirect", "/openapi.json", "/redoc"),
    *_rules("GET", "read", None, f"{_API}/models"),
    *_rules("POST", "model.write", None, f"{_API}/models"),
    *_rules("GET", "read", _MODEL,
            f"{_API}/models/{{name}}", f"{_API}/models/{{name}}/versions",
            f"{_API}/models/{{name}}/versions/{{version}}",
            f"{_API}/models/{{name}}/versions/{{version}}/files/{{path:path}}",
            f"{_API}/models/{{name}}/aliases/{{alias}}",
            f"{_API}/models/{{name}}/alias-history"),
    *_rules("PATCH", "model.write", _MODEL,
            f"{_API}/models/{{name}}", f"{_API}/models/{{name}}/versions/{{version}}"),
    *_rules("DELETE", "model.write", _MODEL,
            f"{_API}/models/{{name}}", f"{_API}/models/{{name}}/versions/{{version}}"),
    *_rules("POST", "model.write", _MODEL,
            f"{_API}/models/{{name}}/versions",
            f"{_API}/models/{{name}}/versions/{{version}}/archive",
            f"{_API}/models/{{name}}/versions/{{version}}/unarchive"),
    *_rules("PUT", "alias.write", _MODEL, f"{_API}/models/{{name}}/aliases/{{alias}}"),
    *_rules("DELETE", "alias.write", _MODEL, f"{_API}/models/{{name}}/aliases/{{alias}}"),
    *_rules("GET", "read", model_of_reference(), f"{_API}/resolve/{{reference}}"),
    *_rules("GET", "read", None, f"{_API}/endpoints"),
    *_rules("POST", "endpoint.write", None, f"{_API}/endpoints"),
    *_rules("GET", "read", _ENDPOINT,
            f"{_API}/endpoints/{{name}}", f"{_API}/endpoints/{{name}}/history"),
    *(RouteRule(m, f"{_API}/endpoints/{{name}}", "endpoint.write", _ENDPOINT)
      for m in ("PATCH", "PUT", "DELETE")),
    *_rules("GET", "audit.read", None, f"{_API}/audit", f"{_API}/audit/head"),
    *_rules("GET", "read", None, "/metrics"),
    # -- endpoints (control plane, mlharbor.api.routes.endpoints)
    *_rules("GET", "read", None, f"{_API}/endpoints"),
    *_rules("POST", "endpoint.write", None, f"{_API}/endpoints"),
    *_rules("GET", "read", _ENDPOINT,
            f"{_API}/endpoints/{{name}}", f"{_API}/endpoints/{{name}}/history"),
    *[r for m in ("PATCH", "PUT", "DELETE")
      for r in _rules(m, "endpoint.write", _ENDPOINT, f"{_API}/endpoints/{{name}}")],
    # -- serving (mlharbor.serving): every protocol's predict route is `predict` on the
    # endpoint it names; health probes of each protocol stay public for orchestrators.
    *_rules("GET", PUBLIC, None, "/v2/health/live", "/v2/health/ready", "/ping", "/health",
            "/"),  # "/": KServe v1 liveness
    *_rules("POST", "predict", _ENDPOINT, "/v1/endpoints/{name}/predict"),
    *_rules("GET", "read", None, "/v1/endpoints", "/v1/version", "/v2", "/version",
            "/v1/models"),
    *_rules("GET", "read", _ENDPOINT, "/v1/endpoints/{name}"),
    *_rules("GET", "read", endpoint_param("model"),
            "/v2/models/{model}", "/v2/models/{model}/versions/{version}",
            "/v2/models/{model}/ready", "/v2/models/{model}/versions/{version}/ready",
            "/v1/models/{model}"),
    *_rules("POST", "predict", endpoint_param("model"),
            "/v2/models/{model}/infer", "/v2/models/{model}/versions/{version}/infer",
            "/v1/models/{model}:predict"),
    *_rules("POST", "predict", None, "/invocations"),
    # -- issue 17: explanations need what predictions need, on the endpoint they name.
    *_rules("POST", "predict", _ENDPOINT, "/v1/endpoints/{name}/explain"),
    *_rules("POST", "predict", endpoint_param("model"), "/v1/models/{model}:explain"),
    *_rules("GET", "read", _ENDPOINT,
            f"{_API}/monitoring/endpoints/{{name}}/drift/attributions"),
    # GraphQL: reading needs `read`; its predict mutation checks `predict` on the endpoint
    # itself with policy.allows (the route table cannot see inside a query).
    *_rules("GET", "read", None, "/graphql"),
    *_rules("POST", "read", None, "/graphql"),
    # -- monitoring (mlharbor.api.routes.monitoring) and the dashboard (mlharbor.ui)
    *_rules("POST", "predict", _ENDPOINT, "/v1/endpoints/{name}/feedback"),
    *_rules("GET", "read", _ENDPOINT, f"{_API}/monitoring/endpoints/{{name}}/drift",
            f"{_API}/monitoring/endpoints/{{name}}/performance"),
    # -- issue 13: accuracy estimated without labels (CBPE) per window, beside the realised.
    *_rules("GET", "read", _ENDPOINT, f"{_API}/monitoring/endpoints/{{name}}/estimated"),
    *_rules("GET", "read", None, f"{_API}/monitoring/alerts", f"{_API}/monitoring/endpoints",
            "/ui", "/ui/static/{name}"),
    # The dashboard's login form: public (it is how a browser gets a credential). POST
    # /ui/login checks the key itself (mlharbor.security.middleware.LoginGate); the session
    # cookie it sets is only ever accepted for GET/HEAD.
    *_rules("GET", PUBLIC, None, "/ui/login", "/ui/login.js", "/ui/login.css"),
    *_rules("POST", PUBLIC, None, "/ui/login", "/ui/logout"),
    # -- dashboard data (issue 7): traffic charts, version lineage and evaluation reports, the
    # deployment ledger (alias moves, endpoint revisions, and the deploy.* records: target,
    # image, who, when, outcome and its message). The audit trail itself is `audit.read`
    # (rules above); /ui/whoami tells any caller, scoped keys too, what it may read.
    *_rules("GET", "read", _ENDPOINT, f"{_API}/monitoring/endpoints/{{name}}/traffic",
            f"{_API}/monitoring/endpoints/{{name}}/resources"),
    # -- issue 14: the alert rules in force (defaults and the rules file) with their state.
    *_rules("GET", "read", None, f"{_API}/monitoring/alerts/rules"),
    *_rules("GET", "read", _MODEL, f"{_API}/models/{{name}}/versions/{{version}}/lineage",
            f"{_API}/models/{{name}}/versions/{{version}}/report"),
    # -- issue 17: model cards (mlharbor.api.routes.cards) and the dashboard's card page.
    *_rules("GET", "read", _MODEL, f"{_API}/models/{{name}}/versions/{{version}}/card",
            "/ui/models/{name}/versions/{version}/card"),
    *_rules("GET", "read", None, f"{_API}/deployments"),
    *_rules("GET", AUTHENTICATED, None, "/ui/whoami"),
    # -- issue 13: retraining policies (mlharbor.api.routes.policies). A policy decides what
    # retrains and redeploys an endpoint, so changing it needs what changing the endpoint does.
    *_rules("GET", "read", None, f"{_API}/policies"),
    *_rules("GET", "read", endpoint_param("endpoint"), f"{_API}/policies/{{endpoint}}",
            f"{_API}/policies/{{endpoint}}/history"),
    *[r for m in ("PUT", "DELETE") for r in _rules(m, "endpoint.write",
                                                    endpoint_param("endpoint"),
                                                    f"{_API}/policies/{{endpoint}}")],
    # -- issue 13: jobs (mlharbor.api.routes.jobs). A job id names no endpoint in the path, so
    # acting on a job needs a global grant: endpoint.write, as a job moves aliases and weights.
    # Asking for a retrain is a write on the endpoint (a deployer of that endpoint may).
    *_rules("GET", "read", None, f"{_API}/jobs", f"{_API}/jobs/{{job_id}}",
            f"{_API}/jobs/{{job_id}}/logs"),
    *_rules("POST", "endpoint.write", None, f"{_API}/jobs/{{job_id}}/cancel",
            f"{_API}/jobs/{{job_id}}/approve", f"{_API}/jobs/{{job_id}}/reject"),
    *_rules("POST", "endpoint.write", _ENDPOINT, f"{_API}/endpoints/{{name}}/retrain"),
    # -- issue 16: experiments and runs, read (mlharbor.api.routes.runs) and the dashboard's
    # Experiments page (a hash route of /ui). No model is in these paths: a global `read`.
    *_rules("GET", "read", None, f"{_API}/experiments", f"{_API}/runs",
            f"{_API}/runs/{{run_id}}", f"{_API}/runs/{{run_id}}/metric-history",
            f"{_API}/runs/{{run_id}}/diff/{{other_run_id}}"),
    *_MLFLOW_RULES,
)


class RouteTable:
    """Rules compiled to path patterns, so requests are matched by the table itself.

    The middleware never asks the framework which route will answer: a path no rule matches is
    answered 404 (405 when only the method differs) before it reaches the app, so an unlisted
    route cannot be reached even by an admin; the coverage test keeps the table complete.
    """

    def __init__(self, rules: Iterable[RouteRule]) -> None:
        from starlette.routing import compile_path

        self._rules: dict[tuple[str, str], RouteRule] = {}
        for rule in rules:
            self._rules[(rule.method.upper(), rule.path)] = rule
        # Most literal characters first, so /models/{name}/versions wins over /models/{name}
        # style overlaps regardless of declaration order.
        ordered = sorted(self._rules.values(), key=lambda r: -len(_literal(r.path)))
        self._compiled = [(rule, *compile_path(rule.path)[::2]) for rule in ordered]
        # Templates without parameters by (method, path): a request for one of them is
        # answered by its rule without walking the patterns (a training loop's MLflow calls
        # matched ~40 patterns each). Only where the walk gives that very rule (a {rest:path}
        # parameter may match nothing, and win), so both always answer alike.
        self._exact = {key: rule for key, rule in self._rules.items()
                       if "{" not in key[1] and self._walk(*key)[0] is rule}

    def lookup(self, method: str, path: str) -> RouteRule | None:
        """The rule for a declared (method, template)."""
        method = "GET" if method.upper() == "HEAD" else method.upper()
        return self._rules.get((method, path))

    def resolve(self, method: str, path: str) -> tuple[RouteRule | None, dict[str, Any], bool]:
        """(rule, path params, path_known): the rule answering a request, if any."""
        method = "GET" if method.upper() == "HEAD" else method.upper()
        exact = self._exact.get((method, path))
        if exact is not None:
            return exact, {}, True
        return self._walk(method, path)

    def _walk(self, method: str, path: str) -> tuple[RouteRule | None, dict[str, Any], bool]:
        """:meth:`resolve` by the patterns alone, most literal characters first."""
        path_known = False
        for rule, regex, convertors in self._compiled:
            match = regex.match(path)
            if match is None:
                continue
            if rule.method != method:
                path_known = True
                continue
            params = {k: convertors[k].convert(v) for k, v in match.groupdict().items()}
            return rule, params, True
        return None, {}, path_known

    def __iter__(self) -> Iterator[RouteRule]:
        return iter(self._rules.values())

    def missing(self, routes: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        """The (method, template) pairs with no rule: what a coverage test reports."""
        return sorted({(m, p) for m, p in routes if self.lookup(m, p) is None})


def _literal(template: str) -> str:
    import re

    return re.sub(r"{[^}]*}", "", template)


# A mounted sub-app answers any method; a rule per method keeps writes separate from reads.
MOUNT_METHODS = ("GET", "POST")


def declared_routes(app: Any) -> list[tuple[str, str]]:
    """Every (method, template) an ASGI app (Starlette/FastAPI) declares, mounts included."""
    from starlette.routing import Mount

    found: list[tuple[str, str]] = []
    app = getattr(app, "http", app)  # mlharbor.serving.app.ServingApp wraps its HTTP layer
    router = getattr(app, "router", None)
    if router is not None and hasattr(router, "exact"):  # mlharbor.serving.http.Router
        found.extend((r.method, r.path) for r in router.exact.values())
        found.extend((r.method, r.path) for _m, _p, r in router.patterns)
        found.extend((m, path) for path in getattr(app, "mounts", {}) for m in MOUNT_METHODS)
    for route in getattr(app, "routes", ()):
        contexts = getattr(route, "effective_route_contexts", None)
        if contexts is not None:  # FastAPI >= 0.16x keeps included routers lazily
            for ctx in contexts():
                inner = ctx.starlette_route or ctx.original_route
                if isinstance(inner, Mount):
                    found.extend((m, f"{inner.path}/{{path:path}}") for m in MOUNT_METHODS)
                else:
                    methods = ctx.methods or getattr(inner, "methods", None) or {"GET"}
                    path = ctx.path or inner.path
                    found.extend((m, path) for m in sorted(methods) if m != "HEAD")
        elif isinstance(route, Mount):
            found.extend((m, f"{route.path}/{{path:path}}") for m in MOUNT_METHODS)
        elif hasattr(route, "path"):
            methods = getattr(route, "methods", None) or {"GET"}
            found.extend((m, route.path) for m in sorted(methods) if m != "HEAD")
    return found
