"""Monitoring routes: feedback (ground truth), drift, live performance (realised, and estimated
without labels), traffic and alerts.

``POST /v1/endpoints/{name}/feedback`` sits next to the prediction route a client already
calls; the read routes are under ``/api/v1/monitoring``. Their authorisation rules are in the one
route table, :mod:`mlharbor.security.routemap`. Windows and steps are durations (``15m``,
``24h``, ``7d``, ``40.7s``); a malformed one is answered 422 naming the parameter, and so is a
request for more windows (steps, buckets) than ``monitoring.max_windows``: the one cap, stated
in the answer with the finest step that fits.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import StringConstraints

from mlharbor.api.routes.params import Duration, invalid_query, window_limit
from mlharbor.core.clock import utcnow

# A duration query parameter, checked before the route runs (422 naming it when malformed).
DurationQuery = Annotated[Duration, Query()]

router = APIRouter(tags=["monitoring"])
_API = "/api/v1/monitoring"


def monitor_of(request: Request) -> Any:
    """The app's monitor: one set on the app by its caller, else the control plane's (built
    once, on first use, by :class:`mlharbor.bootstrap.control.ControlPlaneServices`)."""
    state = request.app.state
    monitor = getattr(state, "monitor", None)
    if monitor is None:
        services = getattr(state, "services", None)
        if services is None:  # the router mounted on its own (no control plane): its own
            from mlharbor.monitoring.service import Monitor

            monitor = state.monitor = Monitor(state.settings, getattr(state, "registry", None))
        else:
            monitor = state.monitor = services.monitor
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
def get_drift(request: Request, name: str, window: DurationQuery = "24h",
              step: Annotated[Duration | None, Query()] = None,
              version: int | None = Query(None, ge=1, le=2**31 - 1),
              rows: int | None = Query(None, ge=1, le=10_000_000),
              distributions: bool = Query(False, description="Add each feature's reference "
                                          "and current distribution on the reference bins.")
              ) -> dict[str, Any]:
    from mlharbor.monitoring.windows import parse_duration

    end = utcnow()
    span = parse_duration(window)
    start = end - span
    monitor = monitor_of(request)
    with window_limit():
        report = dict(monitor.drift(
            name, start=start, end=end, step=parse_duration(step) if step else None,
            version=version, rows=rows))
    if distributions:
        from mlharbor.monitoring.distributions import feature_distributions

        shapes = feature_distributions(monitor, name, model=report["model"],
                                       version=report["version"], start=start, end=end)
        for feature in report["features"]:
            feature["distribution"] = shapes.get(feature["name"])
        if report.get("prediction") is not None:
            report["prediction"]["distribution"] = shapes.get(report["prediction"]["name"])
    return report


SLICE_HELP = (
    "Cut each window's labelled rows (repeat for several): a column (contract), a column at "
    "bin edges (tenure_months:12,36), a filter (where:contract == 'month-to-month') or "
    "`recipe` (the served version's recipe slices). Each window then lists its slices with "
    "their metrics and labelled rows.")


@router.get(f"{_API}/endpoints/{{name}}/performance")
def get_performance(
    request: Request, name: str, window: DurationQuery = "7d", step: DurationQuery = "1d",
    texts: list[Annotated[str, StringConstraints(max_length=2000)]] | None = Query(
        None, alias="slice", max_length=10, description=SLICE_HELP),
) -> dict[str, Any]:
    from mlharbor.core.errors import InvalidInputError
    from mlharbor.monitoring.windows import parse_duration

    slices = None
    if texts is not None:
        from mlharbor.monitoring.liveslices import parse_live_slices

        try:
            slices = parse_live_slices(texts)
        except InvalidInputError as exc:
            invalid_query("slice", str(exc), exc.details.get("received"))
    end = utcnow()
    span = parse_duration(window)
    start = end - span
    # A step longer than the window would report one bucket reaching past "now".
    with window_limit():
        rows = monitor_of(request).performance(name, start=start, end=end,
                                               window=min(parse_duration(step), span),
                                               slices=slices)
    return {"endpoint": name, "windows": rows}


#: How the estimate was validated and when there is none: the dashboard shows it beside the
#: estimate, and the route answers it, so the two never disagree.
ESTIMATE_VALIDATION = (
    "Confidence-based performance estimation (CBPE, as NannyML's): the expected accuracy from "
    "the served probabilities, calibrated on this version's labelled production rows logged "
    "before the window. Validated under a covariate shift (tests/monitoring/"
    "test_estimation.py, +1.5 on a feature): over 200 windows of 1,000 rows the mean "
    "|estimate - realised| was 0.0096 (the reference's own accuracy was off by 0.093) and the "
    "95% interval held the realised accuracy in 100% of them. It assumes no concept drift: "
    "only labels show that.")
ESTIMATE_UNAVAILABLE = (
    "No estimate when the version has no labelled production rows before the window, when "
    "calibration is refused (fewer than 200 labelled rows, or probabilities off by more than "
    "the bound even after an isotonic fit), when the model has more than two classes (the log "
    "keeps only the top class's probability), or when it logs no probabilities.")


@router.get(f"{_API}/endpoints/{{name}}/estimated")
def get_estimated(request: Request, name: str, window: DurationQuery = "7d",
                  step: DurationQuery = "1d",
                  metric: str = Query("accuracy", max_length=20, description="accuracy, "
                                      "precision, recall or f1 (two-class models).")
                  ) -> dict[str, Any]:
    """Per ``step`` window of the last ``window`` and version: the CBPE estimate of
    ``metric`` (value and interval) on the window's predictions, fitted on the version's
    labelled production rows logged before the window, next to the realised value from
    feedback (what the performance route reports), or why there is no estimate."""
    from mlharbor.core.names import validate_name
    from mlharbor.monitoring.estimation import BINARY_METRICS
    from mlharbor.monitoring.windows import check_time_windows, parse_duration

    if metric not in BINARY_METRICS:
        invalid_query("metric", f"Unknown metric {metric!r}; expected one of: "
                      f"{', '.join(BINARY_METRICS)}.", metric)
    validate_name(name, kind="endpoint name")  # it names a folder of the log
    end = utcnow()
    span = parse_duration(window)
    size = min(parse_duration(step), span)
    monitor = monitor_of(request)
    with window_limit():
        check_time_windows(span, size, monitor.max_windows)
        realised = monitor.performance(name, start=end - span, end=end, window=size)
    rows = estimated_windows(monitor, name, start=end - span, end=end, step=size,
                             metric=metric)
    by_window = {(r["start"], r["version"]): r for r in realised}
    for row in rows:
        live = by_window.get((row["start"], row["version"]))
        row["realised"] = None if live is None else live["metrics"].get(metric)
        row["labelled_rows"] = 0 if live is None else live["labelled_rows"]
    return {"endpoint": name, "metric": metric, "start": (end - span).isoformat(),
            "end": end.isoformat(), "windows": rows, "validation": ESTIMATE_VALIDATION,
            "unavailable_when": ESTIMATE_UNAVAILABLE}


def estimated_windows(monitor: Any, name: str, *, start: Any, end: Any, step: Any,
                      metric: str) -> list[dict[str, Any]]:
    """One row per (window, version) with logged predictions: the CBPE estimate
    (:func:`mlharbor.pipelines.triggers.production_estimate`) or why there is none. Windows
    lie on the performance route's grid (``step`` from ``start``), so rows pair up."""
    from mlharbor.core.clock import epoch_micros
    from mlharbor.core.records import to_dict
    from mlharbor.monitoring.windows import MICROSECOND, moment_of
    from mlharbor.pipelines.triggers import production_estimate

    current = monitor.feedback.scored_rows(name, start=start, end=end, labelled=False)
    if current.empty:
        return []
    labelled = monitor.feedback.scored_rows(name, start=None, end=end, labelled=True)
    size, origin = step // MICROSECOND, epoch_micros(start)
    current = current.assign(window=(current["at"] - origin) // size,
                             version=current["version"].astype("Int64"))
    out = []
    for (index, version), part in current.groupby(["window", "version"], dropna=False):
        lo = moment_of(origin + int(index) * size).astimezone(start.tzinfo)
        number = None if version is None or version != version else int(version)
        row: dict[str, Any] = {"start": lo.isoformat(), "end": (lo + step).isoformat(),
                               "version": number, "rows": len(part), "estimate": None,
                               "reference_rows": 0, "unavailable": None}
        if part["score"].isna().all():
            row["unavailable"] = ("no probabilities were logged (a regressor, or a "
                                  "classifier without predict_proba)")
        else:
            before = labelled[labelled["at"] < origin + int(index) * size]
            found = production_estimate(monitor, name, part, before, version=number,
                                        metric=metric)
            if isinstance(found, str):
                row["unavailable"] = found
            else:
                row.update(estimate=to_dict(found.estimate),
                           reference_rows=found.reference_rows)
        out.append(row)
    out.sort(key=lambda r: (r["start"], r["version"] or 0))
    return out


