"""Traffic of an endpoint from the prediction log: requests, latency percentiles, error rate.

The log keeps one row per predicted row, so a request of 64 rows has 64 rows with the same
``latency_s`` and ``fallback``. Every figure here counts *requests*: the first row of each
(``row == 0``), leaving out shadow copies, which no client waited for. The error rate is the
share of requests a fallback answered (``fallback`` set) or that did not answer (``error``
set: today only a shadow's failed copies, counted as errors of the shadow's version in
``shadow_errors``; segments older than that column have none). Alert signals
(:mod:`mlharbor.monitoring.signals`) read the same helpers, so a chart and the alert on it
never disagree.

:func:`traffic` cuts ``[start, end)`` into buckets on the step's grid (whole minutes for
``1m``), so the buckets of one refresh are the buckets of the next.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlharbor.core.clock import epoch_micros
from mlharbor.core.errors import InvalidInputError

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

    from mlharbor.monitoring.predlog import PredictionLog

log = logging.getLogger("mlharbor.monitoring.traffic")

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


def failed(table: pa.Table) -> np.ndarray:
    """Per row of ``table``: answered by a fallback (a failed or refused primary) or not
    answered at all (``error`` set, a failed shadow copy)."""
    import numpy as np
    import pyarrow.compute as pc

    out = np.zeros(table.num_rows, dtype=bool)
    for name in ("fallback", "error"):
        if name in table.column_names and table.num_rows:
            out |= pc.is_valid(table[name]).to_numpy(zero_copy_only=False)
    return out


def fallback_count(table: pa.Table) -> int:
    """Requests in ``table`` that failed: answered by a fallback, or not answered (``error``)."""
    return int(failed(table).sum())


def error_rate(table: pa.Table) -> float | None:
    """Share of the requests in ``table`` that failed (:func:`failed`); None without
    requests."""
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
    The totals also count the shadow's copies (``shadow_requests``) and, of those, the copies
    that failed (``shadow_errors``, errors of the shadow's version).

    Buckets without requests report 0 requests and ``None`` for latency and error rate.
    """
    import numpy as np

    edges = bucket_edges(start, end, step, max_buckets)
    table = log.scan(endpoint, start, end,
                     columns=["row", "shadow", "latency_s", "fallback", "error", "model_ref",
                              "version"])
    requests = first_rows(table)
    copies = first_rows(table, shadow=True)
    micros = np.asarray([epoch_micros(e) for e in edges], dtype=np.int64)
    at = requests["at"].to_numpy(zero_copy_only=False) if requests.num_rows else \
        np.zeros(0, dtype=np.int64)
    index = np.searchsorted(micros, at, side="right") - 1
    latencies = _latencies(requests)
    fallback = failed(requests)
    buckets = []
    for i in range(len(edges) - 1):
        chosen = index == i
        buckets.append(_bucket(edges[i], edges[i + 1], latencies[chosen], fallback[chosen]))
    totals = _bucket(start, end, latencies, fallback)
    del totals["start"]
    totals["shadow_requests"] = copies.num_rows
    totals["shadow_errors"] = fallback_count(copies)
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




# -- resource use of the serving processes ---------------------------------------------------
#
# A serving process and the control plane share a home but not a port the control plane could
# know (one, many or no serving processes, started on their own), so each serving process
# writes its own sample -- ServingMetrics.resource_sample(): CPU seconds, resident memory, the
# endpoints it serves and each loaded version's memory estimate -- to
# <home>/monitoring/resources/<host>-<pid>.json every RESOURCE_INTERVAL_S (atomically), and
# removes it when it stops. The dashboard reads the samples of the processes serving an
# endpoint; a sample older than three intervals is shown as stale (a process that died).

RESOURCE_INTERVAL_S = 5.0


def resources_dir(home: Path) -> Path:
    return home / "monitoring" / "resources"


