"""Fixtures of the tracking tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mlharbor.registry.service import Registry
from mlharbor.settings import Settings


@pytest.fixture
def reg(settings: Settings) -> Iterator[Registry]:
    """A registry on the embedded SQLite default, closed (its engine disposed) after."""
    registry = Registry.from_settings(settings)
    yield registry
    registry.close()
