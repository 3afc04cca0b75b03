"""Traffic of an endpoint from the prediction log: requests, latency percentiles, error rate.

The log keeps one row per predicted row, so a request of 64 rows has 64 rows with the same
``latency_s`` and ``fallback``. Every figure here counts *requests*: the first row of each
(``row == 0``), leaving out shadow copies, which no client waited for. The error rate is the
share of requests a fallback answered (``fallback`` set). Alert signals
(:mod:`mlharbor.monitoring.signals`) read the same helpers, so a chart and the alert on it
never disagree.

:func:`traffic` cuts ``[start, end)`` into buckets on the step's grid (whole minutes for
``1m``), so the buckets of one refresh are the buckets of the next.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from mlharbor.core.clock import epoch_micros
from mlharbor.core.errors import InvalidInputError

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

    from mlharbor.monitoring.predlog import PredictionLog

#: Percentiles the traffic series reports, as (key suffix, quantile).
PERCENTILES: tuple[tuple[str, float], ...] = (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))
#: Most buckets one series may have: a week by the minute is a mistake, not a chart.
MAX_BUCKETS = 2000


def request_table(log: PredictionLog, endpoint: str | None, start: datetime, end: datetime,
                  columns: Sequence[str] = (), *, shadow: bool = False) -> pa.Table:
    """One row per request logged for ``endpoint`` in ``[start, end)`` (all endpoints when
    None): the first row of each, shadow copies left out (only them when ``shadow``)."""
    table = log.scan(endpoint, start, end, columns=["row", "shadow", *columns])
    return first_rows(table, shadow=shadow)


def first_rows(table: pa.Table, *, shadow: bool = False) -> pa.Table:
    """The request rows of a log table (``row == 0``), without (or only) shadow copies."""
    import pyarrow.compute as pc

    keep = None
    if "row" in table.column_names:
        keep = pc.equal(table["row"], 0)
    if "shadow" in table.column_names:
        is_shadow = pc.fill_null(table["shadow"], False)
        wanted = is_shadow if shadow else pc.invert(is_shadow)
        keep = wanted if keep is None else pc.and_(keep, wanted)
    elif shadow:
        return table.slice(0, 0)
    return table if keep is None else table.filter(keep)


def fallback_count(table: pa.Table) -> int:
    """Requests in ``table`` answered by a fallback (a failed or refused primary)."""
    import pyarrow.compute as pc

    if "fallback" not in table.column_names or table.num_rows == 0:
        return 0
    return int(pc.sum(pc.is_valid(table["fallback"]).cast("int64")).as_py() or 0)


def error_rate(table: pa.Table) -> float | None:
    """Share of the requests in ``table`` a fallback answered; None without requests."""
    if table.num_rows == 0:
        return None
    return fallback_count(table) / int(table.num_rows)


def latency_quantile(table: pa.Table, q: float) -> float | None:
    """The ``q`` quantile of request latency in seconds (linear interpolation); None when no
    request has a latency."""
    value: float | None = _quantiles(_latencies(table), (q,))[0]
    return value


def traffic(log: PredictionLog, endpoint: str, *, start: datetime, end: datetime,
            step: timedelta, max_buckets: int = MAX_BUCKETS) -> dict[str, Any]:
    """Requests, requests per second, latency p50/p95/p99 (seconds) and error rate per
    ``step`` bucket of ``[start, end)``, the totals, and how requests split over the routes.

    Buckets without requests report 0 requests and ``None`` for latency and error rate.
    """
    import numpy as np
    import pyarrow.compute as pc

    edges = bucket_edges(start, end, step, max_buckets)
    table = log.scan(endpoint, start, end,
                     columns=["row", "shadow", "latency_s", "fallback", "model_ref", "version"])
    requests = first_rows(table)
    shadows = first_rows(table, shadow=True).num_rows
    micros = np.asarray([epoch_micros(e) for e in edges], dtype=np.int64)
    at = requests["at"].to_numpy(zero_copy_only=False) if requests.num_rows else \
        np.zeros(0, dtype=np.int64)
    index = np.searchsorted(micros, at, side="right") - 1
    latencies = _latencies(requests)
    fallback = (pc.is_valid(requests["fallback"]).to_numpy(zero_copy_only=False)
                if "fallback" in requests.column_names and requests.num_rows
                else np.zeros(requests.num_rows, dtype=bool))
    buckets = []
    for i in range(len(edges) - 1):
        chosen = index == i
        buckets.append(_bucket(edges[i], edges[i + 1], latencies[chosen], fallback[chosen]))
    totals = _bucket(start, end, latencies, fallback)
    del totals["start"]
    totals["shadow_requests"] = shadows
    return {
        "endpoint": endpoint, "start": start.isoformat(), "end": end.isoformat(),
        "step_s": step.total_seconds(), "buckets": buckets, "totals": totals,
        "split": _split(requests),
    }


def bucket_edges(start: datetime, end: datetime, step: timedelta,
                 max_buckets: int = MAX_BUCKETS) -> list[datetime]:
    """``start``, the step-grid boundaries inside ``(start, end)``, then ``end``: the windows
    of :func:`mlharbor.monitoring.windows.time_windows` (exact microseconds; more than
    ``max_buckets`` is refused there, the one window cap)."""
    from mlharbor.monitoring.windows import time_windows

    if step <= timedelta(0):
        raise InvalidInputError(f"The step must be positive; received {step}.", field="step")
    if end <= start:
        raise InvalidInputError("The window is empty: its end is not after its start.",
                                field="window")
    windows = time_windows(start, end, step, limit=max_buckets)
    return [windows[0][0], *(hi for _lo, hi in windows)]


def _bucket(lo: datetime, hi: datetime, latencies: np.ndarray, fallback: np.ndarray
            ) -> dict[str, Any]:
    count = len(fallback)
    seconds = (hi - lo).total_seconds()
    body: dict[str, Any] = {"start": lo.isoformat(), "requests": count,
                            "requests_per_s": count / seconds if seconds > 0 else 0.0}
    for (key, _q), value in zip(PERCENTILES, _quantiles(latencies, [q for _k, q in PERCENTILES]),
                                strict=True):
        body[f"latency_{key}_s"] = value
    body["error_rate"] = float(fallback.sum()) / count if count else None
    return body


def _split(requests: pa.Table) -> list[dict[str, Any]]:
    """Requests per route reference and served version, most first."""
    if requests.num_rows == 0 or "model_ref" not in requests.column_names:
        return []
    columns = ["model_ref"] + (["version"] if "version" in requests.column_names else [])
    grouped = requests.select(columns).group_by(columns).aggregate([([], "count_all")])
    total = requests.num_rows
    rows = [{"model_ref": r["model_ref"], "version": r.get("version"),
             "requests": int(r["count_all"]), "share": int(r["count_all"]) / total}
            for r in grouped.to_pylist()]
    return sorted(rows, key=lambda r: (-r["requests"], str(r["model_ref"]),
                                       r["version"] or 0))


def _latencies(table: pa.Table) -> np.ndarray:
    import numpy as np

    if "latency_s" not in table.column_names:
        return np.full(table.num_rows, np.nan)
    # One value per request; nulls arrive as NaN and _quantiles skips them.
    return np.asarray(table["latency_s"].to_numpy(zero_copy_only=False), dtype=float)


def _quantiles(values: np.ndarray, qs: Sequence[float]) -> list[float | None]:
    import numpy as np

    present = values[~np.isnan(values)] if len(values) else values
    if len(present) == 0:
        return [None for _ in qs]
    return [float(v) for v in np.quantile(present, list(qs))]


