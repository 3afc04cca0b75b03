"""Endpoint routes under ``/api/v1/endpoints``: the desired state serving replicas converge on.

Optimistic concurrency, as Kubernetes does with ``resourceVersion``: every answer carrying an
endpoint has its ``revision`` in the body and as the ``ETag`` header (``"7"``). A change sent
with ``If-Match: "7"`` (or ``"revision": 7`` in a PATCH body) is applied only while the endpoint
is still at revision 7; otherwise the answer is 409 with ``current_revision`` in the error
details and nothing changes. Without a precondition a write is unconditional but atomic: a
PATCH is merged into the endpoint as it is when the write commits, so two PATCHes of different
fields both take effect.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Header, Query, Request, Response
from pydantic import BaseModel, Field

from mlharbor.api.context import actor_of, registry_of, request_id_of
from mlharbor.core.errors import InvalidInputError
from mlharbor.registry.endpoints import Endpoint, EndpointService, EndpointSpec

router = APIRouter(prefix="/api/v1", tags=["endpoints"])

IF_MATCH_HELP = ('The revision this change is based on, as the ETag of the GET that read it '
                 '("7"); the change is refused with 409 when the endpoint has changed since.')


class EndpointPatch(BaseModel):
    """Fields to change; any field of the endpoint spec except its name."""

    model_config = {"extra": "allow"}
    reason: str = Field("", max_length=2000)
    revision: int | None = Field(None, ge=1, le=2**31 - 1,
                                 description="Like If-Match: apply only at this revision.")


def _service(request: Request) -> EndpointService:
    return EndpointService(registry_of(request))


def etag(revision: int) -> str:
    """The strong entity tag of an endpoint revision."""
    return f'"{revision}"'


def parse_if_match(value: str | None) -> int | None:
    """The revision an ``If-Match`` header asks for; None when absent or ``*`` (any).

    Accepts one strong entity tag (``"7"``) or, leniently, a bare number (``7``). Weak tags
    (``W/"7"``) never match under If-Match's strong comparison (RFC 9110), so they are refused
    with a clear 400 rather than silently treated as a match or a conflict.
    """
    if value is None or not value.strip() or value.strip() == "*":
        return None
    text = value.strip()
    quoted = len(text) >= 2 and text[0] == text[-1] == '"'
    inner = text[1:-1] if quoted else text
    if inner.isascii() and inner.isdigit() and len(inner) <= 10 and int(inner) >= 1:
        return int(inner)
    raise InvalidInputError(
        f"If-Match {text[:80]!r} is not an endpoint revision.", field="If-Match",
        expected='one strong ETag as returned by GET, e.g. "7", or *', received=text[:80],
        hint="Send the ETag header of the GET you based the change on.")


def _precondition(if_match: str | None, body_revision: int | None = None) -> int | None:
    header = parse_if_match(if_match)
    if header is not None and body_revision is not None and header != body_revision:
        raise InvalidInputError(
            f"If-Match asks for revision {header} but the body for revision {body_revision}.",
            field="revision", hint="Send one of them, or the same revision in both.")
    return header if header is not None else body_revision


def _answer(response: Response, endpoint: Endpoint) -> dict[str, Any]:
    response.headers["ETag"] = etag(endpoint.revision)
    return endpoint.to_dict()


@router.get("/endpoints")
def list_endpoints(request: Request) -> dict[str, Any]:
    items = _service(request).list_endpoints()
    return {"items": [e.to_dict() for e in items], "total": len(items)}


@router.post("/endpoints", status_code=201)
def create_endpoint(
    request: Request, response: Response, body: EndpointSpec,
    reason: str = Query("", max_length=2000, description="Kept in the deployment ledger."),
) -> dict[str, Any]:
    endpoint = _service(request).create(body, actor=actor_of(request), reason=reason,
                                        request_id=request_id_of(request))
    return _answer(response, endpoint)


@router.get("/endpoints/{name}")
def get_endpoint(request: Request, response: Response, name: str) -> dict[str, Any]:
    return _answer(response, _service(request).get(name))


@router.patch("/endpoints/{name}")
def update_endpoint(
    request: Request, response: Response, name: str, body: EndpointPatch,
    if_match: str | None = Header(None, alias="If-Match", description=IF_MATCH_HELP),
) -> dict[str, Any]:
    expected = _precondition(if_match, body.revision)
    changes = {k: v for k, v in body.model_dump().items() if k not in ("reason", "revision")}
    endpoint = _service(request).update(name, changes, actor=actor_of(request),
                                        reason=body.reason, request_id=request_id_of(request),
                                        expected_revision=expected)
    return _answer(response, endpoint)


@router.put("/endpoints/{name}")
def replace_endpoint(
    request: Request, response: Response, name: str, body: EndpointSpec,
    reason: str = Query("", max_length=2000, description="Kept in the deployment ledger."),
    if_match: str | None = Header(None, alias="If-Match", description=IF_MATCH_HELP),
) -> dict[str, Any]:
    endpoint = _service(request).update(name, body.model_dump(), actor=actor_of(request),
                                        reason=reason, request_id=request_id_of(request),
                                        replace=True, expected_revision=parse_if_match(if_match))
    return _answer(response, endpoint)


@router.delete("/endpoints/{name}", status_code=204)
def delete_endpoint(
    request: Request, name: str,
    reason: str = Query("", max_length=2000, description="Kept in the deployment ledger."),
    if_match: str | None = Header(None, alias="If-Match", description=IF_MATCH_HELP),
) -> None:
    _service(request).delete(name, actor=actor_of(request), reason=reason,
                             request_id=request_id_of(request),
                             expected_revision=parse_if_match(if_match))


@router.get("/endpoints/{name}/history")
def endpoint_history(request: Request, name: str) -> dict[str, Any]:
    return {"items": [c.to_dict() for c in _service(request).history(name)]}
