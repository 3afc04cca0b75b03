"""The dashboard behind a proxy that serves the control plane under a prefix: every URL in the
page resolves under that prefix (a <base> of {root}/ui and relative paths only)."""

from __future__ import annotations

import asyncio
import re
from importlib import resources
from pathlib import Path

import httpx

from mlharbor.settings import Settings


def test_the_page_resolves_every_url_under_the_root_path(tmp_path: Path) -> None:
    from mlharbor.api.app import create_app
    from mlharbor.bootstrap import open_identities, open_registry

    settings = Settings(home=tmp_path / "home")
    registry = open_registry(settings)
    try:
        key = open_identities(registry).init_admin("ops", actor="test")[1]
        app = create_app(settings, registry=registry)

        async def fetch() -> httpx.Response:
            transport = httpx.ASGITransport(app=app, root_path="/mlh")
            async with httpx.AsyncClient(transport=transport,
                                         base_url="http://127.0.0.1") as client:
                return await client.get("/ui", headers={"Authorization": f"Bearer {key}"})

        page = asyncio.run(fetch())
        assert page.status_code == 200, page.text
        assert '<base href="/mlh/ui">' in page.text
    finally:
        registry.close()
    static = resources.files("mlharbor.ui").joinpath("static")
    sources = [page.text] + [static.joinpath(name).read_text()
                             for name in ("core.js", "charts.js", "models.js", "endpoints.js",
                                          "monitoring.js", "ledger.js", "dashboard.js")]
    for text in sources:  # an absolute path would leave the prefix
        assert not re.search(r"""["'`](/api/|/ui\b)""", text), re.findall(
            r"""["'`](/api/[^"'`]*|/ui[^"'`]*)""", text)
