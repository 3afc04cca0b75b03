"""MLflow 3's logged models under ``/api/2.0/mlflow/logged-models``.

``mlflow.<flavor>.log_model`` (and autologging) creates a logged model, uploads its files to
the model's artifact location through the artifact proxy, and marks it ready;
``mlflow.register_model("runs:/<run>/model", name)`` finds it by name and run. Search filters
by ``name`` and ``source_run_id`` with ``=`` (what MLflow's own calls send); other filters are
refused saying so.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from mlharbor.api.mlflow_protocol import (
    MlflowRoute,
    body_of,
    key_values,
    logged_model_json,
    required,
    text_field,
)
from mlharbor.api.routes.mlflow_threads import off_loop, reading, writing
from mlharbor.api.routes.mlflow_tracking import PREFIX, files_of
from mlharbor.core.errors import InvalidInputError
from mlharbor.tracking import checks, search

router = APIRouter(prefix=f"{PREFIX}/logged-models", tags=["mlflow"], route_class=MlflowRoute)


@router.post("")
@writing
def create_logged_model(request: Request, body: dict[str, Any]) -> Any:
    model = files_of(request).create_logged_model(
        required(body, "experiment_id"), name=text_field(body, "name"),
        source_run_id=text_field(body, "source_run_id") or None,
        model_type=text_field(body, "model_type"), tags=key_values(body, "tags"),
        params=key_values(body, "params"))
    return {"model": logged_model_json(model)}


@router.post("/search")
@reading
def search_logged_models(request: Request, body: dict[str, Any]) -> Any:
    wanted = _filter(text_field(body, "filter"))
    ids = body.get("experiment_ids") or []
    if not isinstance(ids, list):
        raise InvalidInputError("'experiment_ids' must be a list.", field="experiment_ids")
    models, nxt = files_of(request).search_logged_models(
        [str(i) for i in ids], source_run_id=wanted.get("source_run_id"),
        max_results=checks.check_max_results(body.get("max_results"), default=100,
                                             limit=1000),
        offset=checks.decode_token(body.get("page_token")))
    if "name" in wanted:
        models = [m for m in models if m.name == wanted["name"]]
    out: dict[str, Any] = {"models": [logged_model_json(m) for m in models]}
    if nxt is not None:
        out["next_page_token"] = checks.encode_token(nxt)
    return out


def _filter(text: str | None) -> dict[str, str]:
    clauses = search.parse_field_filter(text, {"name": ("=",), "source_run_id": ("=",)},
                                        what="Logged models")
    return {c.field: c.value for c in clauses}


@router.get("/{model_id}")
async def get_logged_model(request: Request, model_id: str) -> Any:
    model = await off_loop(request, lambda: files_of(request).get_logged_model(model_id),
                           kind="read")
    return {"model": logged_model_json(model)}


@router.patch("/{model_id}")
async def finalize_logged_model(request: Request, model_id: str) -> Any:
    body = await body_of(request)
    status = body.get("status")
    if isinstance(status, int) and not isinstance(status, bool):  # the proto enum's number
        status = {1: "LOGGED_MODEL_PENDING", 2: "LOGGED_MODEL_READY",
                  3: "LOGGED_MODEL_UPLOAD_FAILED"}.get(status, str(status))
    wanted = required({"status": status}, "status")
    model = await off_loop(request, lambda: files_of(request).update_logged_model(
        model_id, status=wanted))
    return {"model": logged_model_json(model)}


@router.patch("/{model_id}/tags")
async def set_logged_model_tags(request: Request, model_id: str) -> Any:
    tags = key_values(await body_of(request), "tags")
    await off_loop(request, lambda: files_of(request).update_logged_model(model_id, tags=tags))
    return {}


@router.delete("/{model_id}/tags/{tag_key}")
async def delete_logged_model_tag(request: Request, model_id: str, tag_key: str) -> Any:
    await off_loop(request, lambda: files_of(request).update_logged_model(
        model_id, remove_tag=tag_key))
    return {}


@router.post("/{model_id}/params")
async def log_logged_model_params(request: Request, model_id: str) -> Any:
    params = key_values(await body_of(request), "params")
    await off_loop(request, lambda: files_of(request).update_logged_model(
        model_id, params=params))
    return {}
