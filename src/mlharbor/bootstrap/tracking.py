"""The tracker behind ``mlharbor.tracking``'s Python API, built from settings.

:func:`open_tracker` opens the registry (with every cross-cutting layer, as
:func:`mlharbor.bootstrap.open_registry` does), the tracking store on its database, run files
in its artifact store, and a registrar that registers a run's model through
:func:`mlharbor.registry.bundles.register_model` (format checks, signature, ONNX parity) with
the run's params and metrics and a link back to the run.
"""

from __future__ import annotations

import getpass
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlharbor.core.runs import Run
    from mlharbor.registry.service import Registry
    from mlharbor.settings import Settings
    from mlharbor.tracking.fluent import Registrar, Tracker


def open_tracker(settings: Settings, *, registry: Registry | None = None) -> Tracker:
    """A tracker on the registry of ``settings`` (opened here unless given)."""
    from mlharbor.bootstrap import open_registry
    from mlharbor.tracking.files import TrackingFiles
    from mlharbor.tracking.fluent import Tracker
    from mlharbor.tracking.store import TrackingStore

    reg = registry or open_registry(settings)
    store = TrackingStore(reg.store.db)
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no login name in this container
        user = ""
    return Tracker(store, TrackingFiles(store, reg.artifacts),
                   registrar=registrar(reg, settings), user=user)


def registrar(registry: Registry, settings: Settings) -> Registrar:
    """Register a model from a run: the run's params and finite metrics go with the version,
    and its lineage names the run (``tracking.run_id``)."""
    def register(name: str, model: Any, run: Run, options: Mapping[str, Any]) -> str:
        from mlharbor.registry.bundles import register_model

        result = register_model(
            registry, name, model, settings=settings, params=dict(run.params),
            metrics={k: m.value for k, m in run.metrics.items() if math.isfinite(m.value)},
            lineage={"tracking": {"run_id": run.run_id, "experiment_id": run.experiment_id,
                                  "source": f"runs:/{run.run_id}"}},
            actor=run.user_id or "local", **dict(options))
        return str(result.version.ref)

    return register
