"""Building the monitoring services from settings (called at an entry point, never at import).

Wiring for the lead, in one place:

* serving: ``log = open_prediction_log(settings, metrics_registry=metrics.registry).start()``,
  then give ``log`` to serving as its ``PredictionSink`` (``log.write(records)``) or call
  ``log.emit(record)`` directly on the hot path; ``log.close()`` on shutdown.
* control plane: ``api.routes.monitoring.router`` reads ``app.state.monitor``, built lazily
  by :func:`monitor_for_app`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlharbor.monitoring.predlog import PredictionLog
    from mlharbor.settings import Settings


def log_uri(settings: Settings) -> str:
    """The configured log URI, else next to the artifacts on S3, else under the home."""
    configured = settings.monitoring.log_uri
    if configured:
        return configured
    artifacts = settings.artifact_uri_value
    if artifacts.startswith("s3://"):
        return artifacts.rstrip("/") + "/predictions"
    return str(settings.home / "predictions")


def open_prediction_log(settings: Settings, *, metrics_registry: Any = None) -> PredictionLog:
    """The prediction log for ``settings`` (not started: call ``.start()``)."""
    from mlharbor.monitoring.logrows import Redaction
    from mlharbor.monitoring.predlog import PredictionLog
    from mlharbor.monitoring.segments import open_segments, sealer_from_settings

    mon = settings.monitoring
    return PredictionLog(
        settings.home / "monitoring" / "journal",
        open_segments(log_uri(settings), settings),
        redaction=Redaction(mon.redaction, salt=mon.redaction_salt.get_secret_value()),
        sealer=sealer_from_settings(settings),
        flush_interval_s=mon.flush_interval_s,
        segment_interval_s=mon.segment_interval_s,
        max_buffer_bytes=mon.buffer_max_bytes,
        metrics_registry=metrics_registry,
    )