@router.get(f"{_API}/endpoints/{{name}}/traffic")
def get_traffic(request: Request, name: str, window: DurationQuery = "1h",
                step: DurationQuery = "1m") -> dict[str, Any]:
    """Per ``step`` bucket of the last ``window``: requests, requests/s, latency p50/p95/p99
    (seconds) and error rate (share answered by a fallback), counting one value per request
    and leaving shadow copies out; with the totals and the split over routes and versions."""
    from mlharbor.core.names import validate_name
    from mlharbor.monitoring.traffic import traffic
    from mlharbor.monitoring.windows import parse_duration

    span, size = parse_duration(window), parse_duration(step)
    if size > span:
        invalid_query("step", f"The step ({step}) is longer than the window ({window}).",
                      step)
    validate_name(name, kind="endpoint name")  # it names a folder of the log
    end = utcnow()
    monitor = monitor_of(request)
    with window_limit():
        return traffic(monitor.log, name, start=end - span, end=end, step=size,
                       max_buckets=monitor.max_windows)


@router.get(f"{_API}/endpoints")
def get_logged_endpoints(
        request: Request,
        details: bool = Query(False, description="Add, for every endpoint stored or logged, "
                              "its requests in the last 24 hours, the version it served most "
                              "and whether that version has a reference profile (what the "
                              "Drift page offers and picks from).")) -> dict[str, Any]:
    """Endpoints with logged predictions, stored ones and those served ad hoc (``mlharbor
    serve churn@champion`` serves an endpoint ``churn`` that is not stored)."""
    monitor = monitor_of(request)
    body: dict[str, Any] = {"endpoints": monitor.log.endpoints()}
    if details:
        from mlharbor.monitoring.traffic import endpoint_overview

        registry = getattr(request.app.state, "registry", None)
        stored = [] if registry is None else _stored_endpoints(registry)
        body["details"] = endpoint_overview(monitor.log, registry, stored, end=utcnow())
    return body


