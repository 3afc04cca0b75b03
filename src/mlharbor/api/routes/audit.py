"""The audit trail over HTTP: ``GET /api/v1/audit`` (newest first, paged) and its head.

Only callers whose role allows ``audit.read`` get here (the route table says so; by default
only admins). Records are returned as stored, hash and previous hash included, so a script can
check the links of what it reads; ``mlharbor audit verify`` checks the whole chain.

Paging walks back in time: pass ``before`` = the ``next_before`` of the previous page.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request

from mlharbor.api.context import registry_of

router = APIRouter(prefix="/api/v1", tags=["audit"])

#: The largest sequence number the database can hold (a signed 64-bit integer); a larger
#: ``before`` is a 422 naming the bound, not an overflow inside the database driver.
MAX_SEQ = 2**63 - 1

#: Actions are dotted words (``alias.set``, ``deploy.kubernetes``); a trailing ``*`` matches
#: every action starting with what precedes it (``deploy.*``).
ACTION_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}\*?$"


def event_dict(event: Any) -> dict[str, Any]:
    """The JSON form of one :class:`~mlharbor.registry.audit.AuditEvent`."""
    return {"seq": event.seq, "at": event.at.isoformat(), "actor": event.actor,
            "action": event.action, "resource": event.resource,
            "request_id": event.request_id, "outcome": event.outcome,
            "details": event.details, "prev_hash": event.prev_hash, "hash": event.hash}


def action_filter(column: Any, action: str) -> Any:
    """A SQL condition on ``column``: equal to ``action``, or a prefix when it ends in ``*``."""
    return like_prefix(column, action[:-1]) if action.endswith("*") else column == action


def like_prefix(column: Any, prefix: str) -> Any:
    """``column`` starts with ``prefix`` (LIKE wildcards in ``prefix`` match themselves)."""
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return column.like(f"{escaped}%", escape="\\")


@router.get("/audit")
def list_audit(
    request: Request,
    limit: int = Query(100, ge=1, le=1000, description="Records per page."),
    before: int | None = Query(None, ge=1, le=MAX_SEQ,
                               description="Only records older than this seq "
                               "(the next_before of the previous page)."),
    action: str | None = Query(None, pattern=ACTION_PATTERN,
                               description="An action, or a prefix ending in * (deploy.*)."),
    actor: str | None = Query(None, min_length=1, max_length=255),
    outcome: str | None = Query(None, pattern="^(success|failure|denied)$"),
) -> dict[str, Any]:
    """Audit records, newest first."""
    from sqlalchemy import select

    from mlharbor.registry.audit import row_to_event
    from mlharbor.registry.schema import audit_events as table

    query = select(table).order_by(table.c.seq.desc()).limit(limit + 1)
    if before is not None:
        query = query.where(table.c.seq < before)
    if action is not None:
        query = query.where(action_filter(table.c.action, action))
    if actor is not None:
        query = query.where(table.c.actor == actor)
    if outcome is not None:
        query = query.where(table.c.outcome == outcome)
    with registry_of(request).store.db.read() as conn:
        rows = conn.execute(query).all()
    events = [row_to_event(r) for r in rows[:limit]]
    more = len(rows) > limit
    return {"items": [event_dict(e) for e in events],
            "next_before": events[-1].seq if more and events else None}


@router.get("/audit/head")
def audit_head(request: Request) -> dict[str, Any]:
    """The newest record's seq and hash: an anchor to keep elsewhere, so a later
    ``mlharbor audit verify --anchor`` detects a truncated or rewritten chain."""
    from sqlalchemy import select

    from mlharbor.registry.schema import audit_events as table

    with registry_of(request).store.db.read() as conn:
        row = conn.execute(select(table.c.seq, table.c.hash, table.c.at)
                           .order_by(table.c.seq.desc()).limit(1)).first()
    if row is None:
        return {"seq": None, "hash": None, "at": None}
    from mlharbor.registry.store import aware

    return {"seq": int(row.seq), "hash": row.hash, "at": aware(row.at).isoformat()}
