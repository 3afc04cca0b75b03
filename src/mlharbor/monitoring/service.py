"""Building the monitoring services from settings (called at an entry point, never at import).

Wiring for the lead, in one place:

* serving: ``log = open_prediction_log(settings, metrics_registry=metrics.registry).start()``,
  then give ``log`` to serving as its ``PredictionSink`` (``log.write(records)``) or call
  ``log.emit(record)`` directly on the hot path; ``log.close()`` on shutdown.
* control plane: ``api.routes.monitoring.router`` reads ``app.state.monitor`` (built on first
  use); :func:`open_alerts` gives the alert loop (``app.state.alerts = loop.alerts``,
  ``loop.start()`` at startup, ``loop.stop()`` at shutdown) when rules are configured.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlharbor.monitoring.predlog import PredictionLog
    from mlharbor.monitoring.signals import AlertLoop
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
    """The prediction log for ``settings`` (not started: call ``.start()``); it compacts in a
    child process unless ``monitoring.compaction`` is ``thread``."""
    from datetime import timedelta

    from mlharbor.monitoring.compactor import CompactorProcess
    from mlharbor.monitoring.logrows import Redaction
    from mlharbor.monitoring.predlog import PredictionLog
    from mlharbor.monitoring.segments import open_segments, sealer_from_settings

    mon = settings.monitoring
    journal_dir, lock = claim_journal(settings.home / "monitoring" / "journal")
    return PredictionLog(
        journal_dir,
        open_segments(log_uri(settings), settings),
        redaction=Redaction(mon.redaction, salt=mon.redaction_salt.get_secret_value()),
        sealer=sealer_from_settings(settings),
        flush_interval_s=mon.flush_interval_s,
        segment_interval_s=mon.segment_interval_s,
        max_buffer_bytes=mon.buffer_max_bytes,
        max_unwritten_bytes=mon.unwritten_max_bytes,
        max_pending_bytes=mon.pending_max_bytes,
        retention=timedelta(days=mon.retention_days),
        metrics_registry=metrics_registry,
        journal_lock=lock,
        compactor=CompactorProcess(settings, journal_dir) if mon.compaction == "process"
        else None,
    )


MAX_JOURNAL_SLOTS = 64


def claim_journal(root: Path) -> tuple[Path, Any]:
    """A journal folder no other live process writes, and the open lock file that holds it.

    Servers sharing a home each get their own slot (``slot-0``, ``slot-1`` ...), held by an
    exclusive ``flock``; the kernel drops the lock when a process dies, so a restarted server
    claims the slot again and recovers what the dead one journaled.
    """
    import fcntl

    from mlharbor.core.errors import UnavailableError

    root.mkdir(parents=True, exist_ok=True)
    for slot in range(MAX_JOURNAL_SLOTS):
        folder = root / f"slot-{slot}"
        folder.mkdir(exist_ok=True)
        handle = (folder / ".lock").open("ab")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        return folder, handle
    raise UnavailableError(
        f"{MAX_JOURNAL_SLOTS} processes already write prediction logs under {root}.",
        hint="Give each server its own MLHARBOR_HOME.",
    )


def open_alerts(settings: Settings, monitor: Monitor, *, metrics_registry: Any = None
                ) -> AlertLoop | None:
    """The alert loop for the default rules and ``monitoring.alert_rules_file`` (None when
    no rule is in force)."""
    from mlharbor.monitoring.alerts import AlertManager, configured_rules
    from mlharbor.monitoring.notify import Webhooks
    from mlharbor.monitoring.signals import AlertLoop

    mon = settings.monitoring
    rules, sources = configured_rules(settings)
    if not rules:
        return None
    manager = AlertManager(
        rules, sources=sources,
        state_file=settings.home / "monitoring" / "alerts.jsonl",
        notify=Webhooks(mon.webhooks, mon.slack_webhooks),
    )
    return AlertLoop(monitor, manager, mon.evaluation_interval_s,
                     metrics_registry=metrics_registry)


def feedback_uri(settings: Settings) -> str:
    uri = log_uri(settings).rstrip("/")
    return uri.rsplit("/", 1)[0] + "/feedback" if "/" in uri else uri + "-feedback"


class Monitor:
    """What the control plane and the CLI ask of monitoring, over one registry and one log."""

    def __init__(self, settings: Settings, registry: Any = None,
                 log: PredictionLog | None = None) -> None:
        from mlharbor.monitoring.feedback import open_feedback

        self.settings = settings
        self.registry = registry
        self.log = log or open_prediction_log(settings)
        self.feedback = open_feedback(settings, self.log, registry)
        self.cache_dir = settings.home / "monitoring"

    # -- feedback and performance ----------------------------------------------------------

    def add_feedback(self, endpoint: str, body: Any) -> int:
        self._check_endpoint(endpoint)
        return self.feedback.add(endpoint, body)

    def performance(self, endpoint: str, *, start: Any, end: Any, window: Any,
                    task: str | None = None, slices: Any = None) -> list[dict[str, Any]]:
        """Live metrics per ``window``-long step of ``[start, end)`` and version (at most
        ``monitoring.max_windows`` steps: WindowLimitError before anything is read).

        ``slices``: slice texts (``contract``, ``tenure:12,36``, ``where:...``, ``recipe``;
        :mod:`mlharbor.monitoring.liveslices`), checked before anything is read; each row then
        lists its slices, compared with the version's holdout slice metrics when stored."""
        from mlharbor.core.names import validate_name
        from mlharbor.monitoring.windows import check_time_windows

        validate_name(endpoint, kind="endpoint name")  # it names a folder of the log
        wanted = None
        if slices is not None:
            from mlharbor.monitoring.liveslices import LiveSlices, parse_live_slices

            wanted = slices if isinstance(slices, LiveSlices) else parse_live_slices(slices)
        check_time_windows(end - start, window, self.settings.monitoring.max_windows)
        model = self._model_of(endpoint, start, end) if self.registry is not None else None
        versions: dict[int, Any] = {}

        def version_of(number: int) -> Any:
            if number not in versions:
                try:
                    versions[number] = self.registry.get_version(f"{model}:{number}")
                except Exception:  # a deleted version: nothing stored to compare with
                    versions[number] = None
            return versions[number]

        def recipe_slices(number: int) -> list[Any]:
            from mlharbor.monitoring.liveslices import recipe_specs

            found = version_of(number) if model is not None else None
            return recipe_specs((found.lineage or {}).get("recipe")) if found else []

        rows = self.feedback.performance(endpoint, start=start, end=end, window=window,
                                         task=task, slices=wanted,
                                         recipe_slices=recipe_slices)
        if model is None:
            return rows
        from mlharbor.monitoring.feedback import compare_with_validation
        from mlharbor.monitoring.liveslices import validation_slices

        validation, held = {}, {}
        for number in {r["version"] for r in rows if r["version"]}:
            found = version_of(number)
            if found is not None:
                validation[number] = found.metrics
                if wanted is not None:
                    held[number] = validation_slices((found.lineage or {}).get("evaluation"))
        return compare_with_validation(rows, validation, slice_validation=held)

    # -- drift -----------------------------------------------------------------------------

    def drift_engine(self, model: str, version: int) -> Any:
        """The engine for a version's stored profile, with its calibration cached on disk."""
        from mlharbor.core.errors import NotFoundError
        from mlharbor.monitoring.reference import Reference

        if self.registry is None:
            raise NotFoundError("No registry is configured to read reference profiles from.")
        mv = self.registry.get_version(f"{model}:{version}")
        profile = (mv.lineage or {}).get("reference_profile")
        if not profile:
            raise NotFoundError(
                f"Version {model}:{version} has no reference profile, so drift cannot be "
                "measured against its training data.",
                hint=f"Attach the training data's profile: `mlharbor monitor reference set "
                f"{model}:{version} --data FILE` (or register with --training-data).")
        return self.engine_for(Reference.from_profile(profile))

    def engine_for(self, reference: Any) -> Any:
        import orjson

        from mlharbor.monitoring.calibration import Calibration, calibrate
        from mlharbor.monitoring.drift import DriftEngine

        mon = self.settings.monitoring
        path = self._calibration_path(reference)
        calibration = None
        if path.exists():
            calibration = Calibration.from_dict(orjson.loads(path.read_bytes()))
        if calibration is None:
            calibration = calibrate(reference, alpha=mon.drift_alpha,
                                    min_share_change=mon.drift_min_share_change)
            _write_atomic(path, orjson.dumps(calibration.to_dict()))
        return DriftEngine(reference, calibration, dataset_share=mon.drift_dataset_share)

    def _calibration_path(self, reference: Any) -> Path:
        mon = self.settings.monitoring
        return (self.cache_dir / "calibration" /
                f"{reference.digest[:32]}-{mon.drift_alpha}-{mon.drift_min_share_change}.json")

    def _keep_calibration(self, engine: Any) -> None:
        """Save the thresholds simulated for small windows' exact sizes, so the next report
        (or process) does not simulate them again."""
        import orjson

        calibration = engine.calibration
        if calibration.unsaved:
            _write_atomic(self._calibration_path(engine.reference),
                          orjson.dumps(calibration.to_dict()))
            calibration.unsaved = False

    def drift(self, endpoint: str, *, start: Any, end: Any, step: Any = None,
              version: int | None = None, rows: int | None = None) -> dict[str, Any]:
        """Drift of ``[start, end)`` against the served version's profile, plus a series of
        windows: ``step``-long (finished windows' counts are cached and merged, not rescanned)
        or, with ``rows``, consecutive windows of that many predictions.

        At most ``monitoring.max_windows`` windows: a finer step is refused (WindowLimitError)
        before the log is read."""
        from mlharbor.core.errors import InvalidInputError, NotFoundError
        from mlharbor.monitoring.windows import merge_all, time_windows

        if rows is not None and rows < 1:
            raise InvalidInputError(f"Windows need at least one row; received {rows}.",
                                    field="rows")
        bounds = (time_windows(start, end, step or (end - start), limit=self.max_windows)
                  if rows is None and end > start else [])
        model, version = self.served_version(endpoint, start, end, version)
        if model is None or version is None:
            raise NotFoundError(
                f"Endpoint {endpoint!r} logged no predictions between {start:%Y-%m-%d %H:%M} "
                f"and {end:%Y-%m-%d %H:%M} UTC.",
                hint="Widen --window, or check that serving writes the prediction log.")
        table = None if rows is None else self._row_windows(endpoint, version, start, end, rows)
        engine = self.drift_engine(model, version)
        if table is not None and rows is not None:
            windows = self._count_windows(engine, table, rows)
        else:
            windows = [self.window_counts(engine, endpoint, version, lo, hi)
                       for lo, hi in bounds]
        total = merge_all(windows)
        if total is None:
            total = self.window_counts(engine, endpoint, version, start, end)
        series = [{"start": w.start.isoformat() if w.start else None, "rows": w.rows,
                   **_brief(engine.compare(w))} for w in windows if w.rows]
        report = engine.compare(total).to_dict()
        report.update(endpoint=endpoint, model=model, version=version, series=series)
        self._keep_calibration(engine)
        return dict(report)

    @property
    def max_windows(self) -> int:
        """The one cap on windows per request (``monitoring.max_windows``)."""
        return int(self.settings.monitoring.max_windows)

    def _row_windows(self, endpoint: str, version: int, start: Any, end: Any, rows: int
                     ) -> Any:
        """The version's rows in ``[start, end)`` by time, refused (before any is counted)
        when they make more than ``monitoring.max_windows`` windows of ``rows``."""
        from mlharbor.monitoring.windows import check_window_count

        table = self.version_rows(endpoint, version, start, end).sort_by("at")
        check_window_count(-(-table.num_rows // rows), self.max_windows, field="rows",
                           asked=f"{table.num_rows:,} predictions in windows of {rows:,} rows",
                           fix="Ask for more rows per window or a shorter window.")
        return table

    def _count_windows(self, engine: Any, table: Any, rows: int) -> list[Any]:
        from mlharbor.monitoring.windows import moment_of

        windows = []
        for offset in range(0, table.num_rows, rows):
            part = table.slice(offset, rows)
            first = moment_of(part["at"][0].as_py())
            last = moment_of(part["at"][-1].as_py())
            windows.append(self._count_table(engine, part, first, last))
        return windows

    def window_counts(self, engine: Any, endpoint: str, version: int, lo: Any, hi: Any
                      ) -> Any:
        """Bin counts of one version's rows logged in [lo, hi), cached once the window is past."""
        import orjson

        from mlharbor.core.clock import epoch_micros, utcnow
        from mlharbor.monitoring.windows import WindowCounts

        # Exact microseconds: two windows within one second are two cache entries.
        key = f"{engine.reference.digest[:16]}-{epoch_micros(lo)}-{epoch_micros(hi)}"
        path = self.cache_dir / "windows" / endpoint / f"{version}-{key}.json"
        if path.exists():
            return WindowCounts.from_dict(orjson.loads(path.read_bytes()))
        counts = self._count_table(engine, self.version_rows(endpoint, version, lo, hi), lo, hi)
        settled = hi.timestamp() < utcnow().timestamp() - 2 * self.log.segment_interval_s - 60
        if settled:  # later rows cannot arrive any more: keep the counts
            _write_atomic(path, orjson.dumps(counts.to_dict()))
        return counts

    def version_rows(self, endpoint: str, version: int, lo: Any, hi: Any) -> Any:
        """The logged answers (failed shadow copies left out) of one version in ``[lo, hi)``,
        as an Arrow table."""
        from mlharbor.monitoring.logrows import answers

        table = answers(self.log.scan(endpoint, lo, hi))  # a failed copy is no answer
        if "version" in table.column_names:
            import pyarrow.compute as pc

            table = table.filter(pc.equal(table["version"], version))
        return table

    @staticmethod
    def _count_table(engine: Any, table: Any, lo: Any, hi: Any) -> Any:
        inputs = {name[3:]: table[name] for name in table.column_names if name.startswith("in.")}
        predictions = table["prediction"] if "prediction" in table.column_names else None
        counts = engine.count(inputs if table.num_rows else {}, predictions=predictions,
                              start=lo, end=hi)
        counts.rows = table.num_rows
        return counts

    # -- helpers ---------------------------------------------------------------------------

    def _check_endpoint(self, endpoint: str) -> None:
        """A stored endpoint, or one the log has predictions of (``mlharbor serve churn``
        serves an endpoint ``churn`` that is not stored); NotFoundError otherwise."""
        if self.registry is None:
            return
        from mlharbor.core.errors import NotFoundError
        from mlharbor.registry.endpoints import EndpointService

        try:
            EndpointService(self.registry).get(endpoint)
        except NotFoundError as exc:
            if not self.log.segment_names(endpoint):
                raise NotFoundError(
                    f"No endpoint {endpoint!r} is stored and no prediction of one is logged.",
                    hint="Check the name; predictions reach the log within a few seconds, "
                    "and a server started with `mlharbor serve` takes feedback itself.",
                    field="endpoint", received=endpoint) from exc

    def served_version(self, endpoint: str, start: Any, end: Any, version: int | None
                       ) -> tuple[str | None, int | None]:
        """The model an endpoint served in ``[start, end)`` and the version to judge: the one
        asked for, else the version that answered most; ``(None, version)`` with no traffic."""
        table = self.log.scan(endpoint, start, end, columns=["model_ref", "version"])
        if table.num_rows == 0 or "version" not in table.column_names:
            return None, version
        frame = table.to_pandas().dropna()
        if frame.empty:
            return None, version
        model = str(frame["model_ref"].iloc[-1]).split("@")[0].split(":")[0]
        if version is None:
            version = int(frame["version"].value_counts().idxmax())
        return model, version

    def _model_of(self, endpoint: str, start: Any, end: Any) -> str | None:
        return self.served_version(endpoint, start, end, 0)[0]


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` whole or not at all (concurrent writers each use their own
    temporary file; the last rename wins)."""
    import os
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise


def _brief(report: Any) -> dict[str, Any]:
    return {"drifted": report.drifted, "drifted_share": report.drifted_share,
            "drifted_features": report.drifted_features,
            "scores": {f.name: round(f.score, 4) for f in report.features}}
