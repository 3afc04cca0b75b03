"""``mlharbor predict MODEL_REF --input PATH --output PATH``: batch scoring.

Scores CSV or Parquet files (a file, a folder, a glob; local or ``s3://``) with a registered
version into a folder of Parquet parts, locally or on a Dask cluster, resumably. A progress bar
(rows, rows/s, ETA) shows on a terminal; elsewhere the command prints only its summary.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer


def parse_bytes(text: str) -> int:
    """``--memory-budget``: a size (``512MiB``, ``2GB``, bytes) through the one size parser,
    more than zero."""
    from mlharbor.core.errors import InvalidInputError
    from mlharbor.core.sizes import parse_size

    value = parse_size(text, what="--memory-budget")
    if value <= 0:
        raise InvalidInputError(f"--memory-budget {text!r} must be more than 0 bytes",
                                field="memory_budget")
    return value


def register(app: typer.Typer) -> None:
    @app.command("predict")
    def predict(
        ctx: typer.Context,
        model_ref: str = typer.Argument(..., help="Version to score with: churn:3, "
                                        "churn@champion."),
        input: str = typer.Option(..., "--input", "-i", help="CSV or Parquet: a file, a "
                                  "folder, or a glob; local or s3://bucket/prefix."),
        output: Path = typer.Option(..., "--output", "-o", help="Folder for the Parquet "
                                    "parts (a rerun resumes it)."),
        engine: str = typer.Option("local", help="local, or dask (with --scheduler)."),
        scheduler: str = typer.Option(None, help="Dask scheduler address, tcp://HOST:PORT."),
        workers: int = typer.Option(None, help="Local threads (default: every core)."),
        id_column: str = typer.Option(None, help="Input column copied to the output beside "
                                      "each prediction."),
        on_error: str = typer.Option("stop", help="Rows the signature refuses: stop the job, "
                                     "or write them to the errors file and go on (file)."),
        errors: Path = typer.Option(None, help="Errors file (CSV) for --on-error file "
                                    "[default: OUTPUT/_errors.csv]."),
        memory_budget: str = typer.Option(None, help="Peak resident memory (RSS) of this "
                                          "process, everything included (of each worker "
                                          "process with --engine dask), e.g. 800MB; batches "
                                          "are sized to stay under it, and a budget too small "
                                          "for the model and one batch is refused."),
        part_rows: int = typer.Option(1_000_000, help="Rows per part (the unit of work and of "
                                      "resuming; Parquet row groups are never split)."),
        log: bool = typer.Option(False, "--log", help="Also write the rows to the "
                                 "prediction log, so drift monitoring sees them."),
    ) -> None:
        """Score a dataset with a registered model version into a Parquet folder."""
        from mlharbor.bootstrap import open_registry
        from mlharbor.cli.admin import cli_actor
        from mlharbor.cli.main import settings_from
        from mlharbor.pipelines.batchscore import BatchOptions, score_batch

        options = BatchOptions(
            input=input, output=output, engine=engine, scheduler=scheduler, workers=workers,
            id_column=id_column, on_error=on_error, errors=errors,
            memory_budget=None if memory_budget is None else parse_bytes(memory_budget),
            log=log, part_rows=part_rows)
        settings = settings_from(ctx)
        registry = open_registry(settings)
        try:
            with _progress() as progress:
                summary = score_batch(registry, settings, model_ref, options,
                                      actor=cli_actor(), progress=progress)
        finally:
            registry.close()
        for line in summary.lines():
            typer.echo(line)


class _progress:
    """A Rich progress bar (rows, rows/s, ETA) on a terminal; silent callbacks elsewhere."""

    def __enter__(self) -> Any:
        from mlharbor.pipelines.batchscore import Progress

        self._bar: Any = None
        if not sys.stderr.isatty():
            return Progress()
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TaskProgressColumn,
            TextColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as Bar

        class _Rate(TextColumn):
            def render(self, task: Any) -> Any:  # rows per second, as rows are counted
                from rich.text import Text

                speed = task.finished_speed or task.speed
                return Text(f"{speed:,.0f} rows/s" if speed else "- rows/s")

        self._bar = Bar(TextColumn("scoring"), BarColumn(), MofNCompleteColumn(),
                        TaskProgressColumn(), _Rate(""), TimeRemainingColumn(),
                        console=Console(stderr=True), transient=False)
        self._bar.__enter__()
        task = self._bar.add_task("rows", total=None)

        def start(total: int | None, done: int) -> None:
            self._bar.update(task, total=total, completed=done)

        def advance(rows: int) -> None:
            self._bar.advance(task, rows)

        return Progress(start=start, advance=advance)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
