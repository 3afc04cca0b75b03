"""Once the control plane has started, what it keeps for life is out of the collector's view
and young collections wait for more growth (:mod:`mlharbor.core.heap`): full collections
walking FastAPI's, SQLAlchemy's and pydantic's objects were the slowest tracking answers."""

from __future__ import annotations

import gc

import httpx

from mlharbor.api.app import create_app
from mlharbor.bootstrap import open_registry
from mlharbor.core.heap import GC_YOUNG_THRESHOLD
from mlharbor.settings import Settings
from tests.support import LiveServer


def test_startup_freezes_what_is_alive_and_raises_the_young_threshold(
        settings: Settings) -> None:
    before = gc.get_threshold()
    gc.set_threshold(700, before[1], before[2])
    gc.unfreeze()
    registry = open_registry(settings)
    try:
        app = create_app(settings, registry=registry)
        assert gc.get_freeze_count() == 0
        with LiveServer(app) as server:
            assert gc.get_freeze_count() > 0
            assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, before[1], before[2])
            assert httpx.get(f"{server.url}/livez").status_code == 200
    finally:
        gc.set_threshold(*before)
        registry.close()
