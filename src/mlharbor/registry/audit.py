"""The audit trail: one hash-chained record per mutating action or denied attempt.

Records are appended inside the caller's transaction, so an action and its record commit
together or not at all. Each record's ``hash`` is the SHA-256 of its canonical JSON form, which
includes the previous record's hash; ``verify_chain`` recomputes the chain and names the first
sequence number that does not fit (an edited, deleted, reordered or truncated record).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import Connection, select

from mlharbor.core.clock import utcnow
from mlharbor.registry.schema import audit_events

GENESIS_HASH = "0" * 64
Outcome = Literal["success", "failure", "denied"]


@dataclasses.dataclass(frozen=True, slots=True)
class AuditEvent:
    seq: int
    at: datetime
    actor: str
    action: str
    resource: str
    request_id: str | None
    outcome: str
    details: dict[str, Any]
    prev_hash: str
    hash: str


@dataclasses.dataclass(frozen=True, slots=True)
class ChainVerdict:
    ok: bool
    checked: int
    first_bad_seq: int | None
    reason: str
    head_seq: int | None
    head_hash: str | None


def canonical_hash(
    *, seq: int, at: datetime, actor: str, action: str, resource: str, request_id: str | None,
    outcome: str, details: dict[str, Any], prev_hash: str,
) -> str:
    """SHA-256 over a canonical JSON form of the record (sorted keys, UTC microseconds)."""
    body = {
        "seq": seq,
        "at": _utc(at).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "actor": actor,
        "action": action,
        "resource": resource,
        "request_id": request_id,
        "outcome": outcome,
        "details": details,
        "prev_hash": prev_hash,
    }
    data = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return hashlib.sha256(data.encode()).hexdigest()


def append(
    conn: Connection, *, actor: str, action: str, resource: str, outcome: Outcome,
    details: dict[str, Any] | None = None, request_id: str | None = None,
) -> AuditEvent:
    """Append one record in ``conn``'s transaction; the caller holds the chain lock."""
    last = conn.execute(
        select(audit_events.c.seq, audit_events.c.hash).order_by(audit_events.c.seq.desc()).limit(1)
    ).first()
    seq = 1 if last is None else int(last.seq) + 1
    prev_hash = GENESIS_HASH if last is None else str(last.hash)
    # Round-trip details through JSON so the hash covers exactly what is stored.
    clean_details = json.loads(json.dumps(details or {}, default=str))
    at = utcnow()
    digest = canonical_hash(
        seq=seq, at=at, actor=actor, action=action, resource=resource, request_id=request_id,
        outcome=outcome, details=clean_details, prev_hash=prev_hash,
    )
    row = {
        "seq": seq, "at": at, "actor": actor, "action": action, "resource": resource,
        "request_id": request_id, "outcome": outcome, "details": clean_details,
        "prev_hash": prev_hash, "hash": digest,
    }
    conn.execute(audit_events.insert().values(**row))
    return AuditEvent(**row)


def row_to_event(row: Any) -> AuditEvent:
    return AuditEvent(
        seq=int(row.seq), at=_utc(row.at), actor=row.actor, action=row.action,
        resource=row.resource, request_id=row.request_id, outcome=row.outcome,
        details=dict(row.details or {}), prev_hash=row.prev_hash, hash=row.hash,
    )


def verify_chain(events: Iterable[AuditEvent], *, anchor: str | None = None) -> ChainVerdict:
    """Recompute the chain; ``anchor`` is a head hash recorded elsewhere (detects truncation)."""
    expected_prev = GENESIS_HASH
    expected_seq = 1
    checked = 0
    last: AuditEvent | None = None
    anchor_seen = anchor is None
    for event in events:
        if event.seq != expected_seq:
            return _bad(checked, expected_seq, f"expected record {expected_seq}, found {event.seq}"
                        " (a record was deleted or reordered)", last)
        if event.prev_hash != expected_prev:
            return _bad(checked, event.seq, "its prev_hash does not match the previous record",
                        last)
        recomputed = canonical_hash(
            seq=event.seq, at=event.at, actor=event.actor, action=event.action,
            resource=event.resource, request_id=event.request_id, outcome=event.outcome,
            details=event.details, prev_hash=event.prev_hash,
        )
        if recomputed != event.hash:
            return _bad(checked, event.seq, "its content does not match its hash (edited)", last)
        if anchor is not None and event.hash == anchor:
            anchor_seen = True
        expected_prev = event.hash
        expected_seq += 1
        checked += 1
        last = event
    if not anchor_seen:
        return _bad(checked, expected_seq, "the anchored head hash is missing (the chain was "
                    "truncated or rewritten)", last)
    return ChainVerdict(True, checked, None, "intact", last.seq if last else None,
                        last.hash if last else None)


def _bad(checked: int, seq: int, reason: str, last: AuditEvent | None) -> ChainVerdict:
    return ChainVerdict(False, checked, seq, reason, last.seq if last else None,
                        last.hash if last else None)


def iter_events(conn: Connection, *, since: datetime | None = None) -> Iterator[AuditEvent]:
    query = select(audit_events).order_by(audit_events.c.seq)
    if since is not None:
        query = query.where(audit_events.c.at >= since)
    for row in conn.execute(query):
        yield row_to_event(row)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
