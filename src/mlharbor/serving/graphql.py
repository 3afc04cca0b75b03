"""GraphQL at ``/graphql`` (Strawberry): models, versions and endpoints; a ``predict`` mutation.

The schema reads the same registry and endpoint services as the REST routes, and ``predict``
goes through the same :class:`~mlharbor.serving.core.DataPlane` as every other protocol.
Abuse limits: query depth (``MAX_DEPTH``), document size in tokens (a cost bound on what a
query may ask for), aliases per query, and list sizes capped by ``MAX_PAGE``. Errors carry the
mlharbor error code and the HTTP status the one mapping gives it in ``extensions``.

When authentication is on, the middleware lets ``/graphql`` through for ``read``; ``predict``
additionally checks the caller may ``predict`` on the endpoint it names.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import TYPE_CHECKING, Any

import strawberry
from strawberry.extensions import MaxAliasesLimiter, MaxTokensLimiter, QueryDepthLimiter
from strawberry.scalars import JSON
from strawberry.types import Info

from mlharbor.core.errors import MlharborError, PermissionDeniedError

if TYPE_CHECKING:
    from mlharbor.core.records import ModelVersion, RegisteredModel
    from mlharbor.registry.service import Registry
    from mlharbor.serving.core import DataPlane

MAX_DEPTH = 6
MAX_TOKENS = 2000
MAX_ALIASES = 15
MAX_PAGE = 100


@strawberry.type
class Version:
    name: str
    version: int
    status: str
    aliases: list[str]
    description: str
    created_at: datetime
    created_by: str
    metrics: JSON
    runtime: str | None

    @staticmethod
    def of(mv: ModelVersion) -> Version:
        manifest = mv.manifest or {}
        return Version(name=mv.name, version=mv.version, status=mv.status.value,
                       aliases=list(mv.aliases), description=mv.description,
                       created_at=mv.created_at, created_by=mv.created_by,
                       metrics=JSON(dict(mv.metrics)), runtime=manifest.get("default_runtime"))


@strawberry.type
class Model:
    name: str
    description: str
    latest_version: int | None
    aliases: JSON

    @strawberry.field
    async def versions(self, info: Info, limit: int = 20) -> list[Version]:
        registry = _registry(info)
        page = await asyncio.to_thread(registry.list_versions, self.name,
                                       page_size=_limit(limit))
        return [Version.of(v) for v in page.items]

    @staticmethod
    def of(model: RegisteredModel) -> Model:
        return Model(name=model.name, description=model.description,
                     latest_version=model.latest_version, aliases=JSON(dict(model.aliases)))


@strawberry.type
class Route:
    ref: str
    weight: float
    desired_version: int | None
    serving_version: int | None
    state: str
    reason: str | None


@strawberry.type
class Endpoint:
    name: str
    revision: int
    ready: bool
    routes: list[Route]
    shadow: str | None
    fallback: list[str]


@strawberry.type
class Prediction:
    endpoint: str
    model: str
    version: int
    request_id: str
    predictions: JSON
    probabilities: JSON | None
    classes: JSON | None
    fallback: JSON | None


def _registry(info: Info) -> Registry:
    registry: Registry = info.context["registry"]
    return registry


def _plane(info: Info) -> DataPlane:
    plane: DataPlane = info.context["plane"]
    return plane


def _limit(limit: int) -> int:
    return max(1, min(limit, MAX_PAGE))


@strawberry.type
class Query:
    @strawberry.field
    async def models(self, info: Info, name_contains: str | None = None,
                     limit: int = 20) -> list[Model]:
        page = await asyncio.to_thread(_registry(info).list_models,
                                       name_contains=name_contains, page_size=_limit(limit))
        return [Model.of(m) for m in page.items]

    @strawberry.field
    async def model(self, info: Info, name: str) -> Model:
        return Model.of(await asyncio.to_thread(_registry(info).get_model, name))

    @strawberry.field
    async def version(self, info: Info, ref: str) -> Version:
        return Version.of(await asyncio.to_thread(_registry(info).get_version, ref))

    @strawberry.field
    def endpoints(self, info: Info) -> list[Endpoint]:
        plans = _plane(info).plans
        return [Endpoint(
            name=p.name, revision=p.revision, ready=p.servable,
            routes=[Route(ref=r.ref, weight=r.weight, desired_version=r.desired_version,
                          serving_version=r.serving_version, state=r.state, reason=r.reason)
                    for r in p.routes],
            shadow=p.spec.shadow, fallback=list(p.spec.fallback),
        ) for _name, p in sorted(plans.items())]


@strawberry.type
class Mutation:
    @strawberry.mutation
    async def predict(self, info: Info, endpoint: str, records: JSON) -> Prediction:
        """Predict ``records`` (a list of {column: value}) with ``endpoint``."""
        _check_predict(info, endpoint)
        from mlharbor.serving.protocols.payload import records_or_columns

        request_id = info.context["request_id"]
        answer = await _plane(info).predict(endpoint, records_or_columns(records),
                                            request_id=request_id)
        proba = answer.outputs.probabilities
        return Prediction(
            endpoint=endpoint, model=answer.model.name, version=answer.version,
            request_id=request_id, predictions=JSON(answer.outputs.predictions.tolist()),
            probabilities=None if proba is None else JSON(proba.tolist()),
            classes=JSON(answer.classes), fallback=JSON(answer.fallback),
        )


def _check_predict(info: Info, endpoint: str) -> None:
    principal = (info.context.get("scope", {}).get("state") or {}).get("principal")
    if principal is None:
        return  # authentication is off for this app
    from mlharbor.security.policy import Resource, allows

    if not allows(principal, "predict", Resource("endpoint", endpoint)):
        raise PermissionDeniedError(f"{principal.name!r} may not predict on endpoint "
                                    f"{endpoint!r}.")


def create_graphql_app(plane: DataPlane, registry: Registry, status_for: Any) -> Any:
    """The Strawberry ASGI app, bound to this server's data plane and registry."""
    from graphql import GraphQLError
    from strawberry.asgi import GraphQL

    class MlharborGraphQL(GraphQL[dict[str, Any], None]):
        async def get_context(self, request: Any, response: Any) -> dict[str, Any]:
            import uuid

            headers = getattr(request, "headers", {})
            return {"plane": plane, "registry": registry, "scope": request.scope,
                    "request_id": headers.get("x-request-id") or uuid.uuid4().hex}

    class MlharborSchema(strawberry.Schema):
        def process_errors(self, errors: list[GraphQLError], execution_context: Any = None
                           ) -> None:
            unexpected = []
            for error in errors:
                cause = error.original_error
                if isinstance(cause, MlharborError):
                    # An expected error: say what it is (and its HTTP status), log nothing.
                    error.extensions = {**(error.extensions or {}), "code": cause.code,
                                        "status": status_for(cause)}
                else:
                    unexpected.append(error)
            if unexpected:
                super().process_errors(unexpected, execution_context)

    schema = MlharborSchema(
        query=Query, mutation=Mutation,
        extensions=[lambda: QueryDepthLimiter(max_depth=MAX_DEPTH),
                    lambda: MaxTokensLimiter(MAX_TOKENS), lambda: MaxAliasesLimiter(MAX_ALIASES)],
    )
    return MlharborGraphQL(schema, graphql_ide=None, allow_queries_via_get=False)
