"""API keys and identities: shown once, stored hashed, revocable, expiring, narrowable."""

from __future__ import annotations

import re
import time
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from mlharbor.core.clock import utcnow
from mlharbor.core.errors import ConflictError, InvalidInputError
from mlharbor.security import apikeys
from mlharbor.security.schema import api_keys
from mlharbor.settings import Settings
from tests.security import leakwatch
from tests.security.fixtures import bearer
from tests.support import cli_env, run_cli

KEY_RE = re.compile(r"mlh_[a-z2-7]{10}_[A-Za-z0-9_-]{43}")


def test_keys_are_stored_only_as_hashes(identities: Any, registry: Any) -> None:
    identities.create_identity("svc", kind="service", grants=["predictor"], actor="t")
    info, key = identities.create_key("svc", actor="t")
    leakwatch.remember_secret(key)
    assert KEY_RE.fullmatch(key) and apikeys.parse_key(key) == info.prefix
    with registry.store.db.engine.connect() as conn:
        row = conn.execute(select(api_keys)).one()
        dump = " ".join(str(v) for v in row)
    # the whole secret (it may hold '_' itself: its last '_'-part can be empty, in any dump)
    assert key not in dump and key.split("_", 2)[2] not in dump
    assert row.key_hash == apikeys.hash_key(key)
    principal = identities.authenticate_key(key)
    assert principal.name == "svc" and principal.kind == "service"
    assert [str(g) for g in principal.grants] == ["predictor"]


def test_revoked_key_is_refused_on_the_next_request(client: httpx.Client, make_key: Any,
                                                    identities: Any) -> None:
    key = make_key("viewer")
    assert client.get("/api/v1/models", headers=bearer(key)).status_code == 200
    identities.revoke_key(apikeys.parse_key(key), actor="test")
    refused = client.get("/api/v1/models", headers=bearer(key))
    assert refused.status_code == 401
    assert "revoked" in refused.json()["error"]["message"]


def test_expired_and_disabled_are_refused(client: httpx.Client, identities: Any) -> None:
    identities.create_identity("temp", grants=["viewer"], actor="t")
    _i, soon = identities.create_key("temp", expires_at=utcnow() - timedelta(seconds=1),
                                     actor="t")
    leakwatch.remember_secret(soon)
    assert "expired" in client.get("/api/v1/models", headers=bearer(soon)).text
    _i, live = identities.create_key("temp", actor="t")
    leakwatch.remember_secret(live)
    assert client.get("/api/v1/models", headers=bearer(live)).status_code == 200
    identities.set_disabled("temp", True, actor="t")
    assert client.get("/api/v1/models", headers=bearer(live)).status_code == 401
    # A key with the right prefix but a wrong secret is just invalid.
    forged = live[:15] + ("A" if live[15] != "A" else "B") + live[16:]
    assert client.get("/api/v1/models", headers=bearer(forged)).status_code == 401


def test_a_key_can_narrow_its_identitys_grants(client: httpx.Client, identities: Any) -> None:
    identities.create_identity("ops", grants=["admin"], actor="t")
    _i, narrow = identities.create_key("ops", roles=["viewer", "admin"],
                                       scopes=["model:churn"], actor="t")
    leakwatch.remember_secret(narrow)
    principal = identities.authenticate_key(narrow)
    assert [str(g) for g in principal.grants] == ["admin@model:churn"]
    assert client.get("/api/v1/models", headers=bearer(narrow)).status_code == 403
    assert client.get("/api/v1/models/churn", headers=bearer(narrow)).status_code == 404


def test_grants_are_validated(identities: Any) -> None:
    with pytest.raises(InvalidInputError, match="Unknown role"):
        identities.create_identity("x", grants=["superuser"], actor="t")
    with pytest.raises(InvalidInputError, match="Scope"):
        identities.create_identity("y", grants=["viewer@cluster:all"], actor="t")
    with pytest.raises(InvalidInputError, match="not allowed"):
        identities.create_identity("bad name", actor="t")


def test_init_admin_once(identities: Any) -> None:
    ident, key = identities.init_admin(actor="t")
    leakwatch.remember_secret(key)
    assert ident.name == "admin" and identities.authenticate_key(key).roles == {"admin"}
    with pytest.raises(ConflictError, match="already exists"):
        identities.init_admin("second", actor="t")


def test_admin_cli_end_to_end(settings: Settings, app: Any, client: httpx.Client) -> None:
    env = cli_env(settings)
    first = run_cli("admin", "init", env=env)
    assert first.returncode == 0, first.stderr
    admin_key = leakwatch.remember_secret(KEY_RE.search(first.stdout).group(0))
    again = run_cli("admin", "init", env=env)
    assert again.returncode == 4 and "already exists" in again.stderr
    assert admin_key[20:] not in again.stdout + again.stderr

    made = run_cli("admin", "service-accounts", "create", "scorer", "--role",
                   "predictor@endpoint:churn", "--with-key", env=env)
    assert made.returncode == 0, made.stderr
    svc_key = leakwatch.remember_secret(KEY_RE.search(made.stdout).group(0))
    listed = run_cli("admin", "keys", "list", "--json", env=env)
    assert listed.returncode == 0
    assert svc_key not in listed.stdout and admin_key not in listed.stdout
    assert apikeys.parse_key(svc_key) in listed.stdout

    assert client.get("/api/v1/models", headers=bearer(admin_key)).status_code == 200
    assert client.get("/api/v1/models", headers=bearer(svc_key)).status_code == 403
    revoked = run_cli("admin", "keys", "revoke", apikeys.parse_key(svc_key), env=env)
    assert revoked.returncode == 0, revoked.stderr
    # Revoked by another process: the server's cache of checked keys lets it go within
    # security.key_cache_ttl_s (changes made in the server's own process apply at once).
    # Cache entries are stamped when checked and never extended by use: once the TTL has
    # passed since the last check, the next request asks the database and is refused.
    time.sleep(settings.security.key_cache_ttl_s + 0.1)
    assert client.get("/api/v1/models", headers=bearer(svc_key)).status_code == 401


def test_identities_on_both_databases(db_settings: Settings) -> None:
    """The same store on SQLite and PostgreSQL; concurrent `admin init` makes one admin."""
    from concurrent.futures import ThreadPoolExecutor

    from mlharbor.bootstrap import open_identities, open_registry

    registry = open_registry(db_settings)
    store = open_identities(registry)
    try:
        def init(i: int) -> str | None:
            try:
                return store.init_admin(f"admin{i}", actor="t")[1]
            except ConflictError:
                return None

        with ThreadPoolExecutor(4) as pool:
            made = [k for k in pool.map(init, range(4)) if k]
        assert len(made) == 1
        leakwatch.remember_secret(made[0])
        assert store.authenticate_key(made[0]).roles == {"admin"}
        store.create_identity("bot", kind="service", grants=["predictor@endpoint:churn"],
                              actor="t")
        info, key = store.create_key("bot", expires_at=utcnow() + timedelta(days=1),
                                     actor="t")
        leakwatch.remember_secret(key)
        assert str(store.authenticate_key(key).grants[0]) == "predictor@endpoint:churn"
        store.revoke_key(info.prefix, actor="t")
        with pytest.raises(Exception, match="revoked"):
            store.authenticate_key(key)
        actions = [e.action for e in registry.store.iter_audit()]
        assert actions.count("key.revoke") == 1 and "identity.create" in actions
    finally:
        registry.close()
