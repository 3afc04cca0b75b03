"""The one policy table: which role may do which action, on what scope.

Every surface (control-plane HTTP API, serving, GraphQL, dashboard, CLI talking to a server)
authorises through :func:`allows` with an action from :data:`ACTIONS`; the HTTP surfaces map
their routes to actions in :mod:`mlharbor.security.routemap`.

A *grant* is a role on a scope: ``"*"`` (everything), ``"model:NAME"`` or ``"endpoint:NAME"``
(NAME may use ``*`` wildcards, e.g. ``model:fraud-*``). Written as ``ROLE`` (global) or
``ROLE@SCOPE``: ``deployer@model:churn``. A grant on a model or endpoint allows the action on
that resource only; actions on no particular resource (listing, creating) need a global grant.
"""

from __future__ import annotations

import dataclasses
from fnmatch import fnmatchcase

from mlharbor.core.errors import InvalidInputError

GLOBAL = "*"
RESOURCE_KINDS = ("model", "endpoint")

#: Every action a surface may ask about, and what it covers.
ACTIONS: dict[str, str] = {
    "read": "read models, versions, aliases, endpoints, docs and the API schema",
    "predict": "call prediction endpoints",
    "model.write": "create, change and delete models; register, change, archive versions",
    "alias.write": "move and remove aliases (champion, production ...)",
    "endpoint.write": "create, change and delete serving endpoints",
    "audit.read": "read and export the audit trail",
    "admin": "manage users, service accounts, API keys and role bindings",
}

#: THE policy table: role -> actions. Change it here and every surface follows.
ROLE_ACTIONS: dict[str, frozenset[str]] = {
    "viewer": frozenset({"read"}),
    "predictor": frozenset({"read", "predict"}),
    "editor": frozenset({"read", "model.write"}),
    "deployer": frozenset({"read", "alias.write", "endpoint.write"}),
    "admin": frozenset(ACTIONS),
}
ROLES: tuple[str, ...] = tuple(ROLE_ACTIONS)


@dataclasses.dataclass(frozen=True, slots=True)
class Resource:
    """What an action is about: a model or an endpoint by name."""

    kind: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}"


@dataclasses.dataclass(frozen=True, slots=True)
class Grant:
    role: str
    scope: str = GLOBAL

    @classmethod
    def parse(cls, text: str) -> Grant:
        """``ROLE`` or ``ROLE@KIND:NAME``; unknown roles and scopes are refused."""
        role, _, scope = text.strip().partition("@")
        return cls(check_role(role), check_scope(scope or GLOBAL))

    def covers(self, resource: Resource | None) -> bool:
        if self.scope == GLOBAL:
            return True
        if resource is None:
            return False
        kind, _, pattern = self.scope.partition(":")
        return kind == resource.kind and fnmatchcase(resource.name, pattern)

    def __str__(self) -> str:
        return self.role if self.scope == GLOBAL else f"{self.role}@{self.scope}"


@dataclasses.dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: ``name`` goes to the audit trail, ``grants`` to the policy."""

    name: str
    kind: str  # "user", "service" or "oidc"
    grants: tuple[Grant, ...]
    credential: str  # key prefix or token subject: what rate limits count against

    @property
    def roles(self) -> frozenset[str]:
        return frozenset(g.role for g in self.grants)


def check_role(role: str) -> str:
    if role not in ROLE_ACTIONS:
        raise InvalidInputError(
            f"Unknown role {role!r}; known roles: {', '.join(ROLES)}.", field="role"
        )
    return role


def check_scope(scope: str) -> str:
    if scope == GLOBAL:
        return scope
    kind, sep, name = scope.partition(":")
    if not sep or kind not in RESOURCE_KINDS or not name or len(scope) > 300:
        raise InvalidInputError(
            f"Scope {scope!r} is not '*', 'model:NAME' or 'endpoint:NAME'.",
            hint="Example: deployer@model:churn, predictor@endpoint:fraud-*.",
            field="scope",
        )
    return scope


def check_action(action: str) -> str:
    if action not in ACTIONS:
        raise InvalidInputError(
            f"Unknown action {action!r}; known actions: {', '.join(ACTIONS)}.", field="action"
        )
    return action


def allows(principal: Principal, action: str, resource: Resource | None) -> bool:
    """True when one of the principal's grants allows ``action`` on ``resource``."""
    return any(
        action in ROLE_ACTIONS[g.role] and g.covers(resource) for g in principal.grants
    )


def require(principal: Principal | None, action: str, resource: Resource | None = None) -> None:
    """Raise unless ``principal`` may do ``action`` on ``resource``: for checks inside a route
    (GraphQL resolvers, dashboard actions) finer than the route table."""
    from mlharbor.core.errors import AuthenticationError, PermissionDeniedError

    if principal is None:
        raise AuthenticationError("This action needs credentials.",
                                  hint="Send 'Authorization: Bearer <API key or token>'.")
    if not allows(principal, check_action(action), resource):
        target = str(resource) if resource else "everything"
        raise PermissionDeniedError(
            f"{principal.name!r} may not {action} on {target}.",
            hint="Ask an admin for a role that allows it (`mlharbor admin policy`).",
        )


def matrix() -> dict[str, dict[str, bool]]:
    """role -> action -> allowed, on a global scope: the table as documentation shows it."""
    return {role: {a: a in acts for a in ACTIONS} for role, acts in ROLE_ACTIONS.items()}
