"""``mlharbor train``, ``mlharbor evaluate`` and ``mlharbor reproduce``.

Heavy libraries (pandas, scikit-learn, matplotlib) are imported inside the commands only.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from mlharbor.pipelines.train_job import TrainJobResult


def register(app: typer.Typer) -> None:
    @app.command("train")
    def train_command(
        ctx: typer.Context,
        recipe: Path = typer.Argument(..., help="Recipe YAML file."),
        report: Path = typer.Option(None, "--report", help="Also write the HTML report here."),
        as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
        backend: str = typer.Option(
            None, "--backend", help="Where the CV and search fits run: local or dask "
            "(default: the recipe's training.backend, else the settings')."),
        scheduler: str = typer.Option(
            None, "--scheduler", help="Dask scheduler for --backend dask: tcp://HOST:PORT."),
        experiment: str = typer.Option(
            None, "--experiment", help="Experiment the run is recorded in (default: the "
            "recipe's model name); see `mlharbor runs list`."),
    ) -> None:
        """Train the recipe's candidates, evaluate, judge the gates and register the winner.

        The training is recorded as a run with a child run per candidate and search point
        (params, per-fold and holdout metrics, timings, data fingerprint, code version, the
        report); the registered version and the run name each other.

        With --backend dask --scheduler tcp://HOST:PORT, every candidate x search setting x
        fold fit runs on that Dask cluster; the metrics are the same as a local run's."""
        from mlharbor.bootstrap import open_registry
        from mlharbor.cli.main import settings_from
        from mlharbor.cli.output import check_output
        from mlharbor.pipelines.train_job import train
        from mlharbor.training.recipe import load_recipe

        check_output(report, what="the HTML report")  # before training, not after
        settings = settings_from(ctx)
        parsed = load_recipe(recipe)
        registry = open_registry(settings)
        from mlharbor.bootstrap.tracking import open_tracker

        tracker = open_tracker(settings, registry=registry)
        try:
            with _RichProgress() as progress:
                result = train(parsed, registry=registry, settings=settings, progress=progress,
                               backend=backend, scheduler=scheduler,
                               tracking=lambda default: tracker.start_run(
                                   experiment=experiment or default,
                                   run_name=f"train {default}"))
        finally:
            tracker.flusher.close()
            registry.close()
        if report is not None:
            _write_report(report, result.outcome.report)
        if as_json:
            _print_json_result(result)
        else:
            _print_train_result(result)
        if not result.passed:
            failed = result.outcome.failed_gates
            gates = "; ".join(f"gate {v.gate!r} failed ({v.detail})" for v in failed)
            sys.stderr.write(
                f"error: {gates}. Registered {result.version.ref} with status 'failed'; no "
                "alias moved.\n"
            )
            raise SystemExit(1)

    @app.command("evaluate")
    def evaluate_command(
        ctx: typer.Context,
        ref: str = typer.Argument(..., help="Model reference: churn@champion, churn:3 ..."),
        data: str = typer.Option(..., "--data", help="Labelled CSV/Parquet file (or s3://)."),
        target: str = typer.Option(None, "--target", help="The label column (default: the "
                                   "one training recorded; needed for a model registered "
                                   "with `models register`)."),
        report: Path = typer.Option(None, "--report", help="Also write an HTML report here."),
        as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    ) -> None:
        """Score any registered version on new labelled data: metrics of its task with 95%
        bootstrap intervals, beside the naive baseline (majority class or mean)."""
        from mlharbor.bootstrap import open_registry
        from mlharbor.cli.main import settings_from
        from mlharbor.cli.output import print_json, print_table
        from mlharbor.pipelines.evaluate_job import evaluate

        settings = settings_from(ctx)
        registry = open_registry(settings)
        try:
            result = evaluate(registry, ref, data, settings=settings, target=target)
        finally:
            registry.close()
        if report is not None:
            _write_report(report, result.report)
        if as_json:
            print_json(result.report)
            return
        holdout, stored = result.report["holdout"], result.report.get("stored_metrics") or {}
        baseline = result.report["baseline"]
        base = baseline["holdout"]["metrics"]
        ci = holdout.get("ci95", {})
        columns = ["metric", "value", "95% CI", f"baseline ({baseline['strategy']})"]
        rows = []
        for name, value in holdout["metrics"].items():
            interval = ci.get(name)
            rows.append([name, _num4(value),
                         f"{interval[0]:.4f} to {interval[1]:.4f}" if interval else "",
                         _num4(base.get(name))]
                        + ([_num4(stored.get(name))] if stored else []))
        print_table(f"{result.ref} on {result.rows} rows of {data} "
                    f"({result.report['task']}, target {result.report['target']!r})",
                    columns + (["at registration"] if stored else []), rows)
        cmp = baseline["comparison"]["holdout"]
        if cmp.get("difference") is not None:
            verdict = ("better than" if cmp.get("significantly_better")
                       else "not clearly better than")
            sys.stdout.write(f"{cmp['metric']}: {cmp['difference']:+.4f} against the "
                             f"baseline ({verdict} it).\n")

    @app.command("reproduce")
    def reproduce_command(
        ctx: typer.Context,
        ref: str = typer.Argument(..., help="Version to re-run: churn:3, churn@champion ..."),
        as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
        backend: str = typer.Option(None, "--backend", help="local or dask (as for train)."),
        scheduler: str = typer.Option(
            None, "--scheduler", help="Dask scheduler for --backend dask: tcp://HOST:PORT."),
        experiment: str = typer.Option(
            None, "--experiment", help="Experiment the reproduction's run is recorded in "
            "(default: the model's name, as for train)."),
    ) -> None:
        """Re-run training from a version's stored lineage and check the metrics match.

        The reproduction is recorded as a run (with its candidates and search points, as a
        training's), tagged mlharbor.reproduces=<version> and with the verdict."""
        from mlharbor.bootstrap import open_registry
        from mlharbor.bootstrap.tracking import open_tracker
        from mlharbor.cli.main import settings_from
        from mlharbor.cli.output import print_json, print_table
        from mlharbor.pipelines.train_job import reproduce

        settings = settings_from(ctx)
        registry = open_registry(settings)
        tracker = open_tracker(settings, registry=registry)
        try:
            with _RichProgress() as progress:
                result = reproduce(registry, ref, settings=settings, progress=progress,
                                   backend=backend, scheduler=scheduler,
                                   tracking=lambda default: tracker.start_run(
                                       experiment=experiment or default,
                                       run_name="reproduce "
                                       + registry.get_version(ref).ref))
        finally:
            tracker.flusher.close()
            registry.close()
        if as_json:  # stdout holds the JSON alone; the verdict is in it and in the exit code
            print_json({
                "ref": result.ref, "matches": result.matches, "same_data": result.same_data,
                "run_id": result.run_id,
                "metrics": [{"metric": c.metric, "stored": c.stored,
                             "reproduced": c.reproduced, "matches": c.matches}
                            for c in result.checks],
            })
        else:
            print_table(f"Reproducing {result.ref}", ["metric", "stored", "reproduced", "match"],
                        [(c.metric, _num(c.stored), _num(c.reproduced),
                          "yes" if c.matches else "NO") for c in result.checks])
            if result.run_id is not None:
                sys.stdout.write(f"Run: {result.run_id} (mlharbor runs show "
                                 f"{result.run_id})\n")
        if not result.same_data:
            sys.stderr.write(f"error: the data changed since {result.ref} was trained (its "
                             "fingerprint differs); metrics cannot be compared.\n")
            raise SystemExit(1)
        if not result.matches:
            differing = [c.metric for c in result.checks if not c.matches]
            sys.stderr.write(f"error: {result.ref} did not reproduce: {', '.join(differing)} "
                             "differ.\n")
            raise SystemExit(1)
        if not as_json:
            sys.stdout.write(f"{result.ref} reproduced: all {len(result.checks)} metrics "
                             "match.\n")


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:.6f}"


