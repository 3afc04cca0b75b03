"""The audit trail detects every kind of tampering; each denied request leaves one record."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from mlharbor.bootstrap import open_registry
from mlharbor.registry.audit import verify_chain
from mlharbor.settings import Settings
from tests.security.fixtures import bearer
from tests.support import cli_env, run_cli

Tamper = Callable[[Any], int]  # changes the table, returns the first bad seq expected


def _edit(conn: Any) -> int:
    conn.execute(text("UPDATE audit_events SET actor = 'mallory' WHERE seq = 3"))
    return 3


def _edit_details(conn: Any) -> int:
    conn.execute(text("UPDATE audit_events SET outcome = 'failure' WHERE seq = 2"))
    return 2


def _delete(conn: Any) -> int:
    conn.execute(text("DELETE FROM audit_events WHERE seq = 4"))
    return 4


def _swap(conn: Any) -> int:
    # Exchange records 2 and 3 wholesale (content moves, sequence numbers stay in order).
    conn.execute(text("UPDATE audit_events SET seq = -2 WHERE seq = 2"))
    conn.execute(text("UPDATE audit_events SET seq = 2 WHERE seq = 3"))
    conn.execute(text("UPDATE audit_events SET seq = 3 WHERE seq = -2"))
    return 2


def _rehash_edit(conn: Any) -> int:
    """An attacker who edits a record and recomputes its own hash still breaks the next link."""
    from sqlalchemy import select

    from mlharbor.registry.audit import canonical_hash, row_to_event
    from mlharbor.registry.schema import audit_events

    row = conn.execute(select(audit_events).where(audit_events.c.seq == 3)).one()
    event = row_to_event(row)
    new_hash = canonical_hash(seq=3, at=event.at, actor="mallory", action=event.action,
                              resource=event.resource, request_id=event.request_id,
                              outcome=event.outcome, details=event.details,
                              prev_hash=event.prev_hash)
    conn.execute(text("UPDATE audit_events SET actor = 'mallory', hash = :h WHERE seq = 3"),
                 {"h": new_hash})
    return 4


SCENARIOS: dict[str, Tamper] = {"edit": _edit, "edit-outcome": _edit_details,
                                "delete": _delete, "swap": _swap, "rehash": _rehash_edit}


def _populate(settings: Settings) -> Any:
    registry = open_registry(settings)
    for name in ("a", "b", "c"):
        registry.create_model(name, actor="alice")
    registry.update_model("a", description="x", actor="bob")
    registry.store.record(actor="anonymous", action="read", resource="model:a",
                          outcome="denied", details={"status": 401})
    registry.delete_model("c", actor="alice")
    return registry


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_tampering_is_detected_with_the_first_bad_record(db_settings: Settings,
                                                         scenario: str) -> None:
    registry = _populate(db_settings)
    try:
        before = verify_chain(registry.store.iter_audit())
        assert before.ok and before.checked == 6
        with registry.store.db.engine.begin() as conn:
            bad = SCENARIOS[scenario](conn)
        verdict = verify_chain(registry.store.iter_audit())
        assert not verdict.ok
        assert verdict.first_bad_seq == bad, verdict
    finally:
        registry.close()


def test_truncation_is_detected_with_an_anchor(db_settings: Settings) -> None:
    registry = _populate(db_settings)
    try:
        head = verify_chain(registry.store.iter_audit()).head_hash
        with registry.store.db.engine.begin() as conn:
            conn.execute(text("DELETE FROM audit_events WHERE seq >= 5"))
        assert verify_chain(registry.store.iter_audit()).ok  # a shorter chain is consistent
        verdict = verify_chain(registry.store.iter_audit(), anchor=head)
        assert not verdict.ok and verdict.first_bad_seq == 5
    finally:
        registry.close()


def test_cli_verify_head_and_export(settings: Settings, tmp_path: Any) -> None:
    _populate(settings).close()
    env = cli_env(settings)
    head = run_cli("audit", "head", env=env)
    assert head.returncode == 0, head.stderr
    seq, digest = head.stdout.split()
    assert seq == "6" and len(digest) == 64
    ok = run_cli("audit", "verify", "--anchor", digest, env=env)
    assert ok.returncode == 0 and "intact: 6 record" in ok.stdout
    out = tmp_path / "audit.jsonl"
    export = run_cli("audit", "export", "--since", "1h", "-o", str(out), env=env)
    assert export.returncode == 0, export.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["seq"] for r in lines] == [1, 2, 3, 4, 5, 6]
    assert {"actor", "action", "resource", "outcome", "hash", "prev_hash"} <= set(lines[0])
    future = run_cli("audit", "export", "--since", "2999-01-01T00:00:00", env=env)
    assert future.returncode == 0 and future.stdout == ""

    registry = open_registry(settings)
    with registry.store.db.engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_events WHERE seq = 6"))
    registry.close()
    cut = run_cli("audit", "verify", "--anchor", digest, env=env)
    assert cut.returncode == 5
    assert "broken at record 6" in cut.stderr and "Traceback" not in cut.stderr
    with open_registry(settings).store.db.engine.begin() as conn:
        conn.execute(text("UPDATE audit_events SET resource = 'x' WHERE seq = 2"))
    edited = run_cli("audit", "verify", env=env)
    assert edited.returncode == 5 and "broken at record 2" in edited.stderr


def test_each_denied_request_writes_exactly_one_record(client: httpx.Client, make_key: Any,
                                                       registry: Any) -> None:
    def count() -> int:
        return sum(1 for _ in registry.store.iter_audit())

    viewer = make_key("viewer", name="vera")
    start = count()
    assert client.post("/api/v1/models", json={"name": "m"}).status_code == 401
    assert count() == start + 1
    assert client.delete("/api/v1/models/m", headers=bearer(viewer)).status_code == 403
    assert count() == start + 2
    assert client.get("/api/v1/models", headers=bearer(viewer)).status_code == 200
    assert client.get("/livez").status_code == 200
    assert count() == start + 2  # allowed reads and probes are not audited
    events = list(registry.store.iter_audit())[-2:]
    assert [(e.actor, e.action, e.outcome, e.details["status"]) for e in events] == [
        ("anonymous", "model.write", "denied", 401),
        ("vera", "model.write", "denied", 403),
    ]
    assert events[1].resource == "model:m"
    assert events[1].request_id  # the request id ties the record to the response
    assert verify_chain(registry.store.iter_audit()).ok
