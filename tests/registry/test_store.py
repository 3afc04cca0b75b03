"""Registry rules on SQLite and PostgreSQL (every test runs on both via ``db_settings``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mlharbor.core.errors import ConflictError, InvalidInputError, NotFoundError
from mlharbor.core.records import VersionStatus
from mlharbor.registry.service import Registry
from mlharbor.settings import Settings


@pytest.fixture
def registry(db_settings: Settings) -> Registry:
    reg = Registry.from_settings(db_settings)
    yield reg
    reg.close()


def make_bundle(root: Path, content: bytes = b"weights") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "model.bin").write_bytes(content)
    (root / "meta").mkdir(exist_ok=True)
    (root / "meta" / "info.json").write_text('{"a": 1}')
    return root


def test_versions_number_up_and_latest_resolves(registry: Registry, tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b")
    v1 = registry.register_version("churn", bundle, metrics={"f1": 0.8}, params={"depth": 8},
                                   tags={"team": "risk"}, lineage={"dataset": "abc"})
    v2 = registry.register_version("churn", bundle)
    assert (v1.version, v2.version) == (1, 2)
    assert v1.status is VersionStatus.READY
    assert {f.path for f in v1.files} == {"model.bin", "meta/info.json"}
    assert v1.metrics == {"f1": 0.8} and v1.params == {"depth": "8"}
    assert v1.lineage["dataset"] == "abc"
    assert v1.lineage["python"] and "numpy" in v1.lineage["packages"]
    assert registry.get_version("churn").version == 2
    assert registry.get_version("churn:latest").version == 2
    assert registry.get_version("churn:1").tags == {"team": "risk"}


def test_aliases_move_with_history(registry: Registry, tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b")
    for _ in range(3):
        registry.register_version("churn", bundle)
    registry.set_alias("churn", "champion", 1, actor="alice", reason="first")
    registry.set_alias("churn", "champion", 3, actor="bob", reason="better f1")
    registry.set_alias("churn", "challenger", 2)
    assert registry.get_version("churn@champion").version == 3
    assert registry.get_model("churn").aliases == {"champion": 3, "challenger": 2}
    registry.delete_alias("churn", "challenger", actor="carol", reason="done")
    history = registry.alias_history("churn")
    assert [(m.alias, m.from_version, m.to_version, m.actor, m.reason) for m in history] == [
        ("champion", None, 1, "alice", "first"),
        ("champion", 1, 3, "bob", "better f1"),
        ("challenger", None, 2, "local", ""),
        ("challenger", 2, None, "carol", "done"),
    ]
    assert [m.to_version for m in registry.alias_history("churn", "champion")] == [1, 3]
    with pytest.raises(NotFoundError, match=r"no alias 'challenger'.*Known aliases: champion"):
        registry.get_version("churn@challenger")


def test_aliased_version_cannot_be_deleted_or_archived(registry: Registry, tmp_path: Path
                                                      ) -> None:
    bundle = make_bundle(tmp_path / "b")
    registry.register_version("churn", bundle)
    registry.register_version("churn", bundle)
    registry.set_alias("churn", "champion", 1)
    with pytest.raises(ConflictError, match="alias @champion points to it"):
        registry.delete_version("churn:1")
    with pytest.raises(ConflictError, match="alias @champion points to it"):
        registry.archive_version("churn:1")
    with pytest.raises(ConflictError, match="@champion"):
        registry.delete_model("churn")
    # Nothing changed.
    assert registry.get_version("churn@champion").version == 1
    assert not registry.get_version("churn:1").archived
    # Archive the other one: latest falls back; an archived version takes no alias.
    registry.archive_version("churn:2")
    assert registry.get_version("churn").version == 1
    with pytest.raises(ConflictError, match="archived"):
        registry.set_alias("churn", "challenger", 2)
    registry.unarchive_version("churn:2")
    registry.delete_alias("churn", "champion")
    registry.delete_version("churn:1")
    with pytest.raises(NotFoundError):
        registry.get_version("churn:1")
    registry.delete_model("churn")
    with pytest.raises(NotFoundError):
        registry.get_model("churn")


def test_failed_versions_take_no_alias_and_are_not_latest(registry: Registry, tmp_path: Path
                                                         ) -> None:
    bundle = make_bundle(tmp_path / "b")
    registry.register_version("churn", bundle)
    failed = registry.register_version("churn", bundle, status="failed",
                                       status_reason="gate f1 >= 0.9 failed")
    assert failed.status is VersionStatus.FAILED
    assert registry.get_version("churn").version == 1
    with pytest.raises(ConflictError, match="failed"):
        registry.set_alias("churn", "champion", 2)
    with pytest.raises(InvalidInputError, match="only ready versions"):
        registry.download("churn:2")


def test_list_search_and_pagination(registry: Registry, tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b")
    for i in range(5):
        registry.create_model(f"model-{i}", description=f"number {i}",
                              tags={"team": "a" if i % 2 else "b"})
    registry.register_version("model-1", bundle)
    first = registry.list_models(page_size=2)
    assert [m.name for m in first.items] == ["model-0", "model-1"] and first.total == 5
    second = registry.list_models(page_size=2, page_token=first.next_page_token)
    third = registry.list_models(page_size=2, page_token=second.next_page_token)
    assert [m.name for m in second.items + third.items] == ["model-2", "model-3", "model-4"]
    assert third.next_page_token is None
    assert [m.name for m in registry.list_models(tags={"team": "a"}).items] == [
        "model-1", "model-3"]
    assert [m.name for m in registry.list_models(name_contains="-4").items] == ["model-4"]
    assert registry.list_models(name_contains="%").total == 0
    # a search box: case-blind on SQLite and PostgreSQL alike
    assert [m.name for m in registry.list_models(name_contains="MODEL-4").items] == ["model-4"]
    with pytest.raises(InvalidInputError, match="page_token"):
        registry.list_models(page_token="garbage!")
    with pytest.raises(InvalidInputError, match="page_size"):
        registry.list_models(page_size=0)
    versions = registry.list_versions("model-1", status="ready")
    assert [v.version for v in versions.items] == [1]


def test_every_change_is_audited_once(registry: Registry, tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b")
    registry.create_model("churn", description="d")
    registry.register_version("churn", bundle, actor="alice", request_id="req-1")
    registry.set_alias("churn", "champion", 1, actor="bob")
    with pytest.raises(ConflictError):
        registry.delete_version("churn:1", actor="eve")
    events = list(registry.store.iter_audit())
    assert [(e.action, e.actor, e.outcome) for e in events] == [
        ("model.create", "local", "success"),
        ("version.register", "alice", "success"),
        ("alias.set", "bob", "success"),
        ("version.delete", "eve", "failure"),
    ]
    assert events[1].request_id == "req-1"
    assert events[1].resource == "model/churn/version/1"
    from mlharbor.registry.audit import verify_chain

    assert verify_chain(events).ok


def test_duplicate_model_and_bad_inputs(registry: Registry, tmp_path: Path) -> None:
    registry.create_model("churn")
    with pytest.raises(ConflictError, match="already exists"):
        registry.create_model("churn")
    with pytest.raises(InvalidInputError, match="neither a file nor a folder"):
        registry.register_version("churn", tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InvalidInputError, match="empty"):
        registry.register_version("churn", empty)
    with pytest.raises(InvalidInputError, match="Metric 'f1' must be a number"):
        registry.register_version("churn", make_bundle(tmp_path / "b"), metrics={"f1": "high"})
    with pytest.raises(InvalidInputError, match="positive whole number"):
        registry.set_alias("churn", "champion", 0)
    # None of the refused registrations took a version number or left a record behind.
    assert registry.list_versions("churn").total == 0


def test_migrations_match_the_schema(db_settings: Settings) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from mlharbor.registry.schema import metadata

    reg = Registry.from_settings(db_settings)
    try:
        with reg.store.db.engine.connect() as conn:
            context = MigrationContext.configure(conn)
            # Other stages (security, endpoints) own their tables and check them themselves.
            diff = [d for d in compare_metadata(context, metadata)
                    if _table_of(d) in (None, *metadata.tables)]
        assert diff == []
    finally:
        reg.close()


def _table_of(diff: object) -> str | None:
    """The table an Alembic autogenerate diff entry is about (None when unknown)."""
    entry: Any = diff[0] if isinstance(diff, list) else diff  # modify_* come grouped
    kind = entry[0]
    if kind in ("add_table", "remove_table"):
        return str(entry[1].name)
    if kind in ("add_index", "remove_index", "add_constraint", "remove_constraint",
                "add_fk", "remove_fk"):
        return str(entry[1].table.name)
    if kind in ("add_column", "remove_column") or str(kind).startswith("modify_"):
        return str(entry[2])
    return None


def test_links_out_of_the_bundle_are_refused(registry: Registry, tmp_path: Path) -> None:
    outside = tmp_path / "secret.txt"
    outside.write_text("secret")
    bundle = make_bundle(tmp_path / "b")
    (bundle / "link").symlink_to(outside)
    from mlharbor.core.errors import UnsafeArtifactError

    with pytest.raises(UnsafeArtifactError, match="links outside the bundle"):
        registry.register_version("churn", bundle)


def test_a_table_gone_from_the_database_is_unavailable_not_a_crash(db_settings: Settings
                                                                    ) -> None:
    """A schema changed behind mlharbor's back (a table dropped by hand) is the store's trouble,
    not the caller's: 503-class UnavailableError naming the database, on SQLite (where the
    driver says OperationalError) and on PostgreSQL (ProgrammingError) alike."""
    from sqlalchemy import text

    from mlharbor.core.errors import UnavailableError

    reg = Registry.from_settings(db_settings)
    try:
        cascade = "" if reg.store.db.is_sqlite else " CASCADE"
        with reg.store.db.engine.begin() as conn:
            conn.execute(text(f"DROP TABLE registered_models{cascade}"))
        with pytest.raises(UnavailableError) as info:
            reg.get_model("churn")
        assert reg.store.db.dialect in str(info.value)
        assert "registered_models" in str(info.value)
    finally:
        reg.close()


def test_a_missing_privilege_is_named_as_such(pg_url: str, tmp_path: Path) -> None:
    """PostgreSQL's permission-denied (42501) is not a schema mismatch: the answer says which,
    and points at the statements that grant mlharbor's privileges."""
    import uuid

    from sqlalchemy.engine import make_url

    from mlharbor.core.errors import UnavailableError
    from tests.conftest import _pg_admin_connect

    owner = Registry.from_settings(Settings(home=tmp_path / "owner", database_url=pg_url))
    owner.close()
    role = f"mlh_noaccess_{uuid.uuid4().hex[:8]}"
    url = make_url(pg_url)
    with _pg_admin_connect() as conn:
        conn.execute(f'CREATE ROLE "{role}" LOGIN')
    try:
        stranger = Registry.from_settings(Settings(
            home=tmp_path / "stranger",
            database_url=url.set(username=role).render_as_string(hide_password=False)),
            migrate=False)
        try:
            with pytest.raises(UnavailableError) as info:
                stranger.get_model("churn")
            assert "lack of a privilege" in str(info.value)
            assert "db-roles" in (info.value.hint or "")
        finally:
            stranger.close()
    finally:
        with _pg_admin_connect(url.database or "postgres") as conn:
            conn.execute(f'REVOKE ALL ON ALL TABLES IN SCHEMA public FROM "{role}"')
        with _pg_admin_connect() as conn:
            conn.execute(f'DROP ROLE IF EXISTS "{role}"')
