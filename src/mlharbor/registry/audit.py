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
import re
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import Connection, select

from mlharbor.core.clock import utcnow
from mlharbor.core.errors import InvalidInputError
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
class Anchor:
    """A head recorded earlier: its hash, and its sequence number when it was kept too."""

    hash: str
    seq: int | None = None


_HASH_RE = re.compile(r"(?<![0-9a-fA-F])[0-9a-fA-F]{64}(?![0-9a-fA-F])")
_SEQ_RE = re.compile(r"(?<![0-9A-Za-z])\d{1,19}(?![0-9A-Za-z])")


def parse_anchor(text: str) -> Anchor:
    """Read an anchor as ``mlharbor audit head`` prints it (``SEQ HASH``), or as just the
    hash, with any label or surrounding whitespace (``head 6 ab12...``), or the JSON of
    ``GET /api/v1/audit/head``. Anything without exactly one 64-hex-digit hash is refused."""
    stripped = text.strip()
    if stripped.startswith("{"):
        return _json_anchor(stripped)
    hashes = _HASH_RE.findall(stripped)
    if len(hashes) != 1:
        raise InvalidInputError(
            f"The anchor {stripped[:100]!r} holds {len(hashes) or 'no'} head hash(es) of 64 hex "
            "digits; expected one.", field="anchor",
            hint="Pass what `mlharbor audit head` printed, e.g. '6 3fa9...'.")
    rest = _HASH_RE.sub(" ", stripped)
    numbers = _SEQ_RE.findall(rest)
    if len(numbers) > 1:
        raise InvalidInputError(
            f"The anchor {stripped[:100]!r} holds several numbers; expected at most one "
            "sequence number before the hash.", field="anchor",
            hint="Pass what `mlharbor audit head` printed, e.g. '6 3fa9...'.")
    return Anchor(hashes[0].lower(), int(numbers[0]) if numbers else None)


def _json_anchor(text: str) -> Anchor:
    try:
        body = json.loads(text)
    except ValueError as exc:
        raise InvalidInputError(f"The anchor looks like JSON but is not: {exc}.",
                                field="anchor") from exc
    digest, seq = (body.get("hash"), body.get("seq")) if isinstance(body, dict) else (None, None)
    if not isinstance(digest, str) or not _HASH_RE.fullmatch(digest) or not (
            seq is None or (isinstance(seq, int) and not isinstance(seq, bool) and seq >= 0)):
        raise InvalidInputError("The anchor JSON needs a 64-hex-digit 'hash' and may have a "
                                "whole-number 'seq' (as GET /api/v1/audit/head answers).",
                                field="anchor")
    return Anchor(digest.lower(), seq)


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


def verify_chain(
    events: Iterable[AuditEvent], *, anchor: str | Anchor | None = None
) -> ChainVerdict:
    """Recompute the chain; ``anchor`` is a head recorded elsewhere (detects truncation).

    The anchored record must still be in the chain (at its sequence number, when the anchor
    has one). The genesis anchor (``0 000...0``, what ``audit head`` prints for an empty
    chain) fits every chain.
    """
    wanted = parse_anchor(anchor) if isinstance(anchor, str) else anchor
    expected_prev = GENESIS_HASH
    expected_seq = 1
    checked = 0
    last: AuditEvent | None = None
    anchor_seen = wanted is None or (wanted.hash == GENESIS_HASH and wanted.seq in (None, 0))
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
        if wanted is not None and wanted.seq == event.seq and wanted.hash != event.hash:
            return _bad(checked, event.seq, "the anchored head hash is not this record's "
                        "(the chain was rewritten)", last)
        if wanted is not None and event.hash == wanted.hash:
            if wanted.seq not in (None, event.seq):
                return _bad(checked, event.seq, f"the anchor names record {wanted.seq}, but its "
                            f"hash is record {event.seq}'s", last)
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
