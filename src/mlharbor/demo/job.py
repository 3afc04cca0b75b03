"""The demo loop on the embedded default (SQLite + local files)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlharbor.settings import Settings

MODEL_NAME = "churn"


def dataset_path() -> Path:
    return Path(str(resources.files("mlharbor.demo").joinpath("churn.csv")))


def recipe_path() -> Path:
    return Path(str(resources.files("mlharbor.demo").joinpath("recipe.yaml")))


def policy_path() -> Path:
    """The demo's retraining policy for the endpoint ``churn`` (short windows and holds)."""
    return Path(str(resources.files("mlharbor.demo").joinpath("policy.yaml")))


def demo_settings(settings: Settings) -> Settings:
    """``settings`` with the demo's quick loops: triggers evaluated every 5 s, the job runner
    polling every 0.5 s, serving re-reading its endpoints every second (never slower than
    what the user configured). Only the demo runs with these; the defaults stay as they are."""
    pipes = settings.pipelines.model_copy(update={
        "trigger_interval_s": min(settings.pipelines.trigger_interval_s, 5.0),
        "job_poll_s": min(settings.pipelines.job_poll_s, 0.5)})
    serving = settings.serving.model_copy(update={
        "poll_interval_s": min(settings.serving.poll_interval_s, 1.0)})
    return settings.model_copy(update={"pipelines": pipes, "serving": serving})


def store_endpoint(registry: Any) -> str:
    """The stored endpoint ``churn``: all traffic to ``churn@champion``, created or reset to
    that (a rollout moves its weights, the serving process follows them). What was done."""
    from mlharbor.core.errors import NotFoundError
    from mlharbor.registry.endpoints import EndpointService, EndpointSpec

    service = EndpointService(registry)
    wanted = EndpointSpec(name=MODEL_NAME, description="The demo's churn classifier.",
                          routes=[{"ref": f"{MODEL_NAME}@champion", "weight": 100.0}])
    try:
        current = service.get(MODEL_NAME)
    except NotFoundError:
        service.create(wanted, actor="demo", reason="demo: serve churn@champion")
        return "created"
    if current.spec.model_dump() == wanted.model_dump():
        return "unchanged"
    service.update(MODEL_NAME, wanted.model_dump(), replace=True, actor="demo",
                   reason="demo: all traffic back to churn@champion")
    return "reset"


def apply_policy(registry: Any) -> Any:
    """Apply the demo's retraining policy (no new revision when it is already stored)."""
    from mlharbor.pipelines.policy import load_policy
    from mlharbor.registry.policies import PolicyService

    return PolicyService(registry).apply(load_policy(policy_path()), actor="demo",
                                         reason="demo: retrain churn on drift")


