"""Experiment tracking: experiments, runs, params, metric series and run artifacts.

The Python API for training code (``from mlharbor import tracking``; ``with
tracking.start_run(): tracking.log_metric(...)``) lives in :mod:`mlharbor.tracking.fluent`
and is re-exported here lazily, so importing this package stays cheap. The store is
:mod:`mlharbor.tracking.store` (search grammar: :mod:`mlharbor.tracking.search`), run files
:mod:`mlharbor.tracking.files`; the MLflow REST protocol is an adapter in ``api/``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ActiveRun", "Tracker", "active_run", "end_run", "flush", "log_artifact",
           "log_artifacts", "log_metric", "log_metrics", "log_param", "log_params",
           "register_model", "set_tag", "set_tags", "start_run", "tracker", "use"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from mlharbor.tracking import fluent

        return getattr(fluent, name)
    raise AttributeError(f"module 'mlharbor.tracking' has no attribute {name!r}")
