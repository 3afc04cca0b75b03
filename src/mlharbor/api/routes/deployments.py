"""The deployment ledger over HTTP: ``GET /api/v1/deployments``, newest first.

What reached production, when and by whom comes from three stored records, merged here:

* ``alias``: an alias set, moved or removed (``alias_history``: which version ``@champion``
  points to is what endpoints serve);
* ``endpoint``: an endpoint created, changed or deleted (``endpoint_history``, with the spec
  of each revision);
* ``deploy``: a version packaged and deployed to a target (the ``deploy.<target>`` audit
  records of :mod:`mlharbor.deploy.base`, successes and failures).

Reading the ledger needs ``read`` only: it holds no more than the alias history and endpoint
history routes already show, plus where versions were deployed.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Query, Request

from mlharbor.api.context import registry_of

router = APIRouter(prefix="/api/v1", tags=["deployments"])
KINDS = ("alias", "endpoint", "deploy")


@router.get("/deployments")
def list_deployments(
    request: Request,
    limit: int = Query(100, ge=1, le=1000, description="Entries per page."),
    before: datetime | None = Query(None, description="Only entries older than this time "
                                    "(the next_before of the previous page)."),
    kind: list[str] | None = Query(None, description="alias, endpoint or deploy; repeatable."),
    model: str | None = Query(None, min_length=1, max_length=255,
                              description="Only entries about this model."),
) -> dict[str, Any]:
    """Alias moves, endpoint revisions and deployments merged, newest first."""
    from mlharbor.api.routes.params import invalid_query

    kinds = tuple(kind or KINDS)
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        invalid_query("kind", f"Unknown kind {unknown[0]!r}; expected one of "
                      f"{', '.join(KINDS)}.", unknown[0])
    if before is not None:
        from datetime import UTC

        before = (before.replace(tzinfo=UTC) if before.tzinfo is None
                  else before.astimezone(UTC))
    readers = {"alias": _alias_moves, "endpoint": _endpoint_changes, "deploy": _deploys}
    entries: list[dict[str, Any]] = []
    with registry_of(request).store.db.read() as conn:
        for name in kinds:
            entries += readers[name](conn, limit + 1, before, model)
    entries.sort(key=lambda e: e["at"], reverse=True)
    page = entries[:limit]
    more = len(entries) > limit
    return {"items": [{**e, "at": e["at"].isoformat()} for e in page],
            "next_before": page[-1]["at"].isoformat() if more and page else None}


def _alias_moves(conn: Any, limit: int, before: datetime | None, model: str | None
                 ) -> list[dict[str, Any]]:
    from sqlalchemy import select

    from mlharbor.registry.schema import alias_history as table
    from mlharbor.registry.store import aware

    query = select(table).order_by(table.c.at.desc(), table.c.id.desc()).limit(limit)
    if before is not None:
        query = query.where(table.c.at < before)
    if model is not None:
        query = query.where(table.c.model_name == model)
    out = []
    for r in conn.execute(query):
        verb = ("removed" if r.to_version is None else
                "set" if r.from_version is None else "moved")
        out.append({
            "kind": "alias", "at": aware(r.at), "actor": r.actor, "model": r.model_name,
            "subject": f"{r.model_name}@{r.alias}", "action": f"alias.{verb}",
            "from_version": r.from_version, "to_version": r.to_version, "reason": r.reason,
            "outcome": "success",
        })
    return out


def _endpoint_changes(conn: Any, limit: int, before: datetime | None, model: str | None
                      ) -> list[dict[str, Any]]:
    from sqlalchemy import select

    from mlharbor.registry.endpoints import endpoint_history as table
    from mlharbor.registry.store import aware

    query = select(table).order_by(table.c.at.desc(), table.c.id.desc())
    if before is not None:
        query = query.where(table.c.at < before)
    if model is None:  # a model filter reads into the specs, so it cannot limit in SQL
        query = query.limit(limit)
    out = []
    for r in conn.execute(query):
        spec = r.spec or {}
        refs = [route.get("ref") for route in spec.get("routes", [])]
        models = sorted({str(ref).split("@")[0].split(":")[0] for ref in
                         [*refs, spec.get("shadow"), *spec.get("fallback", [])]
                         if ref and ref != "previous"})
        if model is not None and model not in models:
            continue
        out.append({
            "kind": "endpoint", "at": aware(r.at), "actor": r.actor, "model": None,
            "models": models, "subject": r.endpoint, "action": f"endpoint.{r.action}",
            "revision": int(r.revision), "reason": r.reason, "outcome": "success",
            "routes": [{"ref": route.get("ref"), "weight": route.get("weight")}
                       for route in spec.get("routes", [])],
            "shadow": spec.get("shadow"), "fallback": spec.get("fallback", []),
        })
        if len(out) >= limit:
            break
    return out


def _deploys(conn: Any, limit: int, before: datetime | None, model: str | None
             ) -> list[dict[str, Any]]:
    from sqlalchemy import select

    from mlharbor.api.routes.audit import action_filter, like_prefix
    from mlharbor.registry.audit import row_to_event
    from mlharbor.registry.schema import audit_events as table

    query = (select(table).where(action_filter(table.c.action, "deploy.*"))
             .order_by(table.c.seq.desc()).limit(limit))
    if before is not None:
        query = query.where(table.c.at < before)
    if model is not None:  # resources are model/<name>/version/<n> (deploy.base)
        query = query.where(like_prefix(table.c.resource, f"model/{model}/"))
    out = []
    for event in (row_to_event(r) for r in conn.execute(query)):
        details = event.details
        parts = event.resource.split("/")
        out.append({
            "kind": "deploy", "at": event.at, "actor": event.actor,
            "model": parts[1] if len(parts) > 1 else None, "subject": event.resource,
            "action": event.action, "target": details.get("target"),
            "ref": details.get("ref"), "image": details.get("image"),
            "outcome": event.outcome, "reason": details.get("message", ""),
            "seq": event.seq,
        })
    return out

