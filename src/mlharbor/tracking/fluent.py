"""The Python API for users' own training code::

    from mlharbor import tracking

    with tracking.start_run(experiment="churn", run_name="rf") as run:
        tracking.log_params({"trees": 100})
        for step, loss in enumerate(losses):
            tracking.log_metric("loss", loss, step=step)   # queued, written in batches
        tracking.log_artifact("report.html")
        with tracking.start_run(run_name="fold-1", nested=True):
            ...
        run.register_model("churn", model)                # the registry's format checks

A :class:`Tracker` holds the store, the file store, the metric flusher and a stack of active
runs per thread; the module functions act on the default tracker (:func:`use` sets it; by
default it is opened from the settings by the composition root, once). A run left by an
exception is ended ``FAILED`` with the error recorded; metrics are flushed before a run ends.
:class:`ActiveRun` is the :class:`mlharbor.core.runs.RunLogger` training uses.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from mlharbor.core.errors import InvalidInputError, NotFoundError
from mlharbor.core.runs import MODEL_VERSION_TAG, MetricPoint, Run, RunArtifact, RunStatus
from mlharbor.tracking.files import TrackingFiles, key_of_uri
from mlharbor.tracking.flusher import MetricFlusher
from mlharbor.tracking.store import TrackingStore

#: Registers ``source`` (a model object, file or folder) as a version of ``name`` from a run;
#: returns the version's reference (``churn:3``). Built by the composition root.
Registrar = Callable[[str, Any, Run, Mapping[str, Any]], str]
MAX_ARTIFACT_FILES = 10_000


class ActiveRun:
    """A run being recorded; a context manager that ends it (FAILED on an exception)."""

    def __init__(self, tracker: Tracker, run: Run) -> None:
        self._tracker = tracker
        self.info = run
        self._ended = False

    @property
    def run_id(self) -> str:
        return self.info.run_id

    def __enter__(self) -> ActiveRun:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is None:
            self.end()
        else:
            self.end(RunStatus.KILLED if isinstance(exc, KeyboardInterrupt)
                     else RunStatus.FAILED, error=f"{type(exc).__name__}: {exc}")

    def log_param(self, key: str, value: object) -> None:
        self._tracker.store.log_batch(self.run_id, params={key: value})

    def log_params(self, params: Mapping[str, object]) -> None:
        items = list(params.items())
        for i in range(0, len(items), 100):
            self._tracker.store.log_batch(self.run_id, params=dict(items[i:i + 100]))

    def log_metric(self, key: str, value: float, *, step: int = 0,
                   timestamp: int | None = None) -> None:
        self.log_metrics({key: value}, step=step, timestamp=timestamp)

    def log_metrics(self, metrics: Mapping[str, float], *, step: int = 0,
                    timestamp: int | None = None) -> None:
        """Queue the points (written asynchronously in batches; checked now)."""
        from mlharbor.tracking import checks

        ts = int(time.time() * 1000) if timestamp is None else timestamp
        points = [MetricPoint(checks.check_key(k, field="key"),
                              checks.check_number(v, field=f"metrics.{k}"),
                              checks.check_int(ts, field="timestamp", minimum=0),
                              checks.check_int(step, field="step"))
                  for k, v in metrics.items()]
        self._tracker.flusher.put(self.run_id, points)

    def set_tag(self, key: str, value: object) -> None:
        self._tracker.store.log_batch(self.run_id, tags={key: value})

    def set_tags(self, tags: Mapping[str, object]) -> None:
        self._tracker.store.log_batch(self.run_id, tags=dict(tags))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Store a file (or every file of a folder) under the run's artifacts."""
        self.log_artifacts(path, artifact_path)

    def log_artifacts(self, path: str | Path, artifact_path: str | None = None
                      ) -> list[RunArtifact]:
        source = Path(path)
        root = self._root()
        sub = artifact_path.strip("/") if artifact_path else ""
        if source.is_file():
            pairs = [(source.name, source)]
        elif source.is_dir():
            pairs = [(p.relative_to(source).as_posix(), p) for p in sorted(source.rglob("*"))
                     if p.is_file()]
            if len(pairs) > MAX_ARTIFACT_FILES:
                raise InvalidInputError(f"{str(source)!r} holds more than "
                                        f"{MAX_ARTIFACT_FILES} files.")
        else:
            raise InvalidInputError(f"{str(source)!r} is neither a file nor a folder.",
                                    field="path")
        prefix = f"{root}/{sub}" if sub else root
        return [self._tracker.files.put(f"{prefix}/{rel}", file) for rel, file in pairs]

    def child(self, name: str) -> ActiveRun:
        """A nested run of this one (end it, or use it as a context manager)."""
        return self._tracker.start_run(experiment_id=self.info.experiment_id, run_name=name,
                                       parent=self)

    def end(self, status: RunStatus = RunStatus.FINISHED, error: str | None = None) -> None:
        """Flush this process's queued metrics, then end the run (once)."""
        if self._ended:
            return
        self._ended = True
        try:
            self._tracker.flusher.flush()
        except Exception as exc:  # the run ends whatever happened to its metrics
            status, error = RunStatus.FAILED, f"metrics not stored: {exc}"
            raise
        finally:
            try:
                self.info = self._tracker.store.update_run(self.run_id, status=status,
                                                           error=error)
            finally:
                # Off the thread's stack even when the store refused the update: a stuck
                # entry would refuse every later run on this thread ("already active").
                self._tracker._pop(self)

    def register_model(self, name: str, model: Any, **options: Any) -> str:
        """Register ``model`` (an object, file or folder) as a version of ``name`` through the
        registry's normal registration (format checks, signature, ONNX parity); the version
        records this run and the run is tagged ``mlharbor.model_version``."""
        if self._tracker.registrar is None:
            raise InvalidInputError("This tracker was built without a registry; open it with "
                                    "mlharbor.bootstrap.tracking.open_tracker(settings).")
        self._tracker.flusher.flush()
        ref = self._tracker.registrar(name, model, self._tracker.store.get_run(self.run_id),
                                      options)
        self.set_tag(MODEL_VERSION_TAG, ref)
        return ref

    def _root(self) -> str:
        root = key_of_uri(self.info.artifact_uri)
        if root is None:
            raise InvalidInputError(
                f"Run {self.run_id} keeps its artifacts at {self.info.artifact_uri!r}, "
                "outside mlharbor's artifact store.")
        return root


