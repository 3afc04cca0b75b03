"""The serving side: what one ``mlharbor serve`` process (or each of its workers) serves."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlharbor.settings import Settings


@dataclasses.dataclass(frozen=True)
class ServingProcess:
    """Builds what one serving process serves, with every layer wired: the registry, API
    keys, and monitoring's prediction log as the sink (serving never imports monitoring; this
    composition root hands the log to it).

    Picklable on purpose: with ``--workers N`` each worker process receives a copy and calls
    it, so each opens its own registry connection and claims its own prediction-log journal.
    Returns the app and what closes what was opened (the log first: it flushes to the store).
    """

    settings: Settings
    ref: str | None = None
    json_logs: bool = True
    explain: bool = False  # `serve REF --explain`: the explain routes on for REF's endpoint

    def __call__(self) -> tuple[Any, Callable[[], None]]:
        from mlharbor.bootstrap import open_identities, open_registry
        from mlharbor.monitoring.service import open_prediction_log
        from mlharbor.serving.app import create_serving_app
        from mlharbor.telemetry.metrics import ServingMetrics

        if self.json_logs:
            from mlharbor.telemetry.logging import configure_json_logging

            configure_json_logging()
        registry = open_registry(self.settings)
        log = None
        try:
            if self.ref is not None:
                registry.get_version(self.ref)  # fail fast, with the registry's message
            metrics = ServingMetrics()
            feedback = None
            if self.settings.monitoring.log_predictions:
                from mlharbor.monitoring.feedback import open_feedback

                log = open_prediction_log(self.settings,
                                          metrics_registry=metrics.registry).start()
                feedback = open_feedback(self.settings, log, registry).add
            app = create_serving_app(self.settings, registry, ref=self.ref, sink=log,
                                     identities=open_identities(registry), metrics=metrics,
                                     feedback=feedback, explain=self.explain)
        except BaseException:
            if log is not None:
                log.close()
            registry.close()
            raise
        opened = log
        # Resource use for the dashboard (mlharbor.monitoring.traffic.ResourceReporter).
        from mlharbor.monitoring.traffic import ResourceReporter

        reporter = ResourceReporter(self.settings.home, metrics.resource_sample).start()

        def close() -> None:
            try:
                reporter.stop()
                if opened is not None:
                    opened.close()
            finally:
                registry.close()

        return app, close
