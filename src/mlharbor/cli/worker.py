"""``mlharbor worker``: run durable jobs and the trigger loop without serving HTTP.

For teams that keep training off the control plane: run servers with
``pipelines.run_jobs: false`` and one or more workers on the machines that should train. Every
worker and server shares the jobs through the metadata database; a job is run by exactly one
of them (leases), and taken over by another if its runner dies.

SIGTERM or SIGINT stops the worker cleanly: the step running is finished or abandoned at its
next check (another runner resumes the job once its lease expires), and the exit status is 0.
"""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command("worker")
    def worker(
        ctx: typer.Context,
        triggers: bool = typer.Option(
            None, "--triggers/--no-triggers", help="Also evaluate the policies' triggers "
            "(default from settings: pipelines.triggers).", show_default=False),
    ) -> None:
        """Run retraining jobs (and the policies' triggers) until SIGTERM, without HTTP."""
        import logging
        import signal
        import threading

        from mlharbor.bootstrap import build_control_plane
        from mlharbor.cli.main import settings_from

        settings = settings_from(ctx)
        if triggers is not None:
            settings = settings.model_copy(update={"pipelines": settings.pipelines.model_copy(
                update={"triggers": triggers})})
        logging.basicConfig(level=logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        stop = threading.Event()

        def on_signal(signum: int, _frame: object) -> None:
            stop.set()

        services = build_control_plane(settings)
        try:
            previous = {sig: signal.signal(sig, on_signal)
                        for sig in (signal.SIGTERM, signal.SIGINT)}
            services.start(jobs=True)
            every = settings.pipelines.trigger_interval_s
            typer.echo(f"worker {services.runner.owner}: running jobs of kinds "
                       f"{', '.join(services.runner.kind_names)}; triggers "
                       f"{f'every {every:g} s' if services.triggers else 'off'}; SIGTERM "
                       "stops.", err=True)
            while not stop.wait(1.0):
                pass
            typer.echo("worker: stopping (the running step finishes or is abandoned).",
                       err=True)
        finally:
            services.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        typer.echo("worker: stopped.", err=True)