class ResourceReporter:
    """Writes ``sample()`` of this serving process every ``interval_s`` on a daemon thread."""

    def __init__(self, home: Path, sample: Callable[[], dict[str, Any]],
                 interval_s: float = RESOURCE_INTERVAL_S) -> None:
        import os
        import socket

        self.sample, self.interval_s = sample, interval_s
        self.path = resources_dir(home) / f"{socket.gethostname()}-{os.getpid()}.json"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def write(self) -> None:
        import os
        import socket

        import orjson

        from mlharbor.core.clock import utcnow

        body = {**self.sample(), "host": socket.gethostname(), "at": utcnow().isoformat(),
                "interval_s": self.interval_s}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_bytes(orjson.dumps(body))
        os.replace(partial, self.path)

    def start(self) -> ResourceReporter:
        self._thread = threading.Thread(target=self._run, name="mlharbor-resources",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self.path.unlink(missing_ok=True)  # a stopped process uses nothing

    def _run(self) -> None:
        while True:
            try:
                self.write()
            except Exception:
                log.exception("writing the resource sample failed")
            if self._stop.wait(self.interval_s):
                return


def endpoint_resources(home: Path, endpoint: str, now: datetime) -> dict[str, Any]:
    """The samples of the serving processes that serve ``endpoint``, newest first, each with
    its age and whether it is stale."""
    import orjson

    processes = []
    folder = resources_dir(home)
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            body = orjson.loads(path.read_bytes())
            at = datetime.fromisoformat(body["at"])
        except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            continue  # a file being replaced, or not ours
        if endpoint not in body.get("endpoints", []):
            continue
        age = (now - at).total_seconds()
        processes.append({
            "process": f"{body.get('host', '?')}:{body.get('pid', '?')}",
            "host": body.get("host"), "pid": body.get("pid"), "at": body["at"],
            "age_s": age, "stale": age > 3 * float(body.get("interval_s", RESOURCE_INTERVAL_S)),
            "endpoints": body.get("endpoints", []), "cpu_seconds": body.get("cpu_seconds"),
            "resident_bytes": body.get("resident_bytes"), "models": body.get("models", []),
        })
    processes.sort(key=lambda p: (p["stale"], p["age_s"]))
    return {
        "endpoint": endpoint, "processes": processes,
        "note": "CPU: seconds the serving process has used since it started; memory: its "
                "resident memory (shared by every endpoint it serves); a version's memory is "
                "estimated as the growth of resident memory while it loaded.",
    }


def endpoint_overview(log: PredictionLog, registry: Any, stored: Sequence[str], *,
                      end: datetime, span: timedelta = timedelta(days=1)
                      ) -> list[dict[str, Any]]:
    """Every endpoint stored or logged, with its requests in ``[end - span, end)``, the
    version it served most there and whether that version has a reference profile; the ones
    with traffic first (most first), then by name."""
    import pyarrow.compute as pc

    names = sorted(set(stored) | set(log.endpoints()))
    out = []
    for name in names:
        requests = request_table(log, name, end - span, end, ["model_ref", "version"])
        model = version = None
        if requests.num_rows and "version" in requests.column_names:
            counts = pc.value_counts(requests["version"].drop_null()).to_pylist()
            if counts:
                version = int(max(counts, key=lambda c: c["counts"])["values"])
                refs = requests.filter(pc.equal(requests["version"], version))["model_ref"]
                model = str(refs[0].as_py()).split("@")[0].split(":")[0]
        out.append({"name": name, "stored": name in stored, "requests": requests.num_rows,
                    "model": model, "version": version,
                    "has_reference": _has_reference(registry, model, version)})
    return sorted(out, key=lambda e: (-e["requests"], e["name"]))


def _has_reference(registry: Any, model: str | None, version: int | None) -> bool:
    from mlharbor.core.errors import MlharborError

    if registry is None or model is None or version is None:
        return False
    try:
        mv = registry.get_version(f"{model}:{version}")
    except MlharborError:
        return False
    return bool((mv.lineage or {}).get("reference_profile"))
