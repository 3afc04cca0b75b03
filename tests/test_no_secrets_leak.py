"""No API key, token, password or master key appears in logs, /metrics, audit records or error
bodies.

Every secret the security fixtures create is remembered (``tests.security.leakwatch``), every
log record (root handler, DEBUG for mlharbor and uvicorn) and every HTTP body seen through the
watched clients is kept. This module first proves the search finds a planted secret, then runs
a scenario built to provoke every error path with secrets in play, then searches everything
this test process has seen, the scenario and all earlier tests alike. (Each pytest-xdist
worker checks its own tests; ``tests/security/conftest.py`` repeats the search at the end of
the session.)
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from mlharbor.security.envelope import new_master_key_text
from mlharbor.settings import Settings
from tests.security import leakwatch
from tests.security.fixtures import bearer, watched_client
from tests.support import LiveServer, cli_env, run_cli

leakwatch.install_log_capture()


def test_the_search_finds_a_planted_secret() -> None:
    secret = "mlh_abcdefghij_" + "S3cr3tP4rtOfTheKey-0123456789abcdefghijklmno"
    texts = [("planted exact", f"auth failed for {secret}"),
             ("planted piece", f"token={secret[20:40]}..."),
             ("clean", "mlh_abcdefghij (prefix only)")]
    assert leakwatch.find_leaks([secret], texts) == ["planted exact", "planted piece"]
    logging.getLogger("mlharbor.test").warning("nothing secret here")
    assert any("nothing secret here" in t for _w, t in leakwatch.TEXTS)


@pytest.fixture
def scenario_settings(tmp_path: Path) -> Settings:
    key_file = tmp_path / "master.key"
    key_file.write_text(leakwatch.remember_secret(new_master_key_text()))
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.public_key()))
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [{**jwk, "kid": "k"}]}))
    settings = Settings(home=tmp_path / "home", server={"max_body_bytes": 2000, "debug": True},
                        security={"master_key_file": str(key_file),
                                  "jwks_file": str(tmp_path / "jwks.json"),
                                  "jwt_role_map": {"readers": ["viewer"]},
                                  "rate_limit_per_minute": 60, "rate_limit_burst": 30})
    settings.__dict__["_rsa"] = rsa_key
    return settings


def _token(key: Any, **claims: Any) -> str:
    body = {"sub": "carol", "exp": int(time.time()) + 300, "roles": ["readers"], **claims}
    return leakwatch.remember_secret(jwt.encode(body, key, algorithm="RS256",
                                                headers={"kid": "k"}))


def _provoke(client: httpx.Client, keys: dict[str, str], token: str, expired: str) -> None:
    admin, viewer, revoked = bearer(keys["admin"]), bearer(keys["viewer"]), keys["revoked"]
    files = [("files", ("model.bin", b"w" * 100, "application/octet-stream"))]
    client.post("/api/v1/models/churn/versions", files=files, headers=admin)
    for headers in (viewer, bearer(revoked), bearer(revoked[:-3] + "xyz"),
                    bearer(revoked[:30]), bearer(token), bearer(expired),
                    bearer(token[:-6] + "AAAAAA"), {"X-API-Key": revoked},
                    {"Authorization": f"Basic {revoked}"}, {"Authorization": revoked}):
        client.get("/api/v1/models", headers=headers)
        client.delete("/api/v1/models/churn", headers=headers)
        client.put("/api/v1/models/churn/aliases/x", json={"version": 1}, headers=headers)
        client.get("/api/v1/resolve/churn@nothing", headers=headers)
    # (A secret used as *data*, e.g. as a model name, is echoed like any data; not tested.)
    client.post("/api/v1/models", content=b"{" * 5000, headers=admin)  # 413
    client.post("/api/v1/models", json={"name": "bad name!"}, headers=admin)  # 400
    client.get("/api/v1/models/ghost", headers=admin)  # 404
    client.get("/api/v1/models", headers={**admin, "Host": "evil.example.com"})  # 400
    client.get("/api/v1/models/churn/versions/1/files/model.bin", headers=admin)
    for _ in range(35):  # 429
        client.get("/api/v1/models", headers=viewer)


def test_no_secret_in_logs_metrics_audit_or_error_bodies(scenario_settings: Settings) -> None:
    from mlharbor.api.app import create_app
    from mlharbor.bootstrap import open_identities, open_registry
    from mlharbor.core.clock import utcnow

    settings = scenario_settings
    rsa_key = settings.__dict__["_rsa"]
    registry = open_registry(settings)
    identities = open_identities(registry)
    keys = {}
    for role in ("admin", "viewer", "revoked"):
        identities.create_identity(f"u-{role}", grants=["admin" if role == "admin" else
                                                        "viewer"], actor="t")
        keys[role] = leakwatch.remember_secret(identities.create_key(f"u-{role}",
                                                                     actor="t")[1])
    identities.revoke_key(keys["revoked"][4:14], actor="t")
    token, expired = _token(rsa_key), _token(rsa_key, exp=int(time.time()) - 999)

    with LiveServer(create_app(settings, registry=registry)) as live, \
            watched_client(live.url) as client:
        _provoke(client, keys, token, expired)
    serving = _serving_app(settings, registry, identities)
    if serving is not None:
        with LiveServer(serving) as live, watched_client(live.url) as client:
            client.get("/metrics", headers=bearer(keys["admin"]))
            client.get("/metrics")
            client.post("/v1/endpoints/churn/predict", headers=bearer(keys["revoked"]),
                        json={"inputs": [{"a": 1}]})
            client.post("/v1/endpoints/churn/predict", headers=bearer(keys["viewer"]),
                        json={"inputs": [{"a": 1}]})
    for event in registry.store.iter_audit(since=utcnow().replace(year=2000)):
        leakwatch.observe(f"audit {event.seq} {event.action}",
                          json.dumps(event.details) + event.actor + event.resource)
    registry.close()

    env = {**cli_env(settings), "MLHARBOR_SECURITY__MASTER_KEY_FILE":
           str(settings.security.master_key_file)}
    master = leakwatch.remember_secret(new_master_key_text())
    for args, extra in ((("config", "show"), {"MLHARBOR_SECURITY__MASTER_KEY": master}),
                        (("admin", "keys", "revoke", keys["viewer"]), {}),
                        (("keys", "rotate", "--to-key-file", "/nonexistent"), {}),
                        (("models", "list"), {"MLHARBOR_SECURITY__MASTER_KEY": master})):
        done = run_cli(*args, env={**env, **extra})
        leakwatch.observe(f"cli {' '.join(args[:2])}", done.stdout + done.stderr)

    leaks = leakwatch.find_leaks()
    assert not leaks, f"secrets leaked into: {sorted(set(leaks))}"
    assert len(leakwatch.SECRETS) >= 6
    assert sum(1 for w, _t in leakwatch.TEXTS if w.startswith("http")) >= 60


def _serving_app(settings: Settings, registry: Any, identities: Any) -> Any | None:
    try:
        from mlharbor.serving.app import create_serving_app
    except ImportError:
        return None
    return create_serving_app(settings, registry, endpoints=[])  # auth is on by default
