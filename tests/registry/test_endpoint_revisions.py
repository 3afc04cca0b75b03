"""Endpoint revisions: concurrent edits never lose a change, stale writes are refused and
audited as failures; on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mlharbor.core.errors import ConflictError, InvalidInputError
from mlharbor.registry.endpoints import EndpointService
from mlharbor.registry.service import Registry
from mlharbor.settings import Settings
from tests.registry.test_races import _race

SPEC = {"name": "scoring", "routes": [{"ref": "churn:1"}]}


@pytest.fixture
def registry(db_settings: Settings, tmp_path: Path) -> Iterator[Registry]:
    reg = Registry.from_settings(db_settings)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "model.bin").write_bytes(b"weights")
    reg.register_version("churn", bundle)
    yield reg
    reg.close()


def _outcomes(registry: Registry, action: str) -> list[str]:
    return [e.outcome for e in registry.store.iter_audit()
            if e.action == action and e.resource == "endpoint/scoring"]


def test_two_writers_from_one_revision_one_conflicts_and_nothing_is_lost(
    registry: Registry,
) -> None:
    service = EndpointService(registry)
    start = service.create(SPEC, actor="setup").revision
    changes: list[dict[str, Any]] = [{"description": "from alice"},
                                     {"limits": {"timeout_ms": 250}}]
    read = threading.Barrier(2)

    def writer(i: int) -> str:
        seen = service.get("scoring").revision
        read.wait()  # both have read the same revision before either writes
        try:
            service.update("scoring", changes[i], actor=f"w{i}", expected_revision=seen)
            return "won"
        except ConflictError as exc:
            assert exc.details["expected_revision"] == seen == start
            assert exc.details["current_revision"] == start + 1
            again = service.get("scoring")  # the loser reads again and reapplies its change
            service.update("scoring", changes[i], actor=f"w{i}",
                           expected_revision=again.revision)
            return "retried"

    assert sorted(_race(2, writer)) == ["retried", "won"]
    final = service.get("scoring")
    assert final.revision == start + 2
    assert final.spec.description == "from alice" and final.spec.limits.timeout_ms == 250
    assert sorted(_outcomes(registry, "endpoint.update")) == ["failure", "success", "success"]
    # The ledger has each revision once, in order.
    assert [c.revision for c in service.history("scoring")] == [start, start + 1, start + 2]


def test_unconditional_concurrent_edits_of_different_fields_all_land(
    registry: Registry,
) -> None:
    service = EndpointService(registry)
    start = service.create(SPEC, actor="setup").revision
    edits: list[dict[str, Any]] = [
        {"description": "d"}, {"limits": {"max_rows": 10}}, {"sticky_header": "x-user"},
        {"fallback": ["previous"]}, {"batching": {"max_batch_size": 4}},
        {"default_answer": {"prediction": 0}},
    ]
    results = _race(len(edits), lambda i: service.update("scoring", edits[i], actor=f"w{i}"))
    assert not [r for r in results if isinstance(r, Exception)], results
    spec = service.get("scoring").spec
    assert (spec.description, spec.limits.max_rows, spec.sticky_header, spec.fallback,
            spec.batching.max_batch_size) == ("d", 10, "x-user", ["previous"], 4)
    assert spec.default_answer is not None and spec.default_answer.prediction == 0
    assert service.get("scoring").revision == start + len(edits)
    assert sorted(c.revision for c in service.history("scoring")) == list(
        range(start, start + len(edits) + 1))


def test_stale_replace_and_delete_are_refused_and_audited(registry: Registry) -> None:
    service = EndpointService(registry)
    service.create(SPEC, actor="setup")
    service.update("scoring", {"description": "second"}, actor="bob", expected_revision=1)
    with pytest.raises(ConflictError, match="revision 2, not 1"):
        service.update("scoring", {**SPEC, "description": "stale"}, actor="carol",
                       replace=True, expected_revision=1)
    with pytest.raises(ConflictError) as caught:
        service.delete("scoring", actor="carol", expected_revision=1)
    assert caught.value.details == {"expected_revision": 1, "current_revision": 2}
    assert service.get("scoring").spec.description == "second"
    assert _outcomes(registry, "endpoint.update") == ["success", "failure"]
    assert _outcomes(registry, "endpoint.delete") == ["failure"]
    service.delete("scoring", actor="carol", expected_revision=2)
    assert _outcomes(registry, "endpoint.delete") == ["failure", "success"]


def test_a_recreated_endpoint_never_reuses_a_revision(registry: Registry) -> None:
    service = EndpointService(registry)
    assert service.create(SPEC, actor="a").revision == 1
    service.delete("scoring", actor="a")  # ledger: create 1, delete 2
    again = service.create(SPEC, actor="a")
    assert again.revision == 3
    # A revision read before the delete does not match the new endpoint.
    with pytest.raises(ConflictError):
        service.update("scoring", {"description": "x"}, actor="a", expected_revision=1)
    assert [(c.action, c.revision) for c in service.history("scoring")] == [
        ("create", 1), ("delete", 2), ("create", 3)]


@pytest.mark.parametrize("bad", [0, -3, True, "2", 2.0])
def test_a_revision_must_be_a_positive_whole_number(registry: Registry, bad: Any) -> None:
    service = EndpointService(registry)
    service.create(SPEC, actor="a")
    with pytest.raises(InvalidInputError, match="positive whole number"):
        service.update("scoring", {"description": "x"}, actor="a", expected_revision=bad)
    assert service.get("scoring").revision == 1