def _stored_endpoints(registry: Any) -> list[str]:
    from mlharbor.registry.endpoints import EndpointService

    return [e.name for e in EndpointService(registry).list_endpoints()]


@router.get(f"{_API}/endpoints/{{name}}/resources")
def get_resources(request: Request, name: str) -> dict[str, Any]:
    """Resource use of the serving processes serving ``name``: CPU seconds, resident memory
    and each loaded version's memory estimate, from the samples they write under the home
    (see mlharbor.monitoring.traffic)."""
    from mlharbor.core.names import validate_name
    from mlharbor.monitoring.traffic import endpoint_resources

    validate_name(name, kind="endpoint name")
    return endpoint_resources(request.app.state.settings.home, name, utcnow())


@router.get(f"{_API}/alerts")
def get_alerts(request: Request, limit: int = Query(100, ge=1, le=10_000)) -> dict[str, Any]:
    alerts = getattr(request.app.state, "alerts", None)
    if alerts is None:
        return {"active": [], "history": []}
    return {"active": alerts.active(), "history": alerts.history(limit)}


@router.get(f"{_API}/alerts/rules")
def get_alert_rules(request: Request) -> dict[str, Any]:
    """The alert rules in force, default and from the rules file, each with its state
    (firing or ok), its last value and its breaches among the last evaluations."""
    alerts = getattr(request.app.state, "alerts", None)
    mon = request.app.state.settings.monitoring
    rules = [] if alerts is None else alerts.rule_states()
    defaults = "on" if mon.default_alert_rules else "off (monitoring.default_alert_rules)"
    rules_file = mon.alert_rules_file or "none (monitoring.alert_rules_file)"
    return {"rules": rules, "default_rules": bool(mon.default_alert_rules),
            "rules_file": str(mon.alert_rules_file) if mon.alert_rules_file else None,
            "note": f"Default rules: {defaults}; rules file: {rules_file}. A file rule named "
                    "like a default rule replaces it. Evaluated every "
                    f"{mon.evaluation_interval_s:g} s."}
