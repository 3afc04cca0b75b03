"""Write a :class:`~mlharbor.pipelines.modelcard.ModelCard` as Markdown or as one self-contained
HTML page (inline styles and SVG charts, no script: the evaluation report's slices and
importance sections are the same code as the report's)."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from mlharbor.pipelines.modelcard import CARD_FIELDS, ModelCard

TITLES = {"intended_use": "Intended use", "out_of_scope": "Out-of-scope uses",
          "limitations": "Limitations", "ethical_considerations": "Ethical considerations",
          "owners": "Owners"}
_NOT_STATED = ("not stated: add it to the recipe's `card:` section or pass "
               "`mlharbor models card --set {key}=...`")
FORMATS = ("md", "html", "json")


def _metric_rows(card: ModelCard) -> list[tuple[str, str, str, str, str]]:
    """(metric, holdout, 95% CI, baseline, champion) for the stored evaluation."""
    ev = card.evaluation
    holdout = ev.get("holdout") or {}
    ci = holdout.get("ci95") or {}
    baseline = ((ev.get("baseline") or {}).get("holdout") or {}).get("metrics") or {}
    champion = ((ev.get("champion") or {}).get("holdout") or {}).get("metrics") or {}
    rows = []
    for name, value in (holdout.get("metrics") or {}).items():
        interval = ci.get(name)
        rows.append((name, _num(value), f"{interval[0]:.4f} to {interval[1]:.4f}"
                     if interval else "—", _num(baseline.get(name)), _num(champion.get(name))))
    return rows


def _num(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else "—"


def _data_rows(card: ModelCard) -> list[tuple[str, str]]:
    data, schema = card.dataset, card.schema
    rows = [("source", str(data.get("source") or data.get("uri") or "—")),
            ("fingerprint", str(data.get("fingerprint") or "—")),
            ("rows", str(data.get("rows") or "—")),
            ("target", str(schema.get("target") or "—")),
            ("task", str(schema.get("task") or card.evaluation.get("task") or "—"))]
    features = schema.get("features")
    if isinstance(features, dict):
        rows.append(("features", ", ".join(f"{k} ({v})" for k, v in features.items())))
    splits = card.evaluation.get("splits") or {}
    if splits:
        pool = splits.get("holdout_pool_rows")
        drawn = "" if pool is None else f" (drawn from the {pool} rows the champion never saw)"
        rows.append(("split", f"{splits.get('train_rows')} training rows, "
                              f"{splits.get('holdout_rows')} holdout rows{drawn}, "
                              f"{splits.get('folds')} folds ({splits.get('strategy')})"))
    return rows


def _lineage_rows(card: ModelCard) -> list[tuple[str, str]]:
    ev = card.evaluation
    return [("created", f"{card.created_at:%Y-%m-%d %H:%M:%S} UTC by {card.created_by}"),
            ("status", card.status + (f" ({card.status_reason})" if card.status_reason
                                      else "")),
            ("aliases", ", ".join(f"@{a}" for a in card.aliases) or "none"),
            ("format", card.model_format or "—"),
            ("winner", f"{ev.get('winner') or '—'} {ev.get('winner_params') or ''}".strip()),
            ("retrained from", ", ".join(card.parents) or "— (trained from its recipe)"),
            ("job", card.job or "—"),
            ("code version", card.code_version or "—")]


def render_markdown(card: ModelCard) -> str:
    ev = card.evaluation
    lines = [f"# Model card: {card.ref}", "", card.description or "", ""]
    for key in CARD_FIELDS:
        lines += [f"## {TITLES[key]}", "",
                  card.details.get(key) or f"_{_NOT_STATED.format(key=key)}_", ""]
    lines += ["## Training data", "", *_md_table(("field", "value"), _data_rows(card)), ""]
    lines += ["## Evaluation", ""]
    if not ev:
        lines += ["_No evaluation report is stored with this version._", ""]
    else:
        lines += [f"Primary metric **{ev.get('primary_metric')}**; baseline "
                  f"{(ev.get('baseline') or {}).get('strategy', '—')}; champion "
                  f"{(ev.get('champion') or {}).get('ref') or 'none at training time'}.", "",
                  *_md_table(("metric", "holdout", "95% CI", "baseline", "champion"),
                             _metric_rows(card)), ""]
        gates = ev.get("gates") or []
        if gates:
            lines += ["### Gates", "", *_md_table(("gate", "verdict", "detail"), [
                (g["gate"], "pass" if g["passed"] else "FAIL", g["detail"]) for g in gates]),
                ""]
        lines += _md_slices(ev)
        lines += _md_importance(ev)
    lines += ["## Lineage", "", *_md_table(("field", "value"), _lineage_rows(card)), ""]
    lines += ["## History (audit trail)", ""]
    lines += _md_table(("at", "who", "what", "detail"), [
        (f"{e.at:%Y-%m-%d %H:%M:%S}", e.actor, e.action, e.detail) for e in card.history]) \
        if card.history else ["_Nothing recorded._"]
    return "\n".join(lines).rstrip() + "\n"


def _md_slices(ev: dict[str, Any]) -> list[str]:
    block = ev.get("slices")
    if not block:
        return []
    primary = block.get("primary_metric", "")
    rows = []
    for s in block.get("slices", []):
        ci = (s.get("ci95") or {}).get(primary)
        rows.append((s["key"], str(s.get("rows", 0)), _num((s.get("metrics") or {}).get(primary)),
                     f"{ci[0]:.4f} to {ci[1]:.4f}" if ci else "—",
                     "FLAGGED" if s.get("flagged") else "ok" if s.get("judged")
                     else "too few rows"))
    return ["### Slices", "", f"Overall {primary} {_num(block.get('overall'))}; a slice is "
            f"{block.get('rule', '')}.", "",
            *_md_table(("slice", "n", primary, "95% CI", "verdict"), rows), ""]


def _md_importance(ev: dict[str, Any]) -> list[str]:
    block = ev.get("importance")
    if not block:
        return []
    permutation = block.get("permutation") or {}
    attribution = block.get("mean_abs_attribution") or {}
    names = sorted(permutation, key=lambda n: -(permutation[n] or 0.0))
    return ["### Explanations: global importance", "",
            f"Mean |attribution|: {block.get('attribution_note') or 'not computed'}.", "",
            *_md_table(("feature", "permutation importance", "mean |attribution|"),
                       [(n, _num(permutation[n]), _num(attribution.get(n))) for n in names]),
            "", "Partial dependence is plotted for: "
            + (", ".join(block.get("top_features") or []) or "none") + " (HTML card).", ""]


def _md_table(head: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> list[str]:
    def cell(text: str) -> str:
        return " ".join(str(text).split()).replace("|", "\\|")

    return ["| " + " | ".join(cell(h) for h in head) + " |", "|" + "---|" * len(head),
            *["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]]


def render_card_html(card: ModelCard, *, back_link: str | None = None) -> str:
    from mlharbor.evaluation.html import REPORT_STYLE, importance_section, slices_section

    esc = html.escape
    ev = card.evaluation
    parts = ["<!doctype html><html lang='en'><head><meta charset='utf-8'>",
             f"<title>Model card: {esc(card.ref)}</title><style>{REPORT_STYLE}"
             "section.card-field p{margin:.2rem 0 .8rem}.source{color:#667;font-size:.8rem}"
             "</style></head><body>"]
    if back_link:
        parts.append(f"<p><a href='{esc(back_link)}'>← back to the dashboard</a></p>")
    verdict = card.gates_passed
    parts += [f"<h1 id='card-title'>Model card: {esc(card.ref)}</h1>",
              f"<p>{esc(card.description)}</p>",
              "<p>Gates: " + ("none" if verdict is None else
                              f"<span class='{'pass' if verdict else 'fail'}'>"
                              f"{'passed' if verdict else 'failed'}</span>") + "</p>"]
    for key in CARD_FIELDS:
        value = card.details.get(key)
        source = card.details_source.get(key)
        parts.append(f"<section class='card-field' id='card-{key}'><h2>{TITLES[key]}</h2>"
                     + (f"<p>{esc(value)} <span class='source'>({esc(str(source))})</span></p>"
                        if value else
                        f"<p class='muted'>{esc(_NOT_STATED.format(key=key))}</p>")
                     + "</section>")
    parts += ["<h2>Training data</h2>", _html_table(("field", "value"), _data_rows(card),
                                                    "card-data")]
    parts.append("<h2>Evaluation</h2>")
    if not ev:
        parts.append("<p class='muted'>No evaluation report is stored with this version.</p>")
    else:
        parts.append(_html_table(("metric", "holdout", "95% CI", "baseline", "champion"),
                                 _metric_rows(card), "card-metrics"))
        if ev.get("gates"):
            parts.append(_html_table(("gate", "verdict", "detail"), [
                (g["gate"], "pass" if g["passed"] else "FAIL", g["detail"])
                for g in ev["gates"]], "card-gates"))
        parts += slices_section(ev)
        parts += importance_section(ev)
    parts += ["<h2>Lineage</h2>", _html_table(("field", "value"), _lineage_rows(card),
                                              "card-lineage")]
    parts.append("<h2>History (audit trail)</h2>")
    parts.append(_html_table(("at", "who", "what", "detail"), [
        (f"{e.at:%Y-%m-%d %H:%M:%S}", e.actor, e.action, e.detail) for e in card.history],
        "card-history") if card.history else "<p class='muted'>Nothing recorded.</p>")
    parts.append("</body></html>")
    return "".join(parts)


def _html_table(head: tuple[str, ...], rows: Sequence[tuple[str, ...]], table_id: str) -> str:
    esc = html.escape
    body = "".join("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>"
                   for row in rows)
    return (f"<table class='text' id='{table_id}'><tr>"
            + "".join(f"<th>{esc(h)}</th>" for h in head) + f"</tr>{body}</table>")


def card_json(card: ModelCard) -> dict[str, Any]:
    """The card as JSON (the evaluation report itself is at the version's report route)."""
    return {
        "ref": card.ref, "status": card.status, "description": card.description,
        "details": card.details, "details_source": card.details_source,
        "dataset": card.dataset, "aliases": list(card.aliases),
        "gates_passed": card.gates_passed, "parents": list(card.parents), "job": card.job,
        "code_version": card.code_version,
        "history": [{"at": e.at.isoformat(), "actor": e.actor, "action": e.action,
                     "detail": e.detail} for e in card.history],
        "slices_flagged": (card.evaluation.get("slices") or {}).get("flagged"),
    }