def run_demo(settings: Settings, *, serve: bool = True, traffic: bool = True) -> None:
    """Train the demo recipe, register the winner, print a key, store the endpoint ``churn``
    and the demo's retraining policy, then serve it (see :func:`_serve_demo`)."""
    import pandas as pd
    from rich.console import Console

    from mlharbor.bootstrap import open_registry
    from mlharbor.bootstrap.tracking import open_tracker
    from mlharbor.cli.models import _version_rows
    from mlharbor.cli.output import print_kv
    from mlharbor.cli.train import _print_train_result, _RichProgress
    from mlharbor.core.errors import ConflictError, NotFoundError
    from mlharbor.pipelines.train_job import train

    console = Console()
    settings = demo_settings(settings)
    registry = open_registry(settings)
    tracker = open_tracker(settings, registry=registry)
    try:
        with _RichProgress() as progress:  # recorded as a run, as `mlharbor train` is
            result = train(recipe_path(), registry=registry, settings=settings,
                           progress=progress, actor="demo",
                           tracking=lambda default: tracker.start_run(
                               experiment=default, run_name=f"train {default}"))
        _print_train_result(result)
        if not result.passed:
            try:  # an earlier run's champion (retrained by the loop, say) keeps serving
                version = registry.get_version(f"{MODEL_NAME}@champion")
            except NotFoundError:
                raise ConflictError(f"The demo model {result.version.ref} failed its gates; "
                                    "nothing to serve.") from None
            console.print(f"{result.version.ref} failed its gates against the champion "
                          f"{version.ref} (see the report); {version.ref} keeps serving.",
                          markup=False, highlight=False, soft_wrap=True)
        version = registry.get_version(f"{MODEL_NAME}@champion")
        print_kv(f"Serving {version.ref}", _version_rows(version))
        key = _print_demo_key(registry, console, settings if serve else None)
        if serve:
            store_endpoint(registry)
            apply_policy(registry)
    finally:
        tracker.flusher.close()
        registry.close()
    console.print(f"Home: {settings.home}   Reports: {settings.home / 'reports'}",
                  markup=False, highlight=False, soft_wrap=True)
    console.print("Look around: `.venv/bin/mlharbor models list`, "
                  f"`.venv/bin/mlharbor models show {MODEL_NAME}@champion`"
                  + (", and the control plane below (/ui, /docs)." if serve else
                     ", `.venv/bin/mlharbor server` (control plane, /docs, /ui)."),
                  markup=False, highlight=False, soft_wrap=True)
    if serve:
        frame = pd.read_csv(dataset_path())
        _serve_demo(settings, key, frame, console, traffic=traffic)


def _serve_demo(settings: Settings, key: str | None, frame: Any, console: Any, *,
                traffic: bool = True) -> None:
    """Serve the stored endpoints (``churn``: 100% churn@champion) until Ctrl-C, after showing
    how to call it; meanwhile run the control plane (dashboard, /docs, job runner, trigger
    loop) next to it and, unless ``traffic`` is off, send it demo traffic with a gradual drift
    and delayed ground truth. The demo policy then closes the loop by itself (one retraining
    job, canary, promotion), told one line per step by :class:`~mlharbor.demo.watch.LoopWatcher`.
    Serving reads the stored endpoint, so the rollout's weight moves reach it through its
    reconciler, as they would in ``mlharbor serve``."""
    import json

    from mlharbor.cli.serve import serve_with_monitoring
    from mlharbor.demo.traffic import DemoTraffic
    from mlharbor.demo.watch import LoopWatcher

    host, port = settings.server.host, settings.server.port
    url = f"http://{host}:{port}"
    row = frame.drop(columns=["churn", "customer_id"]).head(1)
    body = json.dumps(json.loads(row.to_json(orient="records")))
    auth = f'-H "Authorization: Bearer {key}" ' if key else '-H "Authorization: Bearer $KEY" '
    console.print(f"Serving {MODEL_NAME}@champion at {url} (Ctrl-C stops). Try:",
                  markup=False, highlight=False, soft_wrap=True)
    console.print(f"curl -s {auth}-H 'content-type: application/json' "
                  f"{url}/v1/endpoints/{MODEL_NAME}/predict -d '{body}'",
                  markup=False, highlight=False, soft_wrap=True)
    console.print(f"Also: {url}/v2/models/{MODEL_NAME} (Open Inference), {url}/invocations "
                  f"(MLflow), {url}/v1/models/{MODEL_NAME}:predict (KServe), {url}/metrics",
                  markup=False, highlight=False, soft_wrap=True)
    control, sender, watcher = ControlPlane(settings), None, None
    print_line = _line_printer(console)
    try:
        control.start()
        if control.url:
            login = (f"; in a browser, log in first at {control.url}/ui/login with the key"
                     if control.has_route("/ui/login") else "")
            console.print(f"Control plane at {control.url}: dashboard {control.url}/ui"
                          f"#/endpoints/{MODEL_NAME}, API docs {control.url}/docs, "
                          f"performance {control.url}/api/v1/monitoring/endpoints/{MODEL_NAME}"
                          "/performance?window=1h&step=5m (send the key above as an "
                          f"Authorization: Bearer header{login}).",
                          markup=False, highlight=False, soft_wrap=True)
        else:
            console.print(f"The control plane did not start ({control.error}); run "
                          "`.venv/bin/mlharbor server --port PORT` for /ui and /docs.",
                          markup=False, highlight=False, soft_wrap=True)
        if traffic and port and key and not settings.server.tls_certfile:
            sender = DemoTraffic(_client_url(host, port), MODEL_NAME, key, frame,
                                 record=control.record_feedback).start()
            console.print(f"Sending demo traffic to {MODEL_NAME} (a few requests per second; "
                          "over 90 seconds prices rise, month-to-month contracts grow and "
                          "month-to-month DSL customers start leaving; labels follow a few "
                          "seconds later; --no-traffic turns it off).", markup=False,
                          highlight=False, soft_wrap=True)
        if control.url and control.services is not None:
            print_line(_policy_line(control.url))
            counts = sender.counts if sender is not None else None
            watcher = LoopWatcher(control.services.jobs, MODEL_NAME, print_line,
                                  ui=f"{control.url}/ui", traffic=counts).start()
            cooling = cooldown_line(control.services.jobs, control.url)
            if cooling:
                print_line(cooling)
        serve_with_monitoring(settings, json_logs=False)  # the stored endpoints
    finally:
        if watcher is not None:
            watcher.stop()
        if sender is not None:
            sender.stop()
            print_line(f"Demo traffic: {sender.counts()}.")
        control.stop()


