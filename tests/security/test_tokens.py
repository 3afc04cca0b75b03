"""OIDC bearer tokens verified against a JWKS file or URL, claims mapped to roles."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from mlharbor.settings import Settings
from tests.security import leakwatch
from tests.security.fixtures import bearer, watched_client
from tests.support import LiveServer, free_port

ISSUER = "https://idp.example.com"
AUDIENCE = "mlharbor"


@pytest.fixture(scope="module")
def signing_keys() -> dict[str, Any]:
    return {"good": rsa.generate_private_key(public_exponent=65537, key_size=2048),
            "rogue": rsa.generate_private_key(public_exponent=65537, key_size=2048)}


def _jwks(key: Any) -> dict[str, Any]:
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    return {"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "RS256"}]}


def _token(key: Any, **claims: Any) -> str:
    body = {"sub": "alice@example.com", "iss": ISSUER, "aud": AUDIENCE,
            "exp": int(time.time()) + 300, "groups": ["ml-readers"], **claims}
    return leakwatch.remember_secret(jwt.encode(body, key, algorithm="RS256",
                                                headers={"kid": "k1"}))


def _settings(tmp_path: Path, **source: Any) -> Settings:
    return Settings(home=tmp_path / "home", security={
        **source, "jwt_issuer": ISSUER, "jwt_audience": AUDIENCE, "jwt_role_claim": "groups",
        "jwt_role_map": {"ml-readers": ["viewer"], "ml-ops": ["deployer@model:churn"]}})


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    from mlharbor.api.app import create_app
    from mlharbor.bootstrap import open_registry

    opened: list[Any] = []

    def start(settings: Settings) -> tuple[httpx.Client, Any]:
        registry = open_registry(settings)
        live = LiveServer(create_app(settings, registry=registry)).__enter__()
        client = watched_client(live.url)
        opened.append((live, client, registry))
        return client, registry

    yield start
    for live, client, registry in opened:
        client.close()
        live.__exit__()
        registry.close()


def test_tokens_from_a_jwks_file(tmp_path: Path, signing_keys: dict[str, Any],
                                 serve: Any) -> None:
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(_jwks(signing_keys["good"])))
    client, registry = serve(_settings(tmp_path, jwks_file=str(jwks)))
    good = signing_keys["good"]
    assert client.get("/api/v1/models", headers=bearer(_token(good))).status_code == 200
    # Viewer cannot write; the audit names the token's subject.
    denied = client.post("/api/v1/models", json={"name": "m"}, headers=bearer(_token(good)))
    assert denied.status_code == 403
    assert list(registry.store.iter_audit())[-1].actor == "oidc:alice@example.com"
    ops = bearer(_token(good, groups=["ml-ops"]))
    assert client.get("/api/v1/models", headers=ops).status_code == 403  # scoped grant
    assert client.get("/api/v1/models/churn", headers=ops).status_code == 404
    refused = {
        "expired": _token(good, exp=int(time.time()) - 3600),
        "wrong audience": _token(good, aud="someone-else"),
        "wrong issuer": _token(good, iss="https://evil.example.com"),
        "rogue key": _token(signing_keys["rogue"]),
        "no roles": _token(good, groups=["unknown-group"]),
        "garbage": "not.a.jwt-at-all-really",
    }
    for why, token in refused.items():
        status = client.get("/api/v1/models", headers=bearer(token)).status_code
        assert status == (403 if why == "no roles" else 401), why
    claims = {"sub": "x", "exp": int(time.time()) + 60, "iss": ISSUER, "aud": AUDIENCE,
              "groups": ["ml-readers"]}
    hs256 = jwt.encode(claims, "secret-shared-key-0123456789abcdef", algorithm="HS256")
    assert client.get("/api/v1/models", headers=bearer(hs256)).status_code == 401


class _JwksHandler(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: Any) -> None:
        pass


def test_tokens_from_a_jwks_url(tmp_path: Path, signing_keys: dict[str, Any],
                                serve: Any) -> None:
    handler = type("H", (_JwksHandler,), {"body": json.dumps(_jwks(signing_keys["good"]))
                                          .encode()})
    port = free_port()
    idp = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=idp.serve_forever, daemon=True)
    thread.start()
    try:
        client, _ = serve(_settings(tmp_path, jwks_url=f"http://127.0.0.1:{port}/jwks"))
        good = _token(signing_keys["good"])
        assert client.get("/api/v1/models", headers=bearer(good)).status_code == 200
        rogue = _token(signing_keys["rogue"])
        assert client.get("/api/v1/models", headers=bearer(rogue)).status_code == 401
    finally:
        idp.shutdown()
        idp.server_close()
