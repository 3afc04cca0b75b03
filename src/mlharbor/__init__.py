"""mlharbor: from data to a healthy model in production, in one package.

The public surface is small and loaded lazily, so ``import mlharbor`` stays cheap: no pandas,
scikit-learn, ONNX Runtime, SQLAlchemy or web framework is imported until it is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["Client", "ModelRef", "Registry", "Settings", "__version__", "load_settings"]

_LAZY = {
    "Client": ("mlharbor.client", "Client"),
    "Registry": ("mlharbor.registry.service", "Registry"),
    "Settings": ("mlharbor.settings", "Settings"),
    "load_settings": ("mlharbor.settings", "load_settings"),
    "ModelRef": ("mlharbor.core.refs", "ModelRef"),
}

if TYPE_CHECKING:
    from mlharbor.client import Client
    from mlharbor.core.refs import ModelRef
    from mlharbor.registry.service import Registry
    from mlharbor.settings import Settings, load_settings


def __getattr__(name: str) -> Any:
    try:
        module_name, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'mlharbor' has no attribute {name!r}") from None
    import importlib

    return getattr(importlib.import_module(module_name), attr)


def __dir__() -> list[str]:
    return sorted(__all__)
