"""MLflow's tracking REST API under ``/api/2.0/mlflow/``, on mlharbor's tracking store.

So ``mlflow.set_tracking_uri("http://host:8081")`` and unchanged ``mlflow.log_*`` code record
into mlharbor: experiments (create, get, get-by-name, search, update, delete, restore, tags),
runs (create, get, update, delete, restore, search, log-metric, log-parameter, set-tag,
delete-tag, log-batch, log-inputs, outputs, log-model), metric history and artifact listing.
MLflow 3's logged models are in :mod:`.mlflow_models`, the artifact proxy in
:mod:`.mlflow_artifacts`, model registration in :mod:`.mlflow_registry`. Any other MLflow
route answers MLflow's error shape saying mlharbor does not support it (the catch-all at the
end, mounted last). Errors: :mod:`mlharbor.api.mlflow_protocol`.

Each endpoint reads its request on the event loop and does its store work and JSON rendering
on a worker thread (``@reading`` / ``@writing``, :mod:`.mlflow_threads`), so a write waiting
on a database lock never stalls the control plane's loop.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from mlharbor.api.mlflow_protocol import (
    MlflowRoute,
    dataset_inputs,
    experiment_json,
    key_values,
    metric_json,
    mlflow_error,
    model_inputs,
    model_outputs,
    required,
    run_info_json,
    run_json,
    text_field,
)
from mlharbor.api.responses import JsonResponse
from mlharbor.api.routes.mlflow_threads import lifespan as pool_lifespan
from mlharbor.api.routes.mlflow_threads import reading, writing, writing_unless
from mlharbor.core.errors import InvalidInputError
from mlharbor.core.runs import LifecycleStage, MetricPoint
from mlharbor.tracking import checks, quick, search
from mlharbor.tracking.files import TrackingFiles, key_of_uri
from mlharbor.tracking.store import TrackingStore, now_ms

_INT64 = 2**63  # int64 fields: metric timestamps and steps

PREFIX = "/api/2.0/mlflow"
router = APIRouter(prefix=PREFIX, tags=["mlflow"], route_class=MlflowRoute,
                   lifespan=pool_lifespan)  # the worker pools stop with the app
#: Mounted after every supported MLflow route: answers the rest with "not supported".
fallback = APIRouter(prefix=PREFIX, tags=["mlflow"], route_class=MlflowRoute)
_VIEWS = {"ACTIVE_ONLY": "active", "DELETED_ONLY": "deleted", "ALL": "all"}


def store_of(request: Request) -> TrackingStore:
    store: TrackingStore = request.app.state.services.tracking
    return store


def files_of(request: Request) -> TrackingFiles:
    files: TrackingFiles = request.app.state.services.tracking_files
    return files


def _view(value: Any) -> str:
    if value in (None, ""):
        return "active"
    text = str(value).upper()
    if text in _VIEWS:
        return _VIEWS[text]
    if text in ("1", "2", "3"):
        return text
    raise InvalidInputError(f"view_type must be ACTIVE_ONLY, DELETED_ONLY or ALL; received "
                            f"{str(value)[:40]!r}.", field="view_type")


def _strings(body: dict[str, Any], name: str) -> list[str]:
    value = body.get(name) or []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidInputError(f"'{name}' must be a list of text.", field=name)
    return value


# -- experiments --------------------------------------------------------------------------

@router.post("/experiments/create")
@writing
def create_experiment(request: Request, body: dict[str, Any]) -> Any:
    exp = store_of(request).create_experiment(
        required(body, "name"), artifact_location=text_field(body, "artifact_location") or None,
        tags=key_values(body, "tags"))
    return {"experiment_id": exp.experiment_id}


@router.get("/experiments/get")
@reading
def get_experiment(request: Request, body: dict[str, Any]) -> Any:
    return {"experiment": experiment_json(
        store_of(request).get_experiment(required(body, "experiment_id")))}


@router.get("/experiments/get-by-name")
@reading
def get_experiment_by_name(request: Request, body: dict[str, Any]) -> Any:
    return {"experiment": experiment_json(
        store_of(request).get_experiment_by_name(required(body, "experiment_name")))}


@router.post("/experiments/search")
@reading
def search_experiments(request: Request, body: dict[str, Any]) -> Any:
    where = search.parse_field_filter(text_field(body, "filter"),
                                      {"name": search.TEXT_OPS, "tags": search.TEXT_OPS},
                                      what="Experiments")
    exps, nxt = store_of(request).list_experiments(
        view=_view(body.get("view_type")), where=where,
        max_results=checks.check_max_results(body.get("max_results"), default=1000),
        offset=checks.decode_token(body.get("page_token")))
    out: dict[str, Any] = {"experiments": [experiment_json(e) for e in exps]}
    if nxt is not None:
        out["next_page_token"] = checks.encode_token(nxt)
    return out


@router.post("/experiments/update")
@writing
def update_experiment(request: Request, body: dict[str, Any]) -> Any:
    store_of(request).rename_experiment(required(body, "experiment_id"),
                                        required(body, "new_name"))
    return {}


@router.post("/experiments/delete")
@writing
def delete_experiment(request: Request, body: dict[str, Any]) -> Any:
    store_of(request).set_experiment_lifecycle(required(body, "experiment_id"),
                                               LifecycleStage.DELETED)
    return {}


@router.post("/experiments/restore")
@writing
def restore_experiment(request: Request, body: dict[str, Any]) -> Any:
    store_of(request).set_experiment_lifecycle(required(body, "experiment_id"),
                                               LifecycleStage.ACTIVE)
    return {}


@router.post("/experiments/set-experiment-tag")
@writing
def set_experiment_tag(request: Request, body: dict[str, Any]) -> Any:
    store_of(request).set_experiment_tag(required(body, "experiment_id"),
                                         required(body, "key"),
                                         text_field(body, "value", default="") or "")
    return {}


@router.post("/experiments/delete-experiment-tag")
@writing
def delete_experiment_tag(request: Request, body: dict[str, Any]) -> Any:
    store_of(request).set_experiment_tag(required(body, "experiment_id"),
                                         required(body, "key"), None)
    return {}


# -- runs ---------------------------------------------------------------------------------

@router.post("/runs/create")
@writing
def create_run(request: Request, body: dict[str, Any]) -> Any:
    run = store_of(request).create_run(
        body.get("experiment_id") or "0", run_name=text_field(body, "run_name") or None,
        user_id=text_field(body, "user_id") or "", start_time=body.get("start_time"),
        tags=key_values(body, "tags"))
    return {"run": run_json(run)}


@router.get("/runs/get")
@reading
def get_run(request: Request, body: dict[str, Any]) -> Any:
    return {"run": run_json(*store_of(request).get_run_io(required(body, "run_id", "run_uuid")))}


@router.post("/runs/update")
@writing
def update_run(request: Request, body: dict[str, Any]) -> Any:
    run = store_of(request).update_run(
        required(body, "run_id", "run_uuid"), status=text_field(body, "status"),
        end_time=body.get("end_time"), run_name=text_field(body, "run_name"))
    return {"run_info": run_info_json(run)}


@router.post("/runs/delete")
@writing
def delete_run(request: Request, body: dict[str, Any]) -> Any:
    store_of(request).set_run_lifecycle(required(body, "run_id"), LifecycleStage.DELETED)
    return {}


@router.post("/runs/restore")
@writing
def restore_run(request: Request, body: dict[str, Any]) -> Any:
    store_of(request).set_run_lifecycle(required(body, "run_id"), LifecycleStage.ACTIVE)
    return {}


def _point(item: Any, where: str) -> MetricPoint:
    if type(item) is dict:
        # What the MLflow client sends (a float value, int64s as JSON numbers), taken as it
        # is: a batch of 100 went through six checks per point. Anything else is checked
        # and converted below. The key is checked by the store.
        key, value = item.get("key"), item.get("value")
        timestamp, step = item.get("timestamp"), item.get("step")
        if type(key) is str and type(value) is float and type(timestamp) is int \
                and type(step) is int and 0 <= timestamp < _INT64 and -_INT64 <= step < _INT64:
            return MetricPoint(key, value, timestamp, step)
    if not isinstance(item, dict):
        raise InvalidInputError(f"{where} must be an object with key, value, timestamp, "
                                "step.", field=where)
    key = item.get("key")
    if not isinstance(key, str):
        raise InvalidInputError(f"Missing value for required parameter '{where}.key'.",
                                field=f"{where}.key")
    if "value" not in item:
        raise InvalidInputError(f"Missing value for required parameter '{where}.value'.",
                                field=f"{where}.value")
    return MetricPoint(key, checks.check_number(item["value"], field=f"{where}.value"),
                       checks.check_int(item.get("timestamp"), field=f"{where}.timestamp",
                                        minimum=0, default=now_ms()),
                       checks.check_int(item.get("step"), field=f"{where}.step", default=0))


def _log_metric_now(request: Request, body: dict[str, Any]) -> Any:
    """The point written on the event loop if that needs no wait (:mod:`.quick`), else None."""
    run_id = required(body, "run_id", "run_uuid")
    done = store_of(request).log_metrics_nowait(run_id, [_point(body, "metric")])
    return {} if done else None


@router.post("/runs/log-metric")
@writing_unless(_log_metric_now)
def log_metric(request: Request, body: dict[str, Any]) -> Any:
    run_id = required(body, "run_id", "run_uuid")
    store_of(request).log_batch(run_id, metrics=[_point(body, "metric")])
    return {}


@router.post("/runs/log-parameter")
@writing
def log_parameter(request: Request, body: dict[str, Any]) -> Any:
    store_of(request).log_batch(required(body, "run_id", "run_uuid"),
                                params={required(body, "key"): _text_value(body)})
    return {}


@router.post("/runs/set-tag")
@writing
def set_tag(request: Request, body: dict[str, Any]) -> Any:
    store_of(request).log_batch(required(body, "run_id", "run_uuid"),
                                tags={required(body, "key"): _text_value(body)})
    return {}


def _text_value(body: dict[str, Any]) -> str:
    """The ``value`` of a param or tag: MLflow sends text, and refuses anything else."""
    value = body.get("value")
    if not isinstance(value, str):
        raise InvalidInputError("Missing value for required parameter 'value' (text).",
                                field="value")
    return value


@router.post("/runs/delete-tag")
@writing
def delete_tag(request: Request, body: dict[str, Any]) -> Any:
    store_of(request).delete_tag(required(body, "run_id"), required(body, "key"))
    return {}


def _log_batch_now(request: Request, body: dict[str, Any]) -> Any:
    """A batch of a few metrics and nothing else (``mlflow.log_metrics`` of a few keys a
    step) written on the event loop if that needs no wait (:mod:`.quick`), else None."""
    metrics = body.get("metrics")
    if body.get("params") or body.get("tags") or not isinstance(metrics, list) \
            or not 0 < len(metrics) <= quick.MAX_POINTS:
        return None
    points = _points(metrics)  # checked in log_batch's order: the same error first
    done = store_of(request).log_metrics_nowait(required(body, "run_id"), points)
    return {} if done else None


def _points(metrics: Any) -> list[MetricPoint]:
    if not isinstance(metrics, list):
        raise InvalidInputError("'metrics' must be a list.", field="metrics")
    return [_point(m, f"metrics[{i}]") for i, m in enumerate(metrics)]


@router.post("/runs/log-batch")
@writing_unless(_log_batch_now)
def log_batch(request: Request, body: dict[str, Any]) -> Any:
    points = _points(body.get("metrics") or [])
    store_of(request).log_batch(required(body, "run_id"), metrics=points,
                                params=key_values(body, "params"),
                                tags=key_values(body, "tags"))
    return {}


@router.post("/runs/log-inputs")
@writing
def log_inputs(request: Request, body: dict[str, Any]) -> Any:
    store_of(request).record_io(required(body, "run_id"), datasets=dataset_inputs(body),
                                model_inputs=model_inputs(body))
    return {}


@router.post("/runs/outputs")
@writing
def log_outputs(request: Request, body: dict[str, Any]) -> Any:
    store_of(request).record_io(required(body, "run_id"), model_outputs=model_outputs(body))
    return {}


@router.post("/runs/log-model")
@writing
def log_model(request: Request, body: dict[str, Any]) -> Any:
    store_of(request).record_io(required(body, "run_id"),
                                mlmodels=[text_field(body, "model_json") or "{}"])
    return {}


@router.post("/runs/search")
@reading
def search_runs(request: Request, body: dict[str, Any]) -> Any:
    order_by = body.get("order_by")
    if order_by is not None and not isinstance(order_by, list):
        raise InvalidInputError("'order_by' must be a list of text.", field="order_by")
    page = store_of(request).search_runs(
        _strings(body, "experiment_ids"), filter=text_field(body, "filter"),
        view=_view(body.get("run_view_type")),
        max_results=checks.check_max_results(body.get("max_results"), default=1000),
        order_by=order_by, page_token=text_field(body, "page_token"))
    out: dict[str, Any] = {"runs": [run_json(r) for r in page.runs]}
    if page.next_page_token:
        out["next_page_token"] = page.next_page_token
    return out


@router.get("/metrics/get-history")
@reading
def get_metric_history(request: Request, body: dict[str, Any]) -> Any:
    points, nxt = store_of(request).metric_history(
        required(body, "run_id", "run_uuid"), required(body, "metric_key"),
        max_results=body.get("max_results"),
        offset=checks.decode_token(body.get("page_token")))
    out: dict[str, Any] = {"metrics": [metric_json(p) for p in points]}
    if nxt is not None:
        out["next_page_token"] = checks.encode_token(nxt)
    return out


@router.get("/artifacts/list")
@reading
def list_artifacts(request: Request, body: dict[str, Any]) -> Any:
    run = store_of(request).get_run(required(body, "run_id", "run_uuid"))
    root = key_of_uri(run.artifact_uri)
    if root is None:
        return {"root_uri": run.artifact_uri, "files": []}
    sub = text_field(body, "path") or ""
    prefix = f"{root}/{sub.strip('/')}" if sub.strip("/") else root
    entries = files_of(request).listing(prefix)
    return {"root_uri": run.artifact_uri, "files": [
        {"path": e.path[len(root) + 1:], "is_dir": e.is_dir,
         **({"file_size": e.size} if e.size is not None else {})} for e in entries]}


# -- everything else ----------------------------------------------------------------------

_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]


async def unsupported(request: Request, path: str) -> JsonResponse:
    """MLflow REST APIs mlharbor does not implement answer ``ENDPOINT_NOT_FOUND`` (404) with
    a message saying what is supported, never an HTML 404 page. Documented (one operation
    per method) so the fuzz tests reach it too."""
    return mlflow_error(
        "ENDPOINT_NOT_FOUND",
        f"mlharbor does not support the MLflow API {request.method} {PREFIX}/{path[:200]}; it "
        "supports experiments, runs, metrics, params, tags, metric history, search, "
        "artifacts, logged models and model registration.", 404)


for _method in _METHODS:
    fallback.add_api_route("/{path:path}", unsupported, methods=[_method],
                           operation_id=f"mlflow_unsupported_{_method.lower()}",
                           summary="Any other MLflow API: answered in MLflow's error shape")
