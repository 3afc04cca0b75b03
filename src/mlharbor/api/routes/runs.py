"""Experiment tracking for the dashboard and scripts: native JSON read routes on the tracking
store (MLflow's own REST API is in :mod:`.mlflow_tracking`; its searches are POSTs, which a
dashboard session may not send).

* ``GET /api/v1/experiments``: experiments with their run counts;
* ``GET /api/v1/runs?experiment=NAME&filter=...&order_by=...``: a page of runs, with the
  metric and param columns they have (MLflow's ``search_runs`` grammar; a bad filter is a 400
  naming what the parser expected and where);
* ``GET /api/v1/runs/{run_id}``: one run and its child runs;
* ``GET /api/v1/runs/{run_id}/metric-history?key=loss``: a metric's points over steps;
* ``GET /api/v1/runs/{run_id}/diff/{other_run_id}``: the side-by-side diff of two runs.

Reading needs ``read`` (the one route table, :mod:`mlharbor.security.routemap`). Nothing here
writes.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request

from mlharbor.tracking.store import TrackingStore

router = APIRouter(prefix="/api/v1", tags=["experiments"])

RUN_ID = "A run id: 32 lowercase hex characters (as `mlharbor runs list` shows it)."


def _store(request: Request) -> TrackingStore:
    store: TrackingStore = request.app.state.services.tracking
    return store


@router.get("/experiments")
def list_experiments(
    request: Request,
    view: str = Query("active", max_length=20, description="active, deleted or all."),
) -> dict[str, Any]:
    """Experiments by id, each with its number of runs (one query for all of them)."""
    found, _more = _store(request).list_experiments_with_counts(view=view, max_results=1000)
    return {"items": [{"experiment_id": e.experiment_id, "name": e.name,
                       "lifecycle_stage": e.lifecycle_stage.value, "tags": e.tags,
                       "creation_time": e.creation_time,
                       "last_update_time": e.last_update_time,
                       "runs": count} for e, count in found]}


@router.get("/runs")
def search_runs(
    request: Request,
    experiment: list[str] | None = Query(
        None, max_length=500, description="Experiment name (or id); repeatable; default: "
        "every active experiment."),
    filter: str | None = Query(
        None, max_length=10_000, description="MLflow search_runs filter: metrics.rmse < 0.5 "
        "and params.model = 'rf' and tags.team = 'x' and attributes.status = 'FINISHED'."),
    order_by: list[str] | None = Query(
        None, max_length=500, description="metrics.rmse DESC, params.lr, "
        "attributes.start_time ...; repeatable."),
    max_results: int = Query(100, ge=1, le=1000),
    page_token: str | None = Query(None, max_length=100),
    view: str = Query("active", max_length=20, description="active, deleted or all."),
) -> dict[str, Any]:
    """A page of runs (newest first unless ordered), with the metric and param keys they
    have as table columns."""
    from mlharbor.tracking import compare

    store = _store(request)
    experiments = compare.select_experiments(store, experiment or [])
    page = compare.search(store, experiments, filter=filter, order_by=order_by or [],
                          max_results=max_results, page_token=page_token, view=view)
    names = {e.experiment_id: e.name for e in experiments}
    return {"experiments": [{"experiment_id": e.experiment_id, "name": e.name}
                            for e in experiments],
            "runs": [compare.run_view(r, experiment_name=names.get(r.experiment_id))
                     for r in page.runs],
            "metric_columns": compare.metric_columns(page.runs),
            "param_columns": compare.param_columns(page.runs),
            "next_page_token": page.next_page_token}


@router.get("/runs/{run_id}")
def get_run(request: Request, run_id: str) -> dict[str, Any]:
    """One run, its experiment's name and its child runs (nested search points included)."""
    from mlharbor.tracking import compare

    store = _store(request)
    run = store.get_run(run_id)
    experiment = store.get_experiment(run.experiment_id)
    children = store.child_runs(run.run_id)
    return {**compare.run_view(run, experiment_name=experiment.name),
            "children": [compare.run_view(c, experiment_name=experiment.name)
                         for c in children]}


@router.get("/runs/{run_id}/metric-history")
def metric_history(
    request: Request, run_id: str,
    key: str = Query(..., min_length=1, max_length=250, description="The metric's key."),
    max_results: int = Query(10_000, ge=1, le=250_000),
) -> dict[str, Any]:
    """The points of one metric in step order: what the step charts draw."""
    from mlharbor.tracking.compare import number

    points, more = _store(request).metric_history(run_id, key, max_results=max_results)
    return {"run_id": run_id, "key": key, "truncated": more is not None,
            "points": [{"step": p.step, "timestamp": p.timestamp, "value": number(p.value)}
                       for p in points]}


@router.get("/runs/{run_id}/diff/{other_run_id}")
def diff_runs(request: Request, run_id: str, other_run_id: str) -> dict[str, Any]:
    """Two runs side by side: data fingerprint, code version, params, metrics and tags."""
    from mlharbor.tracking.compare import diff_runs as diff

    store = _store(request)
    return diff(store.get_run(run_id), store.get_run(other_run_id)).to_dict()
