"""What a route needs from the request: the registry, the acting identity, the request id."""

from __future__ import annotations

from typing import Any

from fastapi import Request

from mlharbor.registry.service import Registry

ANONYMOUS = "anonymous"


def registry_of(request: Request) -> Registry:
    registry: Registry = request.app.state.registry
    return registry


def actor_of(request: Request) -> str:
    """The name recorded in the audit trail: set by the authentication layer when present."""
    principal: Any = getattr(request.state, "principal", None)
    if principal is None:
        return ANONYMOUS
    return str(getattr(principal, "name", principal))


def request_id_of(request: Request) -> str | None:
    value = getattr(request.state, "request_id", None)
    return str(value) if value else None