def _num4(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def _write_report(path: Path, report: dict[str, Any]) -> None:
    from mlharbor.cli.output import write_output
    from mlharbor.evaluation.html import render_html

    write_output(path, render_html(report), what="the HTML report")


def _metrics_table(
    title: str, metrics: dict[str, float], ci: dict[str, list[float]],
    other: dict[str, float] | None = None, other_name: str = "at registration",
) -> None:
    from mlharbor.cli.output import print_table

    columns = ["metric", "value", "95% CI"] + ([other_name] if other else [])
    rows = []
    for name, value in metrics.items():
        interval = ci.get(name)
        row = [name, f"{value:.4f}", f"{interval[0]:.4f} to {interval[1]:.4f}" if interval else ""]
        if other:
            stored = other.get(name)
            row.append("" if stored is None else f"{stored:.4f}")
        rows.append(row)
    print_table(title, columns, rows)


def _print_train_result(result: TrainJobResult) -> None:
    from mlharbor.cli.output import print_table

    report = result.outcome.report
    primary = report["primary_metric"]
    rows = []
    for cand in report["candidates"]:
        cv = cand["cv"]
        mean, std = cv["mean"].get(primary), cv["std"].get(primary)
        rows.append([
            ("* " if cand["name"] == report["winner"] else "  ") + cand["name"],
            cand["estimator"].rsplit(".", 1)[-1],
            f"{mean:.4f} ± {std:.4f}" if mean is not None else "",
            str(cand["settings_tried"]),
            ", ".join(f"{k}={v}" for k, v in cand["best_params"].items()),
        ])
    base = report["baseline"]["cv"]
    rows.append([f"  baseline ({report['baseline']['strategy']})", "Dummy",
                 f"{base['mean'].get(primary, 0):.4f} ± {base['std'].get(primary, 0):.4f}",
                 "1", ""])
    print_table(f"Candidates (CV {primary}, {report['splits']['folds']} folds)",
                ["candidate", "estimator", f"CV {primary}", "settings", "best params"], rows)
    holdout = report["holdout"]
    base_hold = report["baseline"]["holdout"]["metrics"]
    _metrics_table(f"Winner {report['winner']} on the holdout "
                   f"({report['splits']['holdout_rows']} rows)",
                   holdout["metrics"], holdout.get("ci95", {}), base_hold, "baseline")
    champion = report.get("champion")
    if champion and "error" not in champion:
        cmp = champion["comparison"]["holdout"]
        sys.stdout.write(f"Champion {champion['ref']}: {primary} difference "
                         f"{cmp['difference']:+.4f} (p = {cmp['p_value']}).\n")
    elif report.get("champion_note"):
        sys.stdout.write(report["champion_note"] + "\n")
    print_table("Gates", ["gate", "verdict", "detail"],
                [(v.gate, "pass" if v.passed else "FAIL", v.detail)
                 for v in result.outcome.verdicts])
    status = "ready" if result.passed else "failed"
    alias = f", alias {result.alias!r} now points to it" if result.alias else ""
    sys.stdout.write(f"Registered {result.version.ref} ({status}){alias}.\n")
    if result.report_path is not None:
        sys.stdout.write(f"Report: {result.report_path}\n")
    if result.run_id is not None:
        sys.stdout.write(f"Run: {result.run_id} (mlharbor runs show {result.run_id})\n")


def _print_json_result(result: TrainJobResult) -> None:
    from mlharbor.cli.output import print_json

    print_json({
        "version": result.version.ref,
        "status": "ready" if result.passed else "failed",
        "alias": result.alias,
        "run_id": result.run_id,
        "winner": result.outcome.winner,
        "metrics": result.outcome.metrics,
        "gates": [v.to_dict() for v in result.outcome.verdicts],
        # What stderr said while training (data-check warnings such as dropped unlabelled
        # rows, library warnings summarised), for scripts that only read stdout.
        "warnings": [f.message for f in result.outcome.checks.warnings]
        + list(result.outcome.report.get("library_warnings", [])),
    })


class _RichProgress:
    """Rich progress bars on stderr for the pipeline's Progress protocol."""

    def __enter__(self) -> Any:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        from mlharbor.pipelines.train_job import Progress as Sink

        console = Console(stderr=True)
        bars = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                        MofNCompleteColumn(), TimeElapsedColumn(), console=console,
                        transient=False)
        tasks: dict[str, Any] = {}

        class RichSink(Sink):
            def start(self, task: str, description: str, total: int | None = None) -> None:
                if not bars.live.is_started:
                    bars.start()  # lazily: an early error leaves no empty bar behind
                tasks[task] = bars.add_task(description, total=total)

            def advance(self, task: str, amount: int = 1) -> None:
                if task in tasks:
                    bars.advance(tasks[task], amount)

            def finish(self, task: str) -> None:
                if task in tasks:
                    current = bars.tasks[tasks[task]]
                    bars.update(tasks[task], total=current.total or 1,
                                completed=current.total or 1)

            def note(self, message: str) -> None:
                bars.console.print(message, markup=False, highlight=False, soft_wrap=True)

        self._bars = bars
        return RichSink()

    def __exit__(self, *exc: object) -> None:
        if self._bars.live.is_started:
            self._bars.stop()
