"""Monitoring routes: feedback (ground truth), drift, live performance and alerts.

``POST /v1/endpoints/{name}/feedback`` sits next to the prediction route a client already
calls; the read routes are under ``/api/v1/monitoring``. Their authorisation rules are in the one
route table, :mod:`mlharbor.security.routemap`.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request

from mlharbor.core.clock import utcnow

router = APIRouter(tags=["monitoring"])
_API = "/api/v1/monitoring"


def monitor_of(request: Request) -> Any:
    """The app's monitor, built on first use from the app's settings and registry."""
    state = request.app.state
    monitor = getattr(state, "monitor", None)
    if monitor is None:
        from mlharbor.monitoring.service import Monitor

        monitor = state.monitor = Monitor(state.settings, getattr(state, "registry", None))
    return monitor


@router.post("/v1/endpoints/{name}/feedback")
async def post_feedback(name: str, request: Request) -> dict[str, Any]:
    """Ground truth for one request (``{"request_id", "label"}``) or many (``{"labels"}``)."""
    import orjson
    from starlette.concurrency import run_in_threadpool

    from mlharbor.core.errors import InvalidInputError

    raw = await request.body()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidInputError(f"feedback: the body is not JSON ({exc}).",
                                hint='Send {"request_id": "...", "label": 1}.') from exc
    accepted = await run_in_threadpool(monitor_of(request).add_feedback, name, body)
    return {"endpoint": name, "accepted": accepted}


@router.get(f"{_API}/endpoints/{{name}}/drift")
def get_drift(request: Request, name: str, window: str = Query("24h"),
              step: str | None = Query(None), version: int | None = Query(None, ge=1),
              rows: int | None = Query(None, ge=1, le=10_000_000)) -> dict[str, Any]:
    from mlharbor.monitoring.windows import parse_duration

    end = utcnow()
    span = parse_duration(window)
    return dict(monitor_of(request).drift(
        name, start=end - span, end=end, step=parse_duration(step) if step else None,
        version=version, rows=rows))


@router.get(f"{_API}/endpoints/{{name}}/performance")
def get_performance(request: Request, name: str, window: str = Query("7d"),
                    step: str = Query("1d")) -> dict[str, Any]:
    from mlharbor.monitoring.windows import parse_duration

    end = utcnow()
    span = parse_duration(window)
    start = end - span
    # A step longer than the window would report one bucket reaching past "now".
    rows = monitor_of(request).performance(name, start=start, end=end,
                                           window=min(parse_duration(step), span))
    return {"endpoint": name, "windows": rows}


@router.get(f"{_API}/alerts")
def get_alerts(request: Request, limit: int = Query(100, ge=1, le=10_000)) -> dict[str, Any]:
    alerts = getattr(request.app.state, "alerts", None)
    if alerts is None:
        return {"active": [], "history": []}
    return {"active": alerts.active(), "history": alerts.history(limit)}