class Tracker:
    """The store, files, flusher and the active runs of each thread."""

    def __init__(self, store: TrackingStore, files: TrackingFiles, *,
                 registrar: Registrar | None = None, max_queued: int = 100_000,
                 user: str = "") -> None:
        self.store = store
        self.files = files
        self.registrar = registrar
        self.user = user
        self.flusher = MetricFlusher(lambda run_id, pts: store.log_batch(run_id, metrics=pts),
                                     max_queued=max_queued)
        self._local = threading.local()

    def _stack(self) -> list[ActiveRun]:
        stack: list[ActiveRun] | None = getattr(self._local, "stack", None)
        if stack is None:
            stack = self._local.stack = []
        return stack

    def _pop(self, run: ActiveRun) -> None:
        stack = self._stack()
        if run in stack:
            stack.remove(run)

    def active_run(self) -> ActiveRun | None:
        stack = self._stack()
        return stack[-1] if stack else None

    def start_run(self, *, experiment: str | None = None, experiment_id: str | None = None,
                  run_name: str | None = None, nested: bool = False,
                  tags: Mapping[str, str] | None = None,
                  parent: ActiveRun | None = None) -> ActiveRun:
        """Start a run in ``experiment`` (by name, created when missing) or
        ``experiment_id`` (default: the parent's, else "Default"). With a run already active
        in this thread, ``nested=True`` makes it the parent; otherwise it is refused, as in
        MLflow."""
        current = self.active_run()
        if parent is None and current is not None:
            if not nested:
                raise InvalidInputError(
                    f"Run {current.run_id} is already active in this thread.",
                    hint="End it first, or pass nested=True to start a child run.")
            parent = current
        eid = experiment_id
        if experiment is not None:
            try:
                eid = self.store.get_experiment_by_name(experiment).experiment_id
            except NotFoundError:
                eid = self.store.create_experiment(experiment).experiment_id
        if eid is None:
            eid = parent.info.experiment_id if parent is not None else "0"
        run = self.store.create_run(eid, run_name=run_name, tags=tags, user_id=self.user,
                                    parent_run_id=parent.run_id if parent else None)
        active = ActiveRun(self, run)
        self._stack().append(active)
        return active

    def require_run(self) -> ActiveRun:
        run = self.active_run()
        if run is None:
            raise InvalidInputError("No run is active in this thread.",
                                    hint="Wrap the code in `with tracking.start_run():`.")
        return run


_default: Tracker | None = None
_default_lock = threading.Lock()


def use(tracker: Tracker | None) -> None:
    """Make ``tracker`` the default of the module functions (None: open it again lazily)."""
    global _default
    with _default_lock:
        _default = tracker


def tracker() -> Tracker:
    """The default tracker, opened once from the settings (MLHARBOR_* variables, config
    file) by the composition root when :func:`use` did not set one."""
    global _default
    with _default_lock:
        if _default is None:
            # This module is an entry point for users' code, like the CLI: the composition
            # root builds its tracker (store, artifact store, registry registrar).
            from mlharbor.bootstrap.tracking import open_tracker
            from mlharbor.settings import load_settings

            _default = open_tracker(load_settings(discover=True))
        return _default


def start_run(*, experiment: str | None = None, run_name: str | None = None,
              nested: bool = False, tags: Mapping[str, str] | None = None) -> ActiveRun:
    return tracker().start_run(experiment=experiment, run_name=run_name, nested=nested,
                               tags=tags)


def active_run() -> ActiveRun | None:
    return tracker().active_run()


def end_run(status: RunStatus = RunStatus.FINISHED) -> None:
    run = tracker().active_run()
    if run is not None:
        run.end(status)


def log_param(key: str, value: object) -> None:
    tracker().require_run().log_param(key, value)


def log_params(params: Mapping[str, object]) -> None:
    tracker().require_run().log_params(params)


def log_metric(key: str, value: float, *, step: int = 0, timestamp: int | None = None) -> None:
    tracker().require_run().log_metric(key, value, step=step, timestamp=timestamp)


def log_metrics(metrics: Mapping[str, float], *, step: int = 0,
                timestamp: int | None = None) -> None:
    tracker().require_run().log_metrics(metrics, step=step, timestamp=timestamp)


def set_tag(key: str, value: object) -> None:
    tracker().require_run().set_tag(key, value)


def set_tags(tags: Mapping[str, object]) -> None:
    tracker().require_run().set_tags(tags)


def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    tracker().require_run().log_artifact(path, artifact_path)


def log_artifacts(path: str | Path, artifact_path: str | None = None) -> None:
    tracker().require_run().log_artifacts(path, artifact_path)


def register_model(name: str, model: Any, **options: Any) -> str:
    return tracker().require_run().register_model(name, model, **options)


def flush() -> None:
    """Wait until every metric point logged so far is stored."""
    tracker().flusher.flush()

