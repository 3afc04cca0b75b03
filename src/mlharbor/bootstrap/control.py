"""The control plane's services, built once from settings: :func:`build_control_plane`.

``mlharbor server`` (through the app's lifespan), ``mlharbor worker`` and the demo all take
their registry, identities, monitor, alert loop, policies, job store, job runner and trigger
loop from one :class:`ControlPlaneServices`. The monitor is built on first use (it claims a
prediction-log journal slot), once, under a lock; everything that needs it (routes, the alert
loop, the trigger loop, the retrain kind's rollout signals) gets that one.

``start(jobs=...)`` starts the background loops: alerts always (when rules are in force); the
job runner and the trigger loop when ``jobs`` (``pipelines.run_jobs``; the trigger loop also
needs ``pipelines.triggers``). ``stop()`` stops them: the runner finishes its step or abandons
it at its next check (``JobRunner.abandon``), and a job it did not finish is resumed by any
runner sharing the database once its lease (``pipelines.job_lease_s``) expires.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlharbor.monitoring.service import Monitor
    from mlharbor.monitoring.signals import AlertLoop
    from mlharbor.pipelines.jobs import JobRunner, JobStore
    from mlharbor.pipelines.triggers import TriggerLoop
    from mlharbor.registry.policies import PolicyService
    from mlharbor.registry.service import Registry
    from mlharbor.security.identities import IdentityStore
    from mlharbor.settings import Settings

log = logging.getLogger(__name__)

#: How long ``stop()`` waits for the runner to finish or abandon its step.
STOP_GRACE_S = 20.0


class _MonitorProxy:
    """Stands for the services' monitor until something first uses it."""

    def __init__(self, services: ControlPlaneServices) -> None:
        self._services = services

    def __getattr__(self, name: str) -> Any:
        return getattr(self._services.monitor, name)


class ControlPlaneServices:
    """Everything the control plane runs on, built from one settings tree."""

    def __init__(self, settings: Settings, registry: Registry, *,
                 owner: str | None = None, monitor: Monitor | None = None) -> None:
        from typing import cast

        from mlharbor.bootstrap import open_identities
        from mlharbor.bootstrap.jobs import RetrainKinds, job_notifier
        from mlharbor.monitoring.service import open_alerts
        from mlharbor.pipelines.jobs import JobRunner, JobStore
        from mlharbor.pipelines.retrain import JOB_KIND
        from mlharbor.registry.policies import PolicyService

        self.settings = settings
        self.registry = registry
        self._monitor = monitor
        self._lock = threading.Lock()
        self.identities: IdentityStore = open_identities(registry)
        self.policies: PolicyService = PolicyService(registry)
        self.jobs: JobStore = JobStore(registry.store)
        # Experiment tracking (issue 16): runs in the registry's database, run files in its
        # artifact store (content-addressed, encrypted when the store is).
        from mlharbor.tracking.files import TrackingFiles
        from mlharbor.tracking.store import TrackingStore

        self.tracking = TrackingStore(registry.store.db)
        self.tracking_files = TrackingFiles(self.tracking, registry.artifacts)
        # Rules are read and checked now (a bad rules file fails the start, not a tick).
        self.alert_loop: AlertLoop | None = open_alerts(
            settings, cast("Monitor", _MonitorProxy(self)))
        pipes = settings.pipelines
        self.runner: JobRunner = JobRunner(
            self.jobs, [], owner=owner, lease_seconds=pipes.job_lease_s,
            poll_seconds=pipes.job_poll_s,
            kind_for={JOB_KIND: RetrainKinds(registry, settings, lambda: self.monitor)},
            on_event=job_notifier(settings))
        self.triggers: TriggerLoop | None = None
        self._stop = threading.Event()
        self._runner_thread: threading.Thread | None = None
        self._abandoned = False
        self._alerts_started = False

    # -- the monitor, built once on first use ---------------------------------------------

    @property
    def monitor(self) -> Monitor:
        with self._lock:
            if self._monitor is None:
                from mlharbor.monitoring.service import Monitor

                self._monitor = Monitor(self.settings, self.registry)
            return self._monitor

    @monitor.setter
    def monitor(self, value: Monitor) -> None:
        """Use ``value`` instead (a caller's own monitor, set before anything used one)."""
        with self._lock:
            self._monitor = value

    # -- the background loops -------------------------------------------------------------

    def start(self, *, jobs: bool | None = None) -> ControlPlaneServices:
        """Start the alert loop, and the job runner and trigger loop when ``jobs`` (default:
        ``pipelines.run_jobs``)."""
        from mlharbor.pipelines.triggers import TriggerLoop

        pipes = self.settings.pipelines
        run_jobs = pipes.run_jobs if jobs is None else jobs
        if self.alert_loop is not None and not self._alerts_started:
            _ = self.monitor  # opened here once, not racing the first requests for it
            self.alert_loop.start()
            self._alerts_started = True
        if run_jobs and self._runner_thread is None:
            self._stop.clear()
            self._runner_thread = threading.Thread(
                target=self.runner.run_forever, args=(self._stop,), daemon=True,
                name="mlharbor-job-runner")
            self._runner_thread.start()
            log.info("job runner %s started (kinds: %s)", self.runner.owner,
                     ", ".join(self.runner.kind_names))
        if run_jobs and pipes.triggers and self.triggers is None:
            # Job notifications come from the runner's hook alone: one place, one message
            # per event, whoever submitted the job.
            self.triggers = TriggerLoop(self.registry, self.monitor,
                                        interval_s=pipes.trigger_interval_s).start()
        return self

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Stop every loop; the runner finishes or abandons its step (see the module doc)."""
        self._stop.set()
        if self.triggers is not None:
            self.triggers.stop()
            self.triggers = None
        thread = self._runner_thread
        if thread is not None:
            self.runner.abandon()
            thread.join(grace_s)
            if thread.is_alive():
                # A step that never checks (a long fit): leave it to the process exit; its
                # lease expires and another runner resumes the job.
                self._abandoned = True
                log.warning("job runner %s: a step is still running; it is abandoned and "
                            "resumed by another runner after its lease", self.runner.owner)
            self._runner_thread = None
        if self.alert_loop is not None and self._alerts_started:
            self.alert_loop.stop()

    def close(self) -> None:
        """Stop, then close the monitor's log and the registry (not while an abandoned step
        may still use them: the process exit ends both)."""
        self.stop()
        if self._abandoned:
            return
        with self._lock:
            monitor, self._monitor = self._monitor, None
        try:
            if monitor is not None:
                monitor.log.close(timeout=5)
        finally:
            self.registry.close()


def build_control_plane(settings: Settings, *, registry: Registry | None = None,
                        monitor: Monitor | None = None, owner: str | None = None
                        ) -> ControlPlaneServices:
    """The control plane's services for ``settings`` (the registry opened unless given)."""
    from mlharbor.bootstrap import open_registry

    reg = registry or open_registry(settings)
    try:
        return ControlPlaneServices(settings, reg, owner=owner, monitor=monitor)
    except BaseException:
        if registry is None:
            reg.close()
        raise