def _policy_line(url: str) -> str:
    """What the demo's retraining policy will do, in one line, and where to watch it."""
    from mlharbor.pipelines.policy import load_policy

    policy = load_policy(policy_path())
    drift, canary = policy.triggers.drift, policy.rollout.canary
    when = (f"drift in {drift.at_least} of the last {drift.of} {drift.window} windows"
            if drift else "a trigger")
    steps = " -> ".join(f"{step}%" for step in canary.steps)
    return (f"Retraining policy of endpoint {policy.endpoint}: {when} retrains on the "
            f"champion's data + labelled traffic, validates against the champion and the "
            f"baseline, canaries {steps} with live-accuracy guards, then promotes "
            f"(.venv/bin/mlharbor policies show {policy.endpoint}). Watch: {url}/ui#/jobs "
            "and .venv/bin/mlharbor jobs list")


def cooldown_line(jobs: Any, url: str) -> str | None:
    """When an earlier demo run in this home started a job within the policy's cooldown, no
    job starts now: say so (and until when) instead of leaving the newcomer waiting."""
    from datetime import UTC, datetime

    from mlharbor.core.clock import utcnow
    from mlharbor.pipelines.policy import load_policy

    last = next(iter(jobs.list_jobs(endpoint=MODEL_NAME, limit=1)), None)
    if last is None:
        return None
    try:
        started = datetime.fromisoformat(str(last.request.get("at")))
    except ValueError:
        started = last.created_at
    if started.tzinfo is None:
        started = started.replace(tzinfo=UTC)
    until = started + load_policy(policy_path()).triggers.cooldown_delta
    if until <= utcnow():
        return None
    return (f"Job {last.id} ({url}/ui#/jobs/{last.id}) of an earlier demo run started at "
            f"{started:%H:%M:%S} UTC; the policy's cooldown starts no other before "
            f"{until:%H:%M:%S} UTC (a new home, MLHARBOR_HOME=..., shows the loop again).")


def _client_url(host: str, port: int) -> str:
    """Where this process reaches a server bound to ``host``."""
    if host in ("0.0.0.0", "", "::", "[::]"):  # a wildcard: reach it on loopback
        host = "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"


