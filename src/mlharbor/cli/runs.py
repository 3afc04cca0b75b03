"""``mlharbor runs``: list, show and compare tracked runs (:mod:`mlharbor.tracking`).

``list`` searches with MLflow's ``search_runs`` grammar (``--filter "metrics.f1 > 0.7 and
params.model = 'rf'"``, ``--order-by "metrics.f1 DESC"``), in the experiments named by
``--experiment`` (default: all). ``show`` prints one run with its child runs; ``compare``
prints two runs side by side (data fingerprint, code version, params, metrics, tags). Every
command has ``--json``; what they show is :mod:`mlharbor.tracking.compare`, as the dashboard's
Experiments page shows it.

Like ``mlharbor models`` and ``mlharbor jobs``, the commands read the metadata database of the
settings in use: the local home, or the database a team's ``mlharbor server`` runs on
(``MLHARBOR_DATABASE_URL``), so runs logged through the server's MLflow API show up here. Bad
input (a filter the parser cannot read, an unknown experiment or run id) is one error line and
exit code 2 or 3; nothing is written.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import typer

from mlharbor.cli.output import print_json

if TYPE_CHECKING:
    from mlharbor.core.runs import Run
    from mlharbor.tracking.store import TrackingStore

JSON_OPTION = typer.Option(False, "--json", help="Print JSON for scripts.")
DEFAULT_METRIC_COLUMNS = 5
DEFAULT_PARAM_COLUMNS = 3


@contextmanager
def _store(ctx: typer.Context) -> Iterator[TrackingStore]:
    from mlharbor.bootstrap import open_registry
    from mlharbor.cli.main import settings_from
    from mlharbor.tracking.store import TrackingStore

    registry = open_registry(settings_from(ctx))
    try:
        yield TrackingStore(registry.store.db)
    finally:
        registry.close()


def _when(ms: int | None) -> str:
    if ms is None:
        return ""
    return f"{datetime.fromtimestamp(ms / 1000, tz=UTC):%Y-%m-%d %H:%M:%S}"


def _duration(run: Run) -> str:
    if run.end_time is None:
        return ""
    seconds = (run.end_time - run.start_time) / 1000
    return f"{seconds:.1f} s" if seconds < 600 else f"{seconds / 60:.1f} min"


def _metric(run: Run, key: str) -> str:
    point = run.metrics.get(key)
    if point is None:
        return ""
    return "nan" if math.isnan(point.value) else f"{point.value:.4g}"


def _ordered_metrics(order_by: list[str]) -> list[str]:
    """Metric keys the sort names: shown first, so the table shows what it is sorted by."""
    from mlharbor.tracking.search import parse_order_by

    return [o.key for o in parse_order_by(order_by) if o.kind == "metric"]


def register(app: typer.Typer) -> None:
    runs_app = typer.Typer(help="List, show and compare tracked runs (experiment tracking).",
                           no_args_is_help=True)
    app.add_typer(runs_app, name="runs")

    @runs_app.command("list")
    def list_cmd(
        ctx: typer.Context,
        experiment: list[str] = typer.Option(
            None, "--experiment", "-e", help="Experiment name (or id); repeatable. Default: "
            "every active experiment. `mlharbor train` records into the recipe's name."),
        filter_: str = typer.Option(
            None, "--filter", "-f", help="MLflow search_runs filter: \"metrics.f1 > 0.7 and "
            "params.max_depth = '8' and tags.team = 'churn' and attributes.status = "
            "'FINISHED'\" (params and tags compare with quoted text)."),
        order_by: list[str] = typer.Option(
            None, "--order-by", "-o", help="\"metrics.f1 DESC\", \"params.lr\", "
            "\"attributes.start_time\"; repeatable. Default: newest first."),
        metric: list[str] = typer.Option(
            None, "--metric", "-m", help="Metric column to show; repeatable (default: the "
            f"sorted-by metric and the {DEFAULT_METRIC_COLUMNS} most common)."),
        param: list[str] = typer.Option(
            None, "--param", "-p", help="Param column to show; repeatable (default: the "
            f"{DEFAULT_PARAM_COLUMNS} most common)."),
        max_results: int = typer.Option(50, "--max-results", "-n", min=1, max=1000,
                                        help="Runs per page."),
        page_token: str = typer.Option(None, "--page-token", help="The next page's token."),
        view: str = typer.Option("active", "--view", help="active, deleted or all."),
        as_json: bool = JSON_OPTION,
    ) -> None:
        """List runs matching a filter, sorted by metrics, params, tags or attributes."""
        from mlharbor.tracking import compare

        order = list(order_by or [])
        with _store(ctx) as store:
            experiments = compare.select_experiments(store, list(experiment or []))
            page = compare.search(store, experiments, filter=filter_, order_by=order,
                                  max_results=max_results, page_token=page_token, view=view)
        names = {e.experiment_id: e.name for e in experiments}
        if as_json:
            print_json({"experiments": [{"experiment_id": e.experiment_id, "name": e.name}
                                        for e in experiments],
                        "runs": [compare.run_view(r, experiment_name=names.get(
                            r.experiment_id)) for r in page.runs],
                        "next_page_token": page.next_page_token})
            return
        metrics = list(dict.fromkeys([*(metric or []), *_ordered_metrics(order)]))
        if not metric:
            metrics += [k for k in compare.metric_columns(page.runs)
                        if k not in metrics][:DEFAULT_METRIC_COLUMNS]
        params = list(param or compare.param_columns(page.runs, DEFAULT_PARAM_COLUMNS))
        several = len(experiments) > 1
        title = (f"Runs of {', '.join(repr(e.name) for e in experiments)}" if len(experiments)
                 <= 3 else f"Runs of {len(experiments)} experiments") + f" ({len(page.runs)}" \
            + (", more" if page.next_page_token else "") + ")"
        _runs_table(
            title,
            ["run", "name", *(["experiment"] if several else []), "status", "parent",
             "started", "took", *metrics, *(f"params.{p}" for p in params)],
            [(r.run_id[:compare.SHORT_ID], r.name,
              *([names.get(r.experiment_id, r.experiment_id)] if several else []),
              r.status.value, (r.parent_run_id or "")[:compare.SHORT_ID],
              _when(r.start_time)[5:16], _duration(r),
              *(_metric(r, k) for k in metrics), *(_short(r.params.get(p, "")) for p in params))
             for r in page.runs])
        typer.echo("Run ids are shortened; show and compare take them as they are (--json "
                   "prints whole ids).", err=True)
        if page.next_page_token:
            typer.echo(f"More: --page-token {page.next_page_token}")

    @runs_app.command("show")
    def show_cmd(
        ctx: typer.Context,
        run_id: str = typer.Argument(..., help="Run id, or its first characters (6 or more)."),
        as_json: bool = JSON_OPTION,
    ) -> None:
        """Show one run: where it came from, its params, metrics, tags and child runs."""
        from mlharbor.tracking import compare

        with _store(ctx) as store:
            run = store.get_run(compare.resolve_run_id(store, run_id))
            experiment = store.get_experiment(run.experiment_id)
            children = store.child_runs(run.run_id)
        view = compare.run_view(run, experiment_name=experiment.name)
        if as_json:
            print_json({**view, "children": [compare.run_view(
                c, experiment_name=experiment.name) for c in children]})
            return
        _kv(f"Run {run.run_id}", [
            ("name", run.name),
            ("experiment", f"{experiment.name} (id {experiment.experiment_id})"),
            ("status", run.status.value + (f": {run.error}" if run.error else "")),
            ("started", f"{_when(run.start_time)} by {run.user_id or '?'}"),
            ("duration", _duration(run)),
            ("parent run", run.parent_run_id),
            ("data fingerprint", view["data_fingerprint"]),
            ("code version", view["code_version"]),
            ("model version", view["model_version"]),
            ("artifacts", run.artifact_uri),
        ])
        if run.params:
            _runs_table("Params", ["param", "value"], sorted(run.params.items()),
                        numbers_from=9)
        if run.metrics:
            _runs_table("Metrics (latest value)", ["metric", "value", "step"],
                        [(k, _metric(run, k), p.step) for k, p in sorted(run.metrics.items())],
                        numbers_from=1)
        tags = view["tags"]
        if tags:
            _runs_table("Tags", ["tag", "value"], sorted(tags.items()), numbers_from=9)
        if children:
            keys = compare.metric_columns(children, DEFAULT_METRIC_COLUMNS)
            _runs_table(f"Child runs ({len(children)})",
                        ["run", "name", "status", *keys],
                        [(c.run_id, c.name, c.status.value, *(_metric(c, k) for k in keys))
                         for c in children], numbers_from=3)

    @runs_app.command("compare")
    def compare_cmd(
        ctx: typer.Context,
        left: str = typer.Argument(..., help="First run id."),
        right: str = typer.Argument(..., help="Second run id."),
        differences: bool = typer.Option(False, "--differences", "-d",
                                         help="Only the lines that differ."),
        as_json: bool = JSON_OPTION,
    ) -> None:
        """Two runs side by side: data fingerprint, code version, params, metrics, tags."""
        from mlharbor.tracking.compare import diff_runs, resolve_run_id

        with _store(ctx) as store:
            first, second = store.get_runs([resolve_run_id(store, left, field="left"),
                                            resolve_run_id(store, right, field="right")])
        diff = diff_runs(first, second)
        if as_json:
            print_json(diff.to_dict())
            return
        rows = diff.differences if differences else diff.rows
        _runs_table(f"{first.name} vs {second.name} ({len(diff.differences)} difference(s))",
                    ["", "key", first.run_id[:8], second.run_id[:8], "same"],
                    [(r.section, r.key, _cell(r.left), _cell(r.right),
                      "" if r.same else "differs") for r in rows], numbers_from=9)


def _runs_table(title: str, columns: list[str], rows: Iterable[Sequence[Any]], *,
                numbers_from: int = 7) -> None:
    """A Rich table: run ids and names never wrap (people copy them); values fold."""
    from rich.table import Table

    table = Table(title=title)
    for i, column in enumerate(columns):
        table.add_column(column, no_wrap=column in NO_WRAP, overflow="fold",
                         justify="right" if i >= numbers_from else "left")
    for row in rows:
        table.add_row(*("" if cell is None else str(cell) for cell in row))
    _console().print(table)


def _kv(title: str, pairs: Iterable[tuple[str, Any]]) -> None:
    from rich.table import Table

    table = Table(title=title, show_header=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for key, value in pairs:
        table.add_row(key, "" if value is None else str(value))
    _console().print(table)


def _console() -> Any:
    from rich.console import Console

    console = Console()
    if not console.is_terminal:  # piped into a file or a pager: no need to squeeze to 80
        console = Console(width=max(console.width, 160))
    return console


NO_WRAP = frozenset({"run", "name", "status", "parent", "started", "took"})


def _short(text: str, limit: int = 24) -> str:
    """A param value in a table cell: dotted paths by their last part, long text cut."""
    if "." in text and " " not in text and not text.replace(".", "").isdigit():
        text = text.rsplit(".", 1)[-1] or text
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
