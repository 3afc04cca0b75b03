"""The composition root: builds long-lived services from settings at an entry point.

The CLI, the control-plane API, the serving app and the dashboard all open the registry through
:func:`open_registry`, so cross-cutting layers (envelope encryption of artifacts, the signature
policy on aliases) are wired in one place, and the registry itself never imports security.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlharbor.registry.service import Registry
    from mlharbor.settings import Settings


def open_registry(settings: Settings, *, migrate: bool = True) -> Registry:
    """The registry for ``settings`` with every configured cross-cutting layer applied."""
    from mlharbor.registry.service import Registry

    return Registry.from_settings(settings, migrate=migrate)
