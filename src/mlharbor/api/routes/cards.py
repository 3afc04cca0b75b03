"""The model card of a version (``mlharbor models card`` over HTTP): JSON, Markdown or the
self-contained HTML page, built from stored records only (see mlharbor.pipelines.modelcard).
Its rule is in the one route table (mlharbor.security.routemap): reading the model."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, PlainTextResponse

from mlharbor.api.context import registry_of
from mlharbor.api.routes.models import REPORT_CSP, VersionParam

router = APIRouter(prefix="/api/v1", tags=["models"])

SetParam = Annotated[list[str] | None, Query(
    alias="set", max_length=20,
    description="KEY=VALUE overrides of intended_use, out_of_scope, limitations, "
    "ethical_considerations, owners (as the CLI's --set); nothing is stored.")]


@router.get("/models/{name}/versions/{version}/card", response_model=None)
def version_card(
    request: Request, name: str, version: VersionParam,
    format: str = Query("json", pattern="^(json|md|html)$",
                        description="json, md (Markdown) or html (the rendered page)."),
    overrides: SetParam = None,
) -> dict[str, Any] | HTMLResponse | PlainTextResponse:
    """The version's model card: intended use and limitations, training data and its
    fingerprint, evaluation with baselines, slices and importance, lineage, and who
    registered, approved and promoted it (from the audit trail)."""
    from mlharbor.pipelines.cardrender import card_json, render_card_html, render_markdown
    from mlharbor.pipelines.modelcard import build_card, parse_overrides, version_ref

    values = parse_overrides(overrides or [])
    card = build_card(registry_of(request), version_ref(name, version), values)
    if format == "html":
        return HTMLResponse(render_card_html(card), headers={
            "Content-Security-Policy": REPORT_CSP, "Cache-Control": "no-store"})
    if format == "md":
        return PlainTextResponse(render_markdown(card), media_type="text/markdown")
    return card_json(card)
