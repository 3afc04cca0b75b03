"""Retraining policy routes under ``/api/v1/policies``.

``PUT /api/v1/policies/{endpoint}`` takes the whole policy as YAML (``application/yaml``,
errors name the line and the field) or JSON (``application/json``); the body's ``endpoint``
may be left out and must otherwise match the path. Revisions work like the endpoint routes
(:mod:`mlharbor.api.routes.endpoints`, whose ETag helpers are reused): the answer carries the
revision as ``ETag``, and ``If-Match: "7"`` applies the change only while the stored policy is
at revision 7 (409 with ``current_revision`` otherwise). Bad input is a 4xx naming the field
and writes nothing; every attempted change is audited.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Header, Query, Request, Response

from mlharbor.api.context import actor_of, registry_of, request_id_of
from mlharbor.api.routes.endpoints import IF_MATCH_HELP, etag, parse_if_match
from mlharbor.registry.policies import ApplyResult, PolicyService

router = APIRouter(prefix="/api/v1", tags=["policies"])

#: The largest policy document accepted (a policy is a page of YAML, not a data set).
MAX_POLICY_BYTES = 256 * 1024
YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")
JSON_TYPES = ("application/json",)
REASON = Query("", max_length=2000, description="Why; kept with the revision.")


def _service(request: Request) -> PolicyService:
    return PolicyService(registry_of(request))


def parse_body(raw: bytes, content_type: str | None, endpoint: str) -> Any:
    """The validated :class:`~mlharbor.pipelines.policy.Policy` of a PUT body."""
    import json

    from mlharbor.core.errors import (
        ConfigError,
        InvalidInputError,
        PayloadTooLargeError,
        UnsupportedMediaTypeError,
    )
    from mlharbor.core.yamldoc import load_yaml
    from mlharbor.pipelines.policy import policy_from_dict

    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media not in YAML_TYPES + JSON_TYPES:
        raise UnsupportedMediaTypeError(
            f"A policy is sent as YAML or JSON; received Content-Type {media or 'none'!r}.",
            field="Content-Type", expected="application/yaml or application/json")
    if len(raw) > MAX_POLICY_BYTES:
        raise PayloadTooLargeError(f"The policy is {len(raw)} bytes; at most "
                                   f"{MAX_POLICY_BYTES} are accepted.")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInputError("The policy is not UTF-8 text.", field="body") from exc
    lines = None
    if media in JSON_TYPES:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"policy: not valid JSON ({exc}).", field="body") from exc
    else:
        doc = load_yaml(text, source="policy")
        data, lines = doc.data, doc.lines
    if isinstance(data, dict):
        named = data.get("endpoint", endpoint)
        if named != endpoint:
            raise InvalidInputError(
                f"The policy names endpoint {named!r} but was sent to {endpoint!r}.",
                field="endpoint", hint="Send it to its own endpoint's URL, or leave "
                "`endpoint` out of the body.")
        data = {"endpoint": endpoint, **data}
    return policy_from_dict(data, source="policy", lines=lines)


@router.get("/policies")
def list_policies(request: Request) -> dict[str, Any]:
    items = _service(request).list_policies()
    return {"items": [p.to_dict() for p in items], "total": len(items)}


@router.get("/policies/{endpoint}")
def get_policy(
    request: Request, response: Response, endpoint: str,
    revision: int | None = Query(None, ge=1, le=2**31 - 1,
                                 description="A past revision instead of the current one."),
) -> dict[str, Any]:
    service = _service(request)
    if revision is not None:
        return service.revision(endpoint, revision).to_dict()
    stored = service.get(endpoint)
    response.headers["ETag"] = etag(stored.revision)
    return stored.to_dict()


@router.put("/policies/{endpoint}")
async def put_policy(
    request: Request, response: Response, endpoint: str, reason: str = REASON,
    if_match: str | None = Header(None, alias="If-Match", description=IF_MATCH_HELP),
) -> dict[str, Any]:
    """Create or replace the endpoint's policy (201 when created, 200 otherwise)."""
    from starlette.concurrency import run_in_threadpool

    from mlharbor.core.names import validate_name

    validate_name(endpoint, kind="endpoint name")
    expected = parse_if_match(if_match)
    raw = await request.body()
    content_type = request.headers.get("content-type")

    def apply() -> ApplyResult:  # parsing YAML and writing the database: off the event loop
        policy = parse_body(raw, content_type, endpoint)
        return _service(request).apply(policy, actor=actor_of(request), reason=reason,
                                       request_id=request_id_of(request),
                                       expected_revision=expected)

    result = await run_in_threadpool(apply)
    response.headers["ETag"] = etag(result.policy.revision)
    if result.outcome == "created":
        response.status_code = 201
    return result.to_dict()


@router.delete("/policies/{endpoint}", status_code=204)
def delete_policy(
    request: Request, endpoint: str, reason: str = REASON,
    if_match: str | None = Header(None, alias="If-Match", description=IF_MATCH_HELP),
) -> None:
    _service(request).delete(endpoint, actor=actor_of(request), reason=reason,
                             request_id=request_id_of(request),
                             expected_revision=parse_if_match(if_match))


@router.get("/policies/{endpoint}/history")
def policy_history(request: Request, endpoint: str) -> dict[str, Any]:
    return {"items": [r.to_dict() for r in _service(request).history(endpoint)]}
