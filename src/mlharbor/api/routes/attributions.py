"""``GET /api/v1/monitoring/endpoints/{name}/drift/attributions``: attribution drift of a
window against the reference (:mod:`mlharbor.monitoring.attribution_drift`), beside the data
drift route. ``window`` is a duration (``24h``); ``rows`` bounds the rows explained per side;
``threshold`` is the share of the model's total attribution a feature may move by."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from mlharbor.api.routes.monitoring import DurationQuery, monitor_of
from mlharbor.core.clock import utcnow

router = APIRouter(tags=["monitoring"])


@router.get("/api/v1/monitoring/endpoints/{name}/drift/attributions")
def get_attribution_drift(
    request: Request, name: str, window: DurationQuery = "24h",
    version: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
    rows: Annotated[int, Query(ge=1, le=2_000)] = 200,
    threshold: Annotated[float, Query(gt=0, lt=10)] = 0.1,
) -> dict[str, Any]:
    from mlharbor.monitoring.attribution_drift import endpoint_attribution_drift
    from mlharbor.monitoring.windows import parse_duration

    end = utcnow()
    start = end - parse_duration(window)
    return endpoint_attribution_drift(monitor_of(request), name, start=start, end=end,
                                      version=version, rows=rows, threshold=threshold)
