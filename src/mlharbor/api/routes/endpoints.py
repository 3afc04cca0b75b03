"""Endpoint routes under ``/api/v1/endpoints``: the desired state serving replicas converge on."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from mlharbor.api.context import actor_of, registry_of, request_id_of
from mlharbor.registry.endpoints import EndpointService, EndpointSpec

router = APIRouter(prefix="/api/v1", tags=["endpoints"])


class EndpointPatch(BaseModel):
    """Fields to change; any field of the endpoint spec except its name."""

    model_config = {"extra": "allow"}
    reason: str = Field("", max_length=2000)


def _service(request: Request) -> EndpointService:
    return EndpointService(registry_of(request))


@router.get("/endpoints")
def list_endpoints(request: Request) -> dict[str, Any]:
    items = _service(request).list_endpoints()
    return {"items": [e.to_dict() for e in items], "total": len(items)}


@router.post("/endpoints", status_code=201)
def create_endpoint(
    request: Request, body: EndpointSpec,
    reason: str = Query("", max_length=2000, description="Kept in the deployment ledger."),
) -> dict[str, Any]:
    endpoint = _service(request).create(body, actor=actor_of(request), reason=reason,
                                        request_id=request_id_of(request))
    return endpoint.to_dict()


@router.get("/endpoints/{name}")
def get_endpoint(request: Request, name: str) -> dict[str, Any]:
    return _service(request).get(name).to_dict()


@router.patch("/endpoints/{name}")
def update_endpoint(request: Request, name: str, body: EndpointPatch) -> dict[str, Any]:
    changes = {k: v for k, v in body.model_dump().items() if k != "reason"}
    endpoint = _service(request).update(name, changes, actor=actor_of(request),
                                        reason=body.reason, request_id=request_id_of(request))
    return endpoint.to_dict()


@router.put("/endpoints/{name}")
def replace_endpoint(
    request: Request, name: str, body: EndpointSpec,
    reason: str = Query("", max_length=2000, description="Kept in the deployment ledger."),
) -> dict[str, Any]:
    endpoint = _service(request).update(name, body.model_dump(), actor=actor_of(request),
                                        reason=reason, request_id=request_id_of(request),
                                        replace=True)
    return endpoint.to_dict()


@router.delete("/endpoints/{name}", status_code=204)
def delete_endpoint(
    request: Request, name: str,
    reason: str = Query("", max_length=2000, description="Kept in the deployment ledger."),
) -> None:
    _service(request).delete(name, actor=actor_of(request), reason=reason,
                             request_id=request_id_of(request))


@router.get("/endpoints/{name}/history")
def endpoint_history(request: Request, name: str) -> dict[str, Any]:
    return {"items": [c.to_dict() for c in _service(request).history(name)]}
