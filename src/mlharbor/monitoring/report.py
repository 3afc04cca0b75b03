"""A drift report as one self-contained HTML file (inline CSS and SVG, no scripts, no CDN)."""

from __future__ import annotations

import html
from typing import Any

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:1100px;color:#1f2933}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem}
table{border-collapse:collapse;width:100%}
th,td{padding:.35rem .6rem;border-bottom:1px solid #e4e7eb;text-align:left;vertical-align:top}
th{background:#f5f7fa}.num{text-align:right;font-variant-numeric:tabular-nums}
.drift{color:#b42318;font-weight:600}.ok{color:#067647}
.verdict{padding:.8rem 1rem;border-radius:6px;background:#f5f7fa;margin:1rem 0}
.verdict.bad{background:#fef3f2}small{color:#616e7c}
"""


def render_html(report: dict[str, Any]) -> str:
    esc = html.escape
    dataset = report["dataset"]
    window = report["window"]
    verdict = "Drift detected" if dataset["drifted"] else "No dataset drift"
    title = f"Drift report — {report.get('endpoint', '')}"
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        f"<p><small>model {esc(str(report.get('model')))} version "
        f"{esc(str(report.get('version')))} · window {esc(str(window['start']))} → "
        f"{esc(str(window['end']))} · {window['rows']:,} rows</small></p>",
        f"<div class='verdict{' bad' if dataset['drifted'] else ''}'><b>{verdict}</b>: "
        f"{len(dataset['drifted_features'])} of {dataset['features']} features drifted, "
        f"importance-weighted share {dataset['drifted_share']:.0%} (threshold "
        f"{dataset['threshold_share']:.0%}). Thresholds are calibrated to the window size so "
        f"identical data alarms a feature in at most "
        f"{report['false_alarm_rate_per_feature']:.1%} of windows.</div>",
    ]
    if report.get("prediction"):
        parts.append("<h2>Predictions</h2>" + _table([report["prediction"]]))
    parts.append("<h2>Features (most drifted first)</h2>" + _table(report["features"]))
    series = report.get("series") or []
    if len(series) > 1:
        parts.append("<h2>Over time</h2>" + _series(series))
    parts.append("</body></html>")
    return "".join(parts)


def _table(features: list[dict[str, Any]]) -> str:
    esc = html.escape
    rows = ["<table><tr><th>feature</th><th>kind</th><th class=num>importance</th>"
            "<th class=num>score</th><th>tests (statistic / threshold)</th>"
            "<th class=num>missing</th><th>unseen</th></tr>"]
    for f in features:
        state = "drift" if f["drifted"] else "ok"
        tests = "<br>".join(
            f"<span class={'drift' if t['drifted'] else 'ok'}>{esc(t['test'])}</span> "
            f"{t['statistic']:.4g} / {t['threshold']:.4g}" for t in f["tests"])
        unseen = ", ".join(f"{esc(k)} ({v})" for k, v in f["unseen_values"].items())
        score = f["score"]
        rows.append(
            f"<tr><td class={state}>{esc(f['name'])}</td><td>{esc(f['kind'])}</td>"
            f"<td class=num>{f['importance']:.3g}</td>"
            f"<td class='num {state}'>{'∞' if score is None else f'{score:.2f}'}</td>"
            f"<td>{tests}</td><td class=num>{f['missing_share']:.1%} "
            f"<small>(ref {f['reference_missing_share']:.1%})</small></td>"
            f"<td>{f['unseen_share']:.1%} {unseen}</td></tr>")
    rows.append("</table>")
    return "".join(rows)


def _series(series: list[dict[str, Any]]) -> str:
    """Bars of the drifted share per window, as inline SVG."""
    width, height, pad = 1000, 160, 24
    bar = (width - 2 * pad) / len(series)
    items = []
    for i, point in enumerate(series):
        share = float(point["drifted_share"])
        h = max(share * (height - 2 * pad), 1.0)
        x = pad + i * bar
        color = "#d92d20" if point["drifted"] else "#32d583"
        label = html.escape(f"{point['start']}: {share:.0%} drifted, {point['rows']} rows")
        items.append(f"<rect x='{x:.1f}' y='{height - pad - h:.1f}' width='{bar * 0.8:.1f}' "
                     f"height='{h:.1f}' fill='{color}'><title>{label}</title></rect>")
    axis = (f"<line x1='{pad}' y1='{height - pad}' x2='{width - pad}' y2='{height - pad}' "
            "stroke='#9aa5b1'/>")
    return (f"<svg viewBox='0 0 {width} {height}' width='100%' role='img' "
            f"aria-label='drifted share per window'>{axis}{''.join(items)}</svg>")
