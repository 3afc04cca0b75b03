"""Render an evaluation report as ONE self-contained HTML page (inline SVG charts, no scripts).

Charts are drawn with matplotlib's Agg backend: ROC and precision-recall curves, the confusion
matrix, the spread of the primary metric across folds for every model compared, the global
importance of the input columns and the partial dependence of the top ones. Slices get a table
(n, the primary metric with its 95% interval, a few other metrics) with flagged rows marked.
"""

from __future__ import annotations

import html
import io
from typing import Any

_STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:1100px;color:#1d2733}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #dde}
table{border-collapse:collapse;margin:.5rem 0}td,th{padding:.25rem .6rem;border:1px solid #dde;
text-align:right}th{background:#f3f5f8}td:first-child,th:first-child{text-align:left}
table.text td,table.text th{text-align:left}
.pass{color:#0a7d32;font-weight:600}.fail{color:#b3261e;font-weight:600}
.charts{display:flex;flex-wrap:wrap;gap:1rem}.charts figure{margin:0}.muted{color:#667}
tr.flagged td{background:#fdeceb}
"""
#: The page style, shared with pages that embed report sections (model cards).
REPORT_STYLE = _STYLE


def render_html(report: dict[str, Any]) -> str:
    """The page for a report built by :mod:`mlharbor.pipelines.train_job`."""
    esc = html.escape
    primary = report.get("primary_metric", "")
    verdict = report.get("passed")
    title = f"Evaluation — {report.get('model_name') or 'model'}"
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{esc(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        f"<p>Task <b>{esc(str(report.get('task')))}</b>, primary metric <b>{esc(primary)}</b>, "
        f"winner <b>{esc(str(report.get('winner')))}</b>. Gates: "
        + (f"<span class='{'pass' if verdict else 'fail'}'>"
           f"{'passed' if verdict else 'failed'}</span>" if verdict is not None else "none")
        + "</p>",
    ]
    parts += _gates(report.get("gates", []))
    parts += _holdout_table(report)
    parts.append("<div class='charts'>")
    holdout = report.get("holdout", {})
    if holdout.get("curves"):
        parts.append(_figure(_curve_chart, holdout["curves"], "ROC and precision-recall"))
    if holdout.get("confusion_matrix"):
        parts.append(_figure(_confusion_chart, (holdout["confusion_matrix"],
                                                report.get("classes", [])), "Confusion matrix"))
    spread = _fold_series(report, primary)
    if spread:
        parts.append(_figure(_fold_chart, (spread, primary), f"{primary} across folds"))
    parts.append("</div>")
    parts += slices_section(report)
    parts += importance_section(report)
    parts += _candidates_table(report, primary)
    parts += _checks(report.get("data_checks", {}))
    parts.append("</body></html>")
    return "".join(parts)


#: Metrics shown beside the primary one in the slices table (all are in the JSON report).
SLICE_COLUMNS = {"classification": ("accuracy", "precision", "recall", "f1", "roc_auc"),
                 "regression": ("mae", "rmse", "r2")}


def slices_section(report: dict[str, Any]) -> list[str]:
    """The slices table: every slice's n, primary metric with 95% CI and a few others;
    flagged slices first in a list, and marked in the table."""
    block = report.get("slices")
    if not block:
        return []
    esc = html.escape
    primary = block.get("primary_metric", "")
    others = [m for m in SLICE_COLUMNS.get(str(report.get("task")), ()) if m != primary]
    flagged = block.get("flagged") or []
    parts = ["<h2>Slices</h2>",
             f"<p>Overall holdout {esc(primary)} = {_fmt(block.get('overall'))}. A slice is "
             f"{esc(block.get('rule', ''))}.</p>"]
    if flagged:
        items = "".join(f"<li class='fail'>{esc(k)}</li>" for k in flagged)
        parts.append(f"<p><b>Flagged slices ({len(flagged)}):</b></p><ul>{items}</ul>")
    else:
        parts.append("<p class='pass'>No slice is flagged.</p>")
    head = (f"<tr><th>slice</th><th>n</th><th>{esc(primary)}</th><th>95% CI</th>"
            + "".join(f"<th>{esc(m)}</th>" for m in others) + "<th>verdict</th></tr>")
    rows = []
    for item in block.get("slices", []):
        metrics, ci = item.get("metrics", {}), item.get("ci95", {}).get(primary)
        ci_text = f"{ci[0]:.4f} to {ci[1]:.4f}" if ci else "—"
        verdict = ("<span class='fail'>flagged</span>" if item.get("flagged") else
                   "ok" if item.get("judged") else "<span class='muted'>too few rows</span>")
        rows.append(
            f"<tr class='{'flagged' if item.get('flagged') else ''}'>"
            f"<td>{esc(item['key'])}</td><td>{item.get('rows', 0)}</td>"
            f"<td>{_fmt(metrics.get(primary))}</td><td>{ci_text}</td>"
            + "".join(f"<td>{_fmt(metrics.get(m))}</td>" for m in others)
            + f"<td>{verdict}</td></tr>")
    notes = "".join(f"<p class='muted'>{esc(n)}</p>" for n in block.get("notes", []))
    return [*parts, "<table>", head, *rows, "</table>", notes]


def importance_section(report: dict[str, Any]) -> list[str]:
    """Global importance (permutation and mean |attribution|) and partial-dependence plots."""
    block = report.get("importance")
    if not block:
        return []
    parts = ["<h2>Importance</h2>",
             "<p>Permutation importance: the drop in "
             f"{html.escape(str(report.get('primary_metric', '')))} on the holdout when one "
             "column is shuffled. Mean |attribution|: "
             + html.escape(block.get("attribution_note") or "not computed") + ".</p>",
             "<div class='charts'>"]
    if block.get("permutation"):
        parts.append(_figure(_importance_chart, block, "Global importance by input column"))
    for curve in block.get("partial_dependence", []):
        parts.append(_figure(_pdp_chart, (curve, block.get("output", "output")),
                             f"Partial dependence on {curve['feature']}", size=(3.6, 2.8)))
    parts.append("</div>")
    return parts


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "—" if value is None else html.escape(str(value))


def _gates(gates: list[dict[str, Any]]) -> list[str]:
    if not gates:
        return []
    rows = "".join(
        f"<tr><td>{html.escape(g['gate'])}</td><td class='{'pass' if g['passed'] else 'fail'}'>"
        f"{'pass' if g['passed'] else 'FAIL'}</td><td>{html.escape(g['detail'])}</td></tr>"
        for g in gates
    )
    head = "<tr><th>gate</th><th>verdict</th><th>detail</th></tr>"
    return ["<h2>Gates</h2><table class='text'>", head, rows, "</table>"]


def _holdout_table(report: dict[str, Any]) -> list[str]:
    holdout = report.get("holdout", {})
    metrics = holdout.get("metrics", {})
    ci = holdout.get("ci95", {})
    baseline = report.get("baseline", {}).get("holdout", {}).get("metrics", {})
    champion = (report.get("champion") or {}).get("holdout", {}).get("metrics", {})
    cv = report.get("cv", {})
    head = "<tr><th>metric</th><th>holdout</th><th>95% CI</th><th>CV mean ± std</th>"
    head += "<th>baseline</th>" + ("<th>champion</th>" if champion else "") + "</tr>"
    rows = []
    for name, value in metrics.items():
        interval = ci.get(name)
        ci_text = f"{interval[0]:.4f} to {interval[1]:.4f}" if interval else "—"
        mean, std = cv.get("mean", {}).get(name), cv.get("std", {}).get(name)
        cv_text = f"{mean:.4f} ± {std:.4f}" if mean is not None and std is not None else "—"
        row = (f"<tr><td>{html.escape(name)}</td><td>{_fmt(value)}</td><td>{ci_text}</td>"
               f"<td>{cv_text}</td><td>{_fmt(baseline.get(name))}</td>")
        if champion:
            row += f"<td>{_fmt(champion.get(name))}</td>"
        rows.append(row + "</tr>")
    note = ""
    if report.get("champion") is None and report.get("champion_note"):
        note = f"<p class='muted'>{html.escape(report['champion_note'])}</p>"
    return ["<h2>Holdout</h2><table>", head, *rows, "</table>", note]


def _candidates_table(report: dict[str, Any], primary: str) -> list[str]:
    rows = []
    for cand in report.get("candidates", []):
        cv = cand.get("cv", {})
        mean, std = cv.get("mean", {}).get(primary), cv.get("std", {}).get(primary)
        rows.append(
            f"<tr><td>{html.escape(cand['name'])}</td><td>{html.escape(cand['estimator'])}</td>"
            f"<td>{_fmt(mean)} ± {_fmt(std)}</td><td>{cand.get('settings_tried', 1)}</td>"
            f"<td>{html.escape(str(cand.get('best_params', {})))}</td></tr>"
        )
    return ["<h2>Candidates</h2><table class='text'><tr><th>name</th><th>estimator</th>",
            f"<th>CV {html.escape(primary)}</th><th>settings tried</th><th>best params</th></tr>",
            *rows, "</table>"]


def _checks(checks: dict[str, Any]) -> list[str]:
    items = checks.get("violations", []) + checks.get("warnings", [])
    if not items:
        return ["<h2>Data checks</h2><p>No findings.</p>"]
    rows = "".join(f"<li>{html.escape(f['severity'])}: {html.escape(f['message'])}</li>"
                   for f in items)
    return [f"<h2>Data checks</h2><ul>{rows}</ul>"]


def _fold_series(report: dict[str, Any], metric: str) -> dict[str, list[float]]:
    series: dict[str, list[float]] = {}
    for cand in report.get("candidates", []):
        series[cand["name"]] = [f.get(metric) for f in cand.get("cv", {}).get("folds", [])]
    for key in ("baseline", "champion"):
        block = report.get(key) or {}
        if block.get("cv"):
            series[key] = [f.get(metric) for f in block["cv"].get("folds", [])]
    return {k: [v for v in vals if v is not None] for k, vals in series.items() if vals}


def _figure(draw: Any, data: Any, caption: str, size: tuple[float, float] = (5.2, 3.6)) -> str:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=96)
    draw(fig, data)
    fig.tight_layout()
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg")
    svg = buffer.getvalue()
    svg = svg[svg.find("<svg"):]
    return f"<figure>{svg}<figcaption>{html.escape(caption)}</figcaption></figure>"


def _curve_chart(fig: Any, curves: dict[str, Any]) -> None:
    roc_ax, pr_ax = fig.subplots(1, 2)
    roc = curves["roc"]
    roc_ax.plot(roc["fpr"], roc["tpr"], color="#1f5fa8")
    roc_ax.plot([0, 1], [0, 1], color="#999", linestyle="--", linewidth=0.8)
    roc_ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    pr = curves["pr"]
    pr_ax.plot(pr["recall"], pr["precision"], color="#a8401f")
    pr_ax.set(xlabel="recall", ylabel="precision", title="Precision-recall", ylim=(0, 1.02))


def _confusion_chart(fig: Any, data: tuple[list[list[int]], list[Any]]) -> None:
    matrix, classes = data
    ax = fig.subplots()
    ax.imshow(matrix, cmap="Blues")
    labels = [str(c) for c in classes]
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set(xlabel="predicted", ylabel="actual")
    peak = max(max(row) for row in matrix) or 1
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            ax.text(j, i, str(value), ha="center", va="center",
                    color="white" if value > peak / 2 else "black")


def _fold_chart(fig: Any, data: tuple[dict[str, list[float]], str]) -> None:
    series, metric = data
    ax = fig.subplots()
    names = list(series)
    ax.boxplot([series[n] for n in names], tick_labels=names)
    for i, name in enumerate(names, start=1):
        ax.plot([i] * len(series[name]), series[name], "o", color="#1f5fa8", alpha=0.6)
    ax.set(ylabel=metric)
    ax.tick_params(axis="x", labelrotation=20)


def _importance_chart(fig: Any, block: dict[str, Any]) -> None:
    permutation = block["permutation"]
    attribution = block.get("mean_abs_attribution") or {}
    names = sorted(permutation, key=lambda n: permutation[n] or 0.0)[-10:]
    axes = fig.subplots(1, 2 if attribution else 1, sharey=True, squeeze=False)[0]
    axes[0].barh(names, [permutation[n] or 0.0 for n in names], color="#1f5fa8")
    axes[0].set(xlabel="permutation importance")
    if attribution:
        axes[1].barh(names, [attribution.get(n, 0.0) for n in names], color="#a8401f")
        axes[1].set(xlabel="mean |attribution|")


def _pdp_chart(fig: Any, data: tuple[dict[str, Any], str]) -> None:
    curve, output = data
    ax = fig.subplots()
    if curve["kind"] == "categorical":
        ax.bar([str(g) for g in curve["grid"]], curve["average"], color="#1f5fa8")
        ax.tick_params(axis="x", labelrotation=20)
    else:
        ax.plot(curve["grid"], curve["average"], color="#1f5fa8")
    ax.set(xlabel=curve["feature"], ylabel=output)
