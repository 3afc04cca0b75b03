"""Transport limits: Host allowlist, body size (before reading), rate limit, CORS, TLS."""

from __future__ import annotations

import datetime as dt
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from mlharbor.settings import Settings
from tests.security.fixtures import bearer, watched_client
from tests.support import LiveServer, cli_env, free_port, wait_for_port


def _app(settings: Settings, registry: Any) -> Any:
    from mlharbor.api.app import create_app

    return create_app(settings, registry=registry)


@pytest.fixture
def tight(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", server={"max_body_bytes": 1000},
                    security={"rate_limit_per_minute": 60, "rate_limit_burst": 3,
                              "allowed_hosts": ["models.example.com"],
                              "cors_origins": ["https://ui.example.com"]})


@pytest.fixture
def tight_client(tight: Settings) -> Iterator[tuple[httpx.Client, Any]]:
    from mlharbor.bootstrap import open_identities, open_registry

    registry = open_registry(tight)
    with LiveServer(_app(tight, registry)) as live, watched_client(live.url) as client:
        yield client, open_identities(registry)
    registry.close()


def test_host_header_allowlist(client: httpx.Client) -> None:
    assert client.get("/livez").status_code == 200
    assert client.get("/livez", headers={"Host": "localhost:8080"}).status_code == 200
    assert client.get("/livez", headers={"Host": "[::1]:8080"}).status_code == 200
    rebound = client.get("/livez", headers={"Host": "evil.example.com"})
    assert rebound.status_code == 400
    assert rebound.json()["error"]["code"] == "invalid_host"


def test_configured_host_is_allowed(tight_client: tuple[httpx.Client, Any]) -> None:
    client, _ = tight_client
    assert client.get("/livez", headers={"Host": "models.example.com"}).status_code == 200


def _admin(identities: Any) -> dict[str, str]:
    from tests.security import leakwatch

    identities.create_identity("boss", grants=["admin"], actor="t")
    return bearer(leakwatch.remember_secret(identities.create_key("boss", actor="t")[1]))


def test_body_limit_before_reading_and_while_streaming(
        tight_client: tuple[httpx.Client, Any]) -> None:
    client, identities = tight_client
    # Declared too large: refused before authentication, before a byte is read.
    declared = client.post("/api/v1/models", content=b"x" * 5000,
                           headers={"Content-Type": "application/json"})
    assert declared.status_code == 413
    assert declared.json()["error"]["code"] == "body_too_large"

    headers = _admin(identities)

    def chunks() -> Iterator[bytes]:
        for _ in range(10):
            yield b'{"name": "' + b"a" * 300

    streamed = client.post("/api/v1/models", content=chunks(),
                           headers={**headers, "Content-Type": "application/json"})
    assert streamed.status_code == 413
    small = client.post("/api/v1/models", json={"name": "ok"}, headers=headers)
    assert small.status_code == 201


def test_rate_limit_per_key_with_retry_after(tight_client: tuple[httpx.Client, Any]) -> None:
    client, identities = tight_client
    first = _admin(identities)
    codes = [client.get("/api/v1/models", headers=first).status_code for _ in range(4)]
    assert codes[:3] == [200, 200, 200] and codes[3] == 429
    limited = client.get("/api/v1/models", headers=first)
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    from tests.security import leakwatch

    identities.create_identity("other", grants=["viewer"], actor="t")
    other = bearer(leakwatch.remember_secret(identities.create_key("other", actor="t")[1]))
    assert client.get("/api/v1/models", headers=other).status_code == 200  # per key


def test_cors_closed_by_default_open_when_configured(
        client: httpx.Client, tight_client: tuple[httpx.Client, Any]) -> None:
    preflight = {"Origin": "https://ui.example.com", "Access-Control-Request-Method": "GET"}
    closed = client.options("/api/v1/models", headers=preflight)
    assert "access-control-allow-origin" not in closed.headers
    got = client.get("/livez", headers={"Origin": "https://ui.example.com"})
    assert "access-control-allow-origin" not in got.headers
    tight, _ = tight_client
    opened = tight.options("/api/v1/models", headers=preflight)
    assert opened.status_code == 200
    assert opened.headers["access-control-allow-origin"] == "https://ui.example.com"
    other = tight.options("/api/v1/models", headers={**preflight, "Origin": "https://evil.io"})
    assert "access-control-allow-origin" not in other.headers


def _self_signed(folder: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    import ipaddress

    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.mark.slow
def test_server_speaks_tls(settings: Settings, tmp_path: Path) -> None:
    import os
    import shutil

    from tests.support import VENV_BIN

    cert, key = _self_signed(tmp_path)
    port = free_port()
    exe = shutil.which("mlharbor", path=str(VENV_BIN)) or "mlharbor"
    proc = subprocess.Popen(
        [exe, "server", "--host", "127.0.0.1", "--port", str(port), "--tls-cert", str(cert),
         "--tls-key", str(key)], env={**os.environ, **cli_env(settings)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_port(port, proc=proc)
        import ssl

        context = ssl.create_default_context(cafile=str(cert))
        with httpx.Client(verify=context, timeout=10) as tls:
            assert tls.get(f"https://127.0.0.1:{port}/livez").status_code == 200
            assert tls.get(f"https://127.0.0.1:{port}/api/v1/models").status_code == 401
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/livez", timeout=5)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)


def test_serving_guard_without_an_allowlist_holds_loopback_arrivals(tmp_path: Path) -> None:
    """``guard_transport`` for a server on every interface with no allowlist: connections
    arriving on loopback (where DNS rebinding reaches it) keep the loopback names; others
    (probes, load balancers) may name any host. A configured allowlist holds everywhere."""
    import asyncio

    from mlharbor.security.middleware import guard_transport

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    def status(settings: Settings, host: bytes, local: str) -> int:
        guard = guard_transport(app, settings, body_limit=False)
        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "GET", "path": "/livez",
                 "headers": [(b"host", host)], "server": (local, 8080)}
        asyncio.run(guard(scope, None, send))
        return int(sent[0]["status"])

    open_bind = Settings(home=tmp_path, server={"host": "0.0.0.0"})
    assert status(open_bind, b"10.1.2.3:8080", "10.1.2.3") == 200
    assert status(open_bind, b"evil.example.com", "127.0.0.1") == 400
    assert status(open_bind, b"evil.example.com", "::1") == 400
    assert status(open_bind, b"localhost:8080", "127.0.0.1") == 200
    configured = Settings(home=tmp_path, server={"host": "0.0.0.0"},
                          security={"allowed_hosts": ["models.example.com"]})
    assert status(configured, b"10.1.2.3:8080", "10.1.2.3") == 400
    assert status(configured, b"models.example.com", "10.1.2.3") == 200
    loopback_bind = Settings(home=tmp_path)  # server.host 127.0.0.1: enforced everywhere
    assert status(loopback_bind, b"evil.example.com", "10.1.2.3") == 400
