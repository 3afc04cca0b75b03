"""``GET /ui/whoami``: who the dashboard's caller is and what their grants let them read.

The page asks once at start, so it offers only the sections its caller may open (the audit
trail needs ``audit.read``) instead of showing a section that can only fail. The answer is a
convenience, never a guard: every JSON route is authorised on its own by the route table.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

router = APIRouter(tags=["dashboard"], include_in_schema=False)


@router.get("/ui/whoami")
def whoami(request: Request) -> dict[str, Any]:
    """The caller's name, kind and grants, and the actions they hold on everything."""
    from mlharbor.security.policy import ACTIONS, allows

    principal = getattr(request.state, "principal", None)
    if principal is None:  # an app mounted without authentication (tests of the page alone)
        return {"name": None, "kind": None, "grants": [], "actions": []}
    return {"name": principal.name, "kind": principal.kind,
            "grants": [str(g) for g in principal.grants],
            "actions": [a for a in ACTIONS if allows(principal, a, None)]}