class ControlPlane:
    """The control-plane app (registry API, /docs, monitoring, /ui) on ``server.port + 1``, in a
    background thread of the demo process; it shares the settings and home with serving."""

    def __init__(self, settings: Settings) -> None:
        import threading

        self.settings = settings
        self.url: str | None = None
        self.error: str | None = None
        self.monitor: Any = None
        self._server: Any = None
        self._app: Any = None
        self._thread = threading.Thread(target=self._serve, name="demo-control-plane",
                                        daemon=True)

    def start(self, timeout: float = 30.0) -> ControlPlane:
        import time

        import uvicorn

        from mlharbor.api.app import create_app

        settings = self.settings
        port = settings.server.port + 1 if settings.server.port else 0
        try:
            app = self._app = create_app(settings)
            # One monitor for the app, its job runner and the demo's feedback: the control
            # plane's (one journal slot, not two).
            self.monitor = app.state.services.monitor
        except Exception as exc:  # the demo still serves without its control plane
            self.error = f"{type(exc).__name__}: {exc}"
            return self
        config = uvicorn.Config(app, host=settings.server.host, port=port, lifespan="on",
                                access_log=False, server_header=False, log_config=None,
                                log_level="warning",
                                ssl_certfile=settings.server.tls_certfile,
                                ssl_keyfile=settings.server.tls_keyfile)
        self._server = uvicorn.Server(config)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.error = f"could not listen on {settings.server.host}:{port}"
                self.stop()
                return self
            time.sleep(0.05)
        bound = self._server.servers[0].sockets[0].getsockname()[1]
        scheme = "https" if settings.server.tls_certfile else "http"
        self.url = _client_url(settings.server.host, int(bound)).replace("http", scheme, 1)
        return self

    def _serve(self) -> None:
        try:
            self._server.run()
        except BaseException as exc:  # uvicorn sys.exit()s on bind errors
            self.error = f"{type(exc).__name__}: {exc}"

    @property
    def services(self) -> Any:
        """The app's :class:`~mlharbor.bootstrap.ControlPlaneServices` (job store, runner ...),
        or None when the control plane did not start."""
        return self._app.state.services if self._app is not None else None

    def has_route(self, path: str) -> bool:
        return self._app is not None and any(
            getattr(route, "path", None) == path for route in self._app.routes)

    def record_feedback(self, endpoint: str, labels: list[dict[str, Any]]) -> int:
        """Ground truth for logged predictions, through the Monitor's feedback API."""
        if self.monitor is None:
            from mlharbor.monitoring.service import Monitor

            self.monitor = Monitor(self.settings)
        return int(self.monitor.feedback.add(endpoint, {"labels": labels}))

    def stop(self, timeout: float = 10.0) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout)
        self.monitor = None
        if self._app is not None:
            self._app.state.services.close()  # the monitor's log, then the registry
            self._app = None


def _line_printer(console: Any) -> Any:
    """Print one line as it is: no markup, no highlighting, never wrapped."""
    def print_line(text: str) -> None:
        console.print(text, markup=False, highlight=False, soft_wrap=True)
    return print_line


def _print_demo_key(registry: Any, console: Any, settings: Settings | None = None
                    ) -> str | None:
    """The server needs a key: create a fresh one for the demo admin and show it once."""
    from mlharbor.bootstrap import open_identities

    key = open_identities(registry).demo_admin_key(actor="demo")
    if key is None:
        console.print("An admin already administers this installation; ask them for an API "
                      "key (`mlharbor admin keys create NAME`) and `export KEY=...` it.",
                      markup=False, highlight=False, soft_wrap=True)
        return None
    # Every command is printed on one line (soft_wrap: Rich never breaks it, also when the
    # output goes to a file) and works when pasted: the export line sets $KEY first.
    print_line = _line_printer(console)
    print_line("API key of 'demo-admin' (shown once; earlier demo keys are revoked):")
    print_line(key)
    print_line("To use it from a shell, paste:")
    print_line(f"export KEY={key}")
    if settings is not None and settings.server.port:  # the demo's own control plane
        where = _client_url(settings.server.host, settings.server.port + 1)
    else:
        where = "http://127.0.0.1:8080"  # `mlharbor server`'s default address
    print_line(f'curl -s -H "Authorization: Bearer $KEY" {where}/api/v1/models')
    return key
