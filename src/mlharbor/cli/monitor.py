"""``mlharbor monitor``: drift reports, live performance, alert rules for Prometheus, and the
reference profiles drift is measured against."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from mlharbor.cli.output import check_output, print_json, print_table, write_output


def register(app: typer.Typer) -> None:
    monitor_app = typer.Typer(help="Drift, live performance and alerts of served models.",
                              no_args_is_help=True)
    app.add_typer(monitor_app, name="monitor")
    reference_app = typer.Typer(help="The training-data profile a version's drift is "
                                "measured against.", no_args_is_help=True)
    monitor_app.add_typer(reference_app, name="reference")

    @reference_app.command("set")
    def reference_set(
        ctx: typer.Context,
        ref: str = typer.Argument(..., help="Version: churn:3, churn@champion ..."),
        data: str = typer.Option(..., "--data", help="CSV/Parquet file (or s3://) of the "
                                 "rows the model was trained on."),
        target: str = typer.Option(None, "--target", help="The label column of the file, "
                                   "left out of the profile."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
    ) -> None:
        """Attach (or replace) the reference profile of a version registered without one:
        the same profile `mlharbor train` stores. Audited; the model files do not change."""
        from mlharbor.bootstrap import open_registry
        from mlharbor.cli.main import settings_from
        from mlharbor.data.loading import load_table
        from mlharbor.registry.bundles import set_reference

        settings = settings_from(ctx)
        frame = load_table(data, s3_endpoint_url=settings.s3_endpoint_url,
                           s3_region=settings.s3_region).frame
        registry = open_registry(settings)
        try:
            version = set_reference(registry, ref, frame, target=target)
        finally:
            registry.close()
        profile = version.lineage["reference_profile"]
        if as_json:
            print_json({"version": version.ref, "rows": profile["rows"],
                        "features": {n: f["kind"] for n, f in profile["features"].items()}})
            return
        typer.echo(f"{version.ref}: reference profile of {profile['rows']} rows over "
                   f"{len(profile['features'])} column(s); drift is now measured against it.")

    @monitor_app.command("drift")
    def drift(
        ctx: typer.Context,
        endpoint: str = typer.Argument(..., help="Endpoint whose predictions to check."),
        window: str = typer.Option("24h", "--window", help="How far back: 90m, 24h, 7d."),
        step: str = typer.Option(None, "--step", help="Also one report per step (e.g. 1h)."),
        version: int = typer.Option(None, "--version", help="Version (default: most served)."),
        rows: int = typer.Option(None, "--rows", help="Windows of this many predictions "
                                                      "instead of --step."),
        html_out: Path = typer.Option(None, "--html", help="Write a self-contained HTML report."),
        json_out: Path = typer.Option(None, "--json", help="Write the report as JSON."),
        fail_on_drift: bool = typer.Option(False, "--fail-on-drift",
                                           help="Exit with status 1 when the dataset drifted."),
    ) -> None:
        """Compare recent predictions' inputs with the version's training profile."""
        import orjson

        from mlharbor.core.clock import utcnow
        from mlharbor.monitoring.report import render_html
        from mlharbor.monitoring.windows import parse_duration

        check_output(html_out, what="the HTML report")
        check_output(json_out, what="the JSON report")
        monitor = _monitor(ctx)
        end = utcnow()
        report = monitor.drift(endpoint, start=end - parse_duration(window), end=end,
                               step=parse_duration(step) if step else None, version=version,
                               rows=rows)
        if json_out is not None:
            write_output(json_out, orjson.dumps(report, option=orjson.OPT_INDENT_2),
                         what="the JSON report")
        if html_out is not None:
            write_output(html_out, render_html(report), what="the HTML report")
        dataset = report["dataset"]
        print_table(
            f"{endpoint}: {'DRIFT' if dataset['drifted'] else 'no drift'} "
            f"({report['window']['rows']} rows, drifted share {dataset['drifted_share']:.0%})",
            ["feature", "drifted", "score", "tests"],
            [(f["name"], "yes" if f["drifted"] else "", _score(f["score"]),
              ", ".join(f["drifted_tests"])) for f in report["features"]])
        if fail_on_drift and dataset["drifted"]:
            sys.exit(1)

    @monitor_app.command("attributions")
    def attributions(
        ctx: typer.Context,
        endpoint: str = typer.Argument(..., help="Endpoint whose predictions to explain."),
        window: str = typer.Option("24h", "--window", help="How far back: 90m, 24h, 7d."),
        version: int = typer.Option(None, "--version", help="Version (default: most served)."),
        rows: int = typer.Option(200, "--rows", help="Rows explained per side (1-2000)."),
        threshold: float = typer.Option(0.1, "--threshold",
                                        help="Share of the model's total attribution a "
                                             "feature may move by."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
        fail_on_drift: bool = typer.Option(False, "--fail-on-drift",
                                           help="Exit with status 1 when a feature drifted."),
    ) -> None:
        """Attribution drift: how much each feature's mean |attribution| moved between the
        reference and the window (needs the explain extra: pip install 'mlharbor[explain]')."""
        from mlharbor.core.clock import utcnow
        from mlharbor.monitoring.attribution_drift import endpoint_attribution_drift
        from mlharbor.monitoring.windows import parse_duration

        end = utcnow()
        report = endpoint_attribution_drift(_monitor(ctx), endpoint,
                                            start=end - parse_duration(window), end=end,
                                            version=version, rows=rows, threshold=threshold)
        if as_json:
            print_json(report)
        else:
            print_table(
                f"{endpoint} v{report['version']}: "
                f"{'ATTRIBUTION DRIFT' if report['drifted'] else 'no attribution drift'} "
                f"({report['current_rows']} rows, {report['method']}, {report['output']})",
                ["feature", "drifted", "reference", "current", "score"],
                [(f["name"], "yes" if f["drifted"] else "", f"{f['reference']:.4g}",
                  f"{f['current']:.4g}", f"{f['score']:.3f}") for f in report["features"]])
        if fail_on_drift and report["drifted"]:
            sys.exit(1)

    @monitor_app.command("performance")
    def performance(
        ctx: typer.Context,
        endpoint: str = typer.Argument(...),
        window: str = typer.Option("7d", "--window"),
        step: str = typer.Option("1d", "--step"),
        slices: list[str] = typer.Option(
            None, "--slice", help="Cut the labelled rows (repeat for several): a column "
            "(contract), a column at bin edges (tenure_months:12,36), a filter "
            "(\"where:contract == 'month-to-month'\") or `recipe` (the served version's "
            "recipe slices)."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
    ) -> None:
        """Live metrics from feedback labels joined with the prediction log, per window and
        version, and with --slice per slice of each (its metrics and labelled rows)."""
        from mlharbor.core.clock import utcnow
        from mlharbor.monitoring.liveslices import parse_live_slices
        from mlharbor.monitoring.windows import parse_duration

        wanted = parse_live_slices(slices) if slices else None  # bad text: exit 2, first
        end = utcnow()
        rows = _monitor(ctx).performance(endpoint, start=end - parse_duration(window), end=end,
                                         window=parse_duration(step), slices=wanted)
        if as_json:
            print_json(rows)
            return
        table = []
        for r in rows:
            table.append((r["start"], r["version"], "(all)", r["labelled_rows"],
                          _metrics_text(r["metrics"]), ", ".join(r.get("degraded", []))))
            table += [("", "", s["key"], s["labelled_rows"], _metrics_text(s["metrics"]),
                       ", ".join(s.get("degraded", []))) for s in r.get("slices", [])]
        print_table(f"{endpoint}: live performance",
                    ["window", "version", *(["slice"] if wanted else []), "labelled",
                     "metrics", "degraded"],
                    [row if wanted else row[:2] + row[3:] for row in table])
        for note in dict.fromkeys(n for r in rows for n in r.get("slice_notes", [])):
            typer.echo(f"note: {note}", err=True)

    @monitor_app.command("export-rules")
    def export_rules(
        ctx: typer.Context,
        output: Path = typer.Option(..., "--output", help="Prometheus rules file to write."),
        rules: Path = typer.Option(None, "--rules",
                                   help="mlharbor alert rules (default: monitoring."
                                        "alert_rules_file)."),
        step: str = typer.Option("1m", "--step", help="Evaluation step of M-of-N."),
    ) -> None:
        """Write the alert rules as Prometheus alerting rules (check: promtool check rules)."""
        import yaml

        from mlharbor.cli.main import settings_from
        from mlharbor.core.errors import ConfigError
        from mlharbor.monitoring.alerts import load_rules
        from mlharbor.monitoring.promrules import prometheus_rules

        source = rules or settings_from(ctx).monitoring.alert_rules_file
        if source is None:
            raise ConfigError("No alert rules to export.",
                              hint="Pass --rules FILE or set monitoring.alert_rules_file.")
        loaded = load_rules(Path(source))
        write_output(output, yaml.safe_dump(prometheus_rules(loaded, step=step), sort_keys=False),
                     what="the Prometheus rules")
        typer.echo(f"wrote {len(loaded)} rule(s) to {output}")


def _monitor(ctx: typer.Context) -> Any:
    from mlharbor.bootstrap import open_registry
    from mlharbor.cli.main import settings_from
    from mlharbor.monitoring.service import Monitor

    settings = settings_from(ctx)
    return Monitor(settings, open_registry(settings))


def _metrics_text(metrics: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.3f}" for k, v in metrics.items() if v is not None)


def _score(score: float | None) -> str:
    """A drift score as the report shows it: ``None`` is the JSON for an infinite score."""
    return "inf" if score is None else f"{score:.2f}"
