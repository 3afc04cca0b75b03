"""Traffic from the real prediction log: requests counted once, shadows left out, buckets on
the step's grid, and the alert signals reading the same numbers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from mlharbor.core.errors import InvalidInputError
from mlharbor.core.records import PredictionRecord
from mlharbor.monitoring.alerts import load_rules
from mlharbor.monitoring.predlog import PredictionLog
from mlharbor.monitoring.segments import LocalSegments
from mlharbor.monitoring.service import Monitor
from mlharbor.monitoring.signals import signal_values
from mlharbor.monitoring.traffic import bucket_edges, traffic
from mlharbor.settings import Settings

START = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)


def record(rid: str, at: datetime, latency: float, rows: int = 1, *, shadow: bool = False,
           fallback: str | None = None, ref: str = "churn@champion", version: int = 1
           ) -> PredictionRecord:
    return PredictionRecord(rid, "churn", ref, version, [{"x": float(i)} for i in range(rows)],
                            [0] * rows, latency, at, shadow=shadow, fallback=fallback)


@pytest.fixture
def log(tmp_path: Path) -> PredictionLog:
    """Minute 0: 3 requests (one of 50 rows) + their shadows; minute 1: none; minute 2: 2
    requests, one answered by the fallback; and a request on another endpoint."""
    log = PredictionLog(tmp_path / "journal", LocalSegments(tmp_path / "segments"))
    t0 = START + timedelta(seconds=10)
    records = [
        record("a", t0, 0.010, rows=50), record("b", t0 + timedelta(seconds=5), 0.020),
        record("c", t0 + timedelta(seconds=9), 0.030, ref="churn:2", version=2),
        *[record(f"s{i}", t0 + timedelta(seconds=i), 5.0, shadow=True) for i in range(3)],
        record("d", START + timedelta(minutes=2), 0.100),
        record("e", START + timedelta(minutes=2, seconds=30), 0.300, fallback="churn:1"),
    ]
    log.write(records)
    other = PredictionRecord("z", "other", "other@champion", 1, {"x": 1.0}, [0], 9.0,
                             START + timedelta(seconds=20))
    log.emit(other)
    log.flush()
    log.compact()
    return log


def test_buckets_count_requests_once_and_leave_shadow_copies_out(log: PredictionLog) -> None:
    body = traffic(log, "churn", start=START, end=START + timedelta(minutes=3),
                   step=timedelta(minutes=1))
    first, empty, last = body["buckets"]
    assert [b["start"] for b in body["buckets"]] == [
        (START + timedelta(minutes=m)).isoformat() for m in range(3)]
    assert first["requests"] == 3 and first["requests_per_s"] == pytest.approx(3 / 60)
    assert first["latency_p50_s"] == pytest.approx(0.020)  # the 50-row request counts once
    assert first["latency_p99_s"] == pytest.approx(np.quantile([0.01, 0.02, 0.03], 0.99))
    assert first["error_rate"] == 0.0
    assert empty == {"start": empty["start"], "requests": 0, "requests_per_s": 0.0,
                     "latency_p50_s": None, "latency_p95_s": None, "latency_p99_s": None,
                     "error_rate": None}
    assert last["requests"] == 2 and last["error_rate"] == 0.5
    totals = body["totals"]
    assert totals["requests"] == 5 and totals["shadow_requests"] == 3
    assert totals["error_rate"] == pytest.approx(1 / 5)
    assert totals["latency_p95_s"] == pytest.approx(
        np.quantile([0.01, 0.02, 0.03, 0.1, 0.3], 0.95))
    assert body["split"] == [
        {"model_ref": "churn@champion", "version": 1, "requests": 4, "share": 0.8},
        {"model_ref": "churn:2", "version": 2, "requests": 1, "share": 0.2}]


def test_buckets_follow_the_steps_grid_so_refreshes_line_up() -> None:
    start = START + timedelta(seconds=42)
    edges = bucket_edges(start, start + timedelta(minutes=2), timedelta(minutes=1))
    assert edges == [start, START + timedelta(minutes=1), START + timedelta(minutes=2),
                     start + timedelta(minutes=2)]
    with pytest.raises(InvalidInputError, match="at most 2,000"):
        bucket_edges(START, START + timedelta(days=7), timedelta(seconds=1))
    with pytest.raises(InvalidInputError, match="empty"):
        bucket_edges(START, START, timedelta(minutes=1))


def test_a_log_without_traffic_has_empty_buckets(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path / "journal", LocalSegments(tmp_path / "segments"))
    body = traffic(log, "churn", start=START, end=START + timedelta(minutes=2),
                   step=timedelta(minutes=1))
    assert [b["requests"] for b in body["buckets"]] == [0, 0]
    assert body["totals"]["latency_p50_s"] is None and body["split"] == []


def test_alert_signals_read_the_same_numbers_as_the_charts(settings: Settings,
                                                           tmp_path: Path) -> None:
    monitor = Monitor(settings)
    try:
        for rec in (record("a", START, 0.01, rows=20), record("b", START, 0.02),
                    record("c", START, 0.5, fallback="churn:1"),
                    record("s", START, 9.0, shadow=True)):
            monitor.log.emit(rec)
        monitor.log.flush()
        monitor.log.compact()
        rules = load_rules([
            {"name": "p95", "kind": "latency", "endpoint": "churn", "threshold": 1,
             "percentile": 0.95, "window": "5m"},
            {"name": "errors", "kind": "error_rate", "endpoint": "churn", "threshold": 1,
             "window": "5m"},
            {"name": "silence", "kind": "traffic_stop", "endpoint": "churn", "threshold": 1,
             "window": "5m"}])
        now = START + timedelta(minutes=1)
        values = signal_values(monitor, rules, now=now)
        chart = traffic(monitor.log, "churn", start=now - timedelta(minutes=5), end=now,
                        step=timedelta(minutes=1))["totals"]
        assert values == {"p95": pytest.approx(chart["latency_p95_s"]),
                          "errors": pytest.approx(chart["error_rate"]), "silence": 3.0}
        assert chart["error_rate"] == pytest.approx(1 / 3)
    finally:
        monitor.log.close()
