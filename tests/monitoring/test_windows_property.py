"""Windows on the step's grid, property-tested: they end, cover the span exactly, and count
exactly what a brute-force count of the log's timestamps finds (also when read back from the
per-window cache); more windows than ``monitoring.max_windows`` is refused, 422 on every
windowed route and one line in the CLI.

Found by users: ``--window 5.13m --step 40.7s`` never returned (float boundaries stopped
advancing) and the per-window cache was keyed by whole seconds, so two windows within one
second shared their counts.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pandas as pd
import pytest
from fastapi import FastAPI
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from mlharbor.api.errors import install_error_handlers
from mlharbor.api.routes import monitoring as routes
from mlharbor.bootstrap import open_registry
from mlharbor.core.clock import epoch_micros, utcnow
from mlharbor.core.errors import InvalidInputError
from mlharbor.core.records import PredictionRecord
from mlharbor.data.profile import build_profile
from mlharbor.monitoring.drift import DriftEngine
from mlharbor.monitoring.predlog import PredictionLog
from mlharbor.monitoring.reference import Reference, infer_kinds
from mlharbor.monitoring.segments import LocalSegments
from mlharbor.monitoring.service import Monitor, open_prediction_log
from mlharbor.monitoring.windows import (
    WindowLimitError,
    moment_of,
    parse_duration,
    time_windows,
    window_bounds,
    window_count,
)
from mlharbor.settings import Settings
from tests.support import cli_env, run_cli

SECOND = 1_000_000
#: Steps users write that are not whole seconds, and ones that are.
STEPS_US = [40_700_000, 307_800_000, 1_500_000, 333_333, 7, 1_000_000, 3_600_000_000]

# -- the window computation alone -----------------------------------------------------------

spans = st.one_of(st.just(0), st.integers(1, 50), st.integers(1, 10 * SECOND),
                  st.integers(1, 400 * 86_400 * SECOND))
steps = st.one_of(st.sampled_from(STEPS_US), st.integers(1, 10 * SECOND),
                  st.integers(1, 500 * 86_400 * SECOND))


@settings(derandomize=True, deadline=None, max_examples=600)
@given(start=st.integers(1_600_000_000 * SECOND, 1_900_000_000 * SECOND), span=spans,
       step=steps, limit=st.sampled_from([1, 2, 10, 2000]),
       stamps=st.lists(st.integers(-2 * SECOND, 12 * SECOND), max_size=40))
def test_windows_cover_the_span_exactly_and_count_like_brute_force(
        start: int, span: int, step: int, limit: int, stamps: list[int]) -> None:
    end = start + span
    count = window_count(start, end, step)
    if count > limit:
        with pytest.raises(WindowLimitError, match=f"at most {limit:,} are allowed"):
            window_bounds(start, end, step, limit=limit)
        return
    bounds = window_bounds(start, end, step, limit=limit)
    assert len(bounds) == count
    if span == 0:
        assert bounds == []
        return
    # Cover [start, end) exactly: first at start, last at end, each next starts where the last
    # ended, none empty; every inner boundary is on the step's grid.
    assert bounds[0][0] == start and bounds[-1][1] == end
    assert all(lo < hi for lo, hi in bounds)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
    assert all(hi % step == 0 for _lo, hi in bounds[:-1])
    assert all(hi - lo <= step for lo, hi in bounds)
    # Counts per window equal a brute-force count; together they count the span once.
    times = sorted(start + s for s in stamps)
    per_window = [bisect.bisect_left(times, hi) - bisect.bisect_left(times, lo)
                  for lo, hi in bounds]
    for (lo, hi), counted in zip(bounds, per_window, strict=True):
        assert counted == sum(lo <= t < hi for t in times)
    assert sum(per_window) == sum(start <= t < end for t in times)


@settings(derandomize=True, deadline=None, max_examples=200)
@given(amount=st.decimals(min_value="0.001", max_value="100000", places=3),
       unit=st.sampled_from("smhdw"))
def test_durations_are_exact_microseconds(amount: Any, unit: str) -> None:
    size = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}[unit]
    micros = amount * size * SECOND
    assume(micros <= 10 * 366 * 86_400 * SECOND)
    parsed = parse_duration(f"{amount}{unit}")
    assert parsed // timedelta(microseconds=1) == int(micros.to_integral_value())


def test_durations_finer_than_a_microsecond_or_not_finite_are_refused() -> None:
    assert parse_duration("5.13m") == timedelta(seconds=307, microseconds=800_000)
    assert parse_duration("40.7s") == timedelta(seconds=40, microseconds=700_000)
    for text in ("0.0000001s", "nan s", "snanm", "infh", "-1s", "0s", "1e999999999d", "3661d"):
        with pytest.raises(InvalidInputError):
            parse_duration(text)


# -- the same through the real log and the per-window cache --------------------------------

BASE = (utcnow() - timedelta(days=1)).replace(minute=0, second=0, microsecond=0)
BASE_US = epoch_micros(BASE)


def _stamps() -> list[int]:
    """Logged times (us): random ones, pairs a few microseconds apart within one second, and
    ones exactly on the grid points of every step in STEPS_US (and a microsecond either side)."""
    rng = np.random.default_rng(12)
    out = set((BASE_US + rng.integers(0, 400 * SECOND, size=300)).tolist())
    out |= {BASE_US + 5 * SECOND + d for d in (0, 1, 2, 250_000, 500_000)}
    for step in STEPS_US:
        first = BASE_US // step + 1
        for g in range(first, first + 12):
            out |= {g * step - 1, g * step, g * step + 1}
    return sorted(t for t in out if t < BASE_US + 420 * SECOND)


STAMPS = _stamps()


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Monitor, DriftEngine]]:
    root = tmp_path_factory.mktemp("windows")
    log = PredictionLog(root / "journal", LocalSegments(root / "segments"))
    for i, at in enumerate(STAMPS):
        log.emit(PredictionRecord(f"r{i}", "churn", "churn@champion", 1, {"x": float(i % 7)},
                                  [0], 0.001, moment_of(at)))
    log.flush()
    log.compact()
    frame = pd.DataFrame({"x": np.arange(200) % 7}).astype(float)
    engine = DriftEngine(Reference.from_profile(build_profile(frame, infer_kinds(frame))))
    yield Monitor(Settings(home=root / "home"), log=log), engine
    log.close()


@settings(derandomize=True, deadline=None, max_examples=60)
@given(offset=st.integers(-2 * SECOND, 400 * SECOND), span=st.integers(0, 420 * SECOND),
       step=st.one_of(st.sampled_from(STEPS_US), st.none()), pieces=st.integers(1, 40),
       jitter=st.integers(0, SECOND))
def test_logged_rows_per_window_match_a_brute_force_count_cached_or_not(
        logged: tuple[Monitor, DriftEngine], offset: int, span: int, step: int | None,
        pieces: int, jitter: int) -> None:
    monitor, engine = logged
    step = step or max(span // pieces + jitter, 1)  # mostly a few dozen windows, not whole s
    start, end = moment_of(BASE_US + offset), moment_of(BASE_US + offset + span)
    limit = 30
    if window_count(BASE_US + offset, BASE_US + offset + span, step) > limit:
        with pytest.raises(WindowLimitError):
            time_windows(start, end, timedelta(microseconds=step), limit=limit)
        return
    windows = time_windows(start, end, timedelta(microseconds=step), limit=limit)
    expected = [bisect.bisect_left(STAMPS, epoch_micros(hi)) -
                bisect.bisect_left(STAMPS, epoch_micros(lo)) for lo, hi in windows]
    assert sum(expected) == bisect.bisect_left(STAMPS, epoch_micros(end)) - \
        bisect.bisect_left(STAMPS, epoch_micros(start))
    for _ in range(2):  # the second pass reads the counts cached by the first
        counted = [monitor.window_counts(engine, "churn", 1, lo, hi).rows for lo, hi in windows]
        assert counted == expected


# -- the CLI with windows that are not whole seconds, and the cap everywhere ---------------

def _registered_with_traffic(settings: Settings, rows: int, spread: timedelta) -> datetime:
    """Version 1 of ``churn`` with a reference profile, and ``rows`` logged predictions in the
    last ``spread``; returns the moment logging finished."""
    rng = np.random.default_rng(4)
    frame = pd.DataFrame({"x": rng.normal(size=2_000), "plan": rng.choice(list("abc"), 2_000)})
    bundle = settings.home.parent / "bundle"
    bundle.mkdir(parents=True, exist_ok=True)
    (bundle / "model.txt").write_text("a model")
    registry = open_registry(settings)
    try:
        registry.create_model("churn")
        registry.register_version("churn", bundle, lineage={
            "reference_profile": build_profile(frame, infer_kinds(frame))})
    finally:
        registry.close()
    log = open_prediction_log(settings)
    now = utcnow()
    for i in range(rows):
        log.emit(PredictionRecord(
            f"r{i}", "churn", "churn@champion", 1,
            {"x": float(rng.normal()), "plan": str(rng.choice(list("abc")))}, [0], 0.01,
            now - spread + spread * (i + 0.5) / rows))
    log.close()
    return now


def test_cli_drift_with_fractional_window_and_step_returns(settings: Settings,
                                                          tmp_path: Path) -> None:
    _registered_with_traffic(settings, 240, timedelta(minutes=4))
    report = tmp_path / "report.json"
    result = run_cli("monitor", "drift", "churn", "--window", "5.13m", "--step", "40.7s",
                     "--json", str(report), env=cli_env(settings), timeout=240)
    assert result.returncode == 0, result.stderr
    body = orjson.loads(report.read_bytes())
    assert body["window"]["rows"] == 240
    # 5.13 minutes in 40.7 s steps on the grid: 8 or 9 windows; the rows are in them once.
    assert 6 <= len(body["series"]) <= 9
    assert sum(point["rows"] for point in body["series"]) == 240
    starts = [point["start"] for point in body["series"]]
    assert starts == sorted(starts) and len(set(starts)) == len(starts)
    # Windows of about 30 rows were judged on thresholds simulated at their exact sizes,
    # saved with the calibration for the next report.
    (saved,) = (settings.home / "monitoring" / "calibration").glob("*.json")
    exact = orjson.loads(saved.read_bytes())["exact"]
    assert {int(n) for n in exact["x"]} >= {point["rows"] for point in body["series"]}


def test_cli_refuses_too_many_windows_in_one_line(settings: Settings) -> None:
    for args in (["drift", "churn", "--window", "3650d", "--step", "1s"],
                 ["performance", "churn", "--window", "3650d", "--step", "1s"]):
        result = run_cli("monitor", *args, env=cli_env(settings), timeout=120)
        assert result.returncode != 0
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "at most 2,000 are allowed" in lines[0], result.stderr
        assert "longer step" in lines[0] and "Traceback" not in result.stderr


def _app(settings: Settings) -> FastAPI:
    app = FastAPI()
    app.state.settings = settings
    install_error_handlers(app, debug=False)
    app.include_router(routes.router)
    return app


@pytest.mark.parametrize("route,query", [
    ("drift", "window=3650d&step=1s"),
    ("drift", "window=1h&step=0.001s"),
    ("drift", "window=24h&rows=1"),
    ("performance", "window=3650d&step=1s"),
    ("traffic", "window=3650d&step=1s"),
])
def test_every_windowed_route_refuses_too_many_windows_with_422(
        settings: Settings, live_server: Any, route: str, query: str) -> None:
    settings = settings.model_copy(update={"monitoring": settings.monitoring.model_copy(
        update={"max_windows": 50})})
    if "rows" in query:  # row windows: the count is known once the log is read
        _registered_with_traffic(settings, 120, timedelta(minutes=30))
    with live_server(_app(settings)) as server:
        answer = httpx.get(f"{server.url}/api/v1/monitoring/endpoints/churn/{route}?{query}",
                           timeout=60)
        assert answer.status_code == 422, answer.text
        message = answer.json()["error"]["message"]
        assert "at most 50 are allowed" in message and "monitoring.max_windows" in message
        field = "rows" if "rows" in query else "step"
        assert message.startswith(f"{field}: ")
        assert httpx.get(f"{server.url}/api/v1/monitoring/endpoints", timeout=10
                         ).status_code == 200
