"""Fixtures for tests that talk to an authenticated app: identities, keys per role, clients.

Import them where needed (``from tests.security.fixtures import app, client, make_key``);
``tests/security/conftest.py`` imports them all.

Every key, token and master key made here is remembered by ``leakwatch`` and every HTTP body
seen through these clients is kept, so the leak check at the end searches them all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from mlharbor.settings import Settings
from tests.security import leakwatch
from tests.support import LiveServer


@pytest.fixture
def registry(settings: Settings) -> Iterator[Any]:
    from mlharbor.bootstrap import open_registry

    reg = open_registry(settings)
    yield reg
    reg.close()


@pytest.fixture
def identities(registry: Any) -> Any:
    from mlharbor.bootstrap import open_identities

    return open_identities(registry)


KeyFactory = Callable[..., str]


@pytest.fixture
def make_key(identities: Any) -> KeyFactory:
    """``make_key("viewer", "deployer@model:churn", name=...)``: an identity and its key."""
    counter = iter(range(10_000))

    def make(*grants: str, name: str | None = None, kind: str = "user", **key_args: Any) -> str:
        label = "-".join(g.replace("@", ".").replace(":", ".") for g in grants) or "none"
        ident = name or f"{label}-{next(counter)}"
        identities.create_identity(ident, kind=kind, grants=list(grants), actor="test")
        _info, key = identities.create_key(ident, actor="test", **key_args)
        return leakwatch.remember_secret(key)

    return make


@pytest.fixture
def app(settings: Settings, registry: Any) -> Any:
    from mlharbor.api.app import create_app

    return create_app(settings, registry=registry)


def watched_client(base_url: str, **kwargs: Any) -> httpx.Client:
    """A client whose every response body is kept for the leak check."""
    return httpx.Client(base_url=base_url, timeout=20,
                        event_hooks={"response": [leakwatch.body_hook]}, **kwargs)


@pytest.fixture
def server(app: Any) -> Iterator[LiveServer]:
    """The app on a real uvicorn server on a free loopback port."""
    with LiveServer(app) as live:
        yield live


@pytest.fixture
def client(server: LiveServer) -> Iterator[httpx.Client]:
    with watched_client(server.url) as c:
        yield c


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def admin_headers_for(settings: Settings, name: str = "test-admin") -> dict[str, str]:
    """Headers with a fresh admin key for the database of ``settings`` (for other tests)."""
    from mlharbor.bootstrap import open_identities, open_registry

    reg = open_registry(settings)
    try:
        store = open_identities(reg)
        store.create_identity(name, grants=["admin"], actor="test")
        _info, key = store.create_key(name, actor="test")
    finally:
        reg.close()
    return bearer(leakwatch.remember_secret(key))


@pytest.fixture
def admin_headers(settings: Settings) -> dict[str, str]:
    return admin_headers_for(settings)
