"""Prediction log: durable under SIGKILL, lossless on shutdown, redacted, sealed, on S3."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from mlharbor.core.errors import UnavailableError
from mlharbor.core.records import PredictionRecord
from mlharbor.monitoring.predlog import PredictionLog
from mlharbor.monitoring.segments import LocalSegments
from mlharbor.monitoring.service import open_prediction_log
from mlharbor.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def record(i: int, *, at: datetime | None = None, endpoint: str = "churn",
           **inputs: object) -> PredictionRecord:
    return PredictionRecord(
        request_id=f"r{i}", endpoint=endpoint, model_ref="churn@champion", served_version=1,
        inputs={"tenure": i % 70, "plan": "basic", **inputs}, outputs=[i % 2],
        latency_s=0.002, at=at or datetime.now(UTC))


def test_emit_never_blocks_and_never_touches_the_disk(settings: Settings) -> None:
    """emit is an append to memory: it returns while the journal is held by a stuck write
    (here: its lock, held by the test), writes nothing, and every record is accepted. (Its
    cost per record is measured by bench/predlog_emit.py, not asserted here.)"""
    # room for all 100,000 records (the byte bound itself: tests/serving/test_limits.py)
    settings.monitoring.pending_max_bytes = 512 * 2**20
    log = open_prediction_log(settings)  # not started: nothing drains
    records = [record(i) for i in range(20_000)]
    done = threading.Event()

    def emit_all() -> None:
        for _ in range(5):
            for r in records:
                log.emit(r)
        done.set()

    with log.journal._lock:  # a journal write stuck on a slow disk
        worker = threading.Thread(target=emit_all, daemon=True)
        worker.start()
        assert done.wait(60), "emit blocked on the journal"
    assert log.backlog()["pending_records"] == 100_000 and log.dropped == 0
    assert not list(log.journal.directory.glob("journal-*.log"))


def test_clean_shutdown_loses_nothing(settings: Settings) -> None:
    log = open_prediction_log(settings).start()
    batch = PredictionRecord("batch", "churn", "churn@champion", 1,
                             {"tenure": [1, 2, 3], "plan": ["a", "b", "c"]},
                             np.array([0, 1, 1]), 0.01, datetime.now(UTC))
    log.write([batch])
    for i in range(5_000):
        log.emit(record(i))
    log.close()
    table = open_prediction_log(settings).scan("churn")
    assert table.num_rows == 5_003
    assert sorted(set(table["request_id"].to_pylist())) == sorted(
        {"batch", *(f"r{i}" for i in range(5_000))})
    rows = [r for r in table.to_pylist() if r["request_id"] == "batch"]
    assert [(r["row"], r["in.plan"], r["prediction"]) for r in rows] == [
        (0, "a", 0), (1, "b", 1), (2, "c", 1)]


@pytest.mark.slow
def test_sigkill_under_load_keeps_every_record_older_than_one_flush_interval(
        settings: Settings) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "tests.monitoring.log_writer",
                             str(settings.home)], stdout=subprocess.PIPE, text=True, env=env,
                            cwd=ROOT)
    assert proc.stdout is not None
    marks: list[tuple[int, float]] = []
    deadline = time.time() + 60
    # Kill mid-stream, after the writer has run under load for a while (slow machines too).
    while time.time() < deadline and (not marks or marks[-1][1] - marks[0][1] < 1.5
                                      or marks[-1][0] < 5_000):
        line = proc.stdout.readline()
        if line:
            seq, at = line.split()
            marks.append((int(seq), float(at)))
    os.kill(proc.pid, signal.SIGKILL)
    killed_at = time.time()
    proc.wait(10)
    proc.stdout.close()
    interval = settings.monitoring.flush_interval_s
    safe = max(seq for seq, at in marks if at <= killed_at - interval)
    assert safe >= 1_000, f"the writer accepted only {safe} records before the kill"
    log = open_prediction_log(settings)
    log.start()  # recovery: journal left by the killed process -> segments
    log.close()
    ids = {int(r) for r in log.scan("churn", columns=["request_id"])["request_id"].to_pylist()}
    missing = set(range(1, safe + 1)) - ids
    assert not missing, f"{len(missing)} records lost, first {min(missing)} (safe: {safe})"


def test_redaction_happens_before_anything_reaches_the_disk(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", monitoring={
        "redaction": {"churn": {"email": "drop", "phone": "hash", "name": "mask"}}})
    log = open_prediction_log(settings)
    log.emit(record(1, email="ann@example.com", phone="+3312345", name="Ann"))
    log.emit(record(2, email="bob@example.com", phone="+3312345", name="Bob"))
    log.flush()
    journal = b"".join(p.read_bytes() for p in (settings.home / "monitoring").rglob("*.log"))
    assert b"example.com" not in journal and b"+3312345" not in journal and b"Ann" not in journal
    log.compact()
    rows = log.scan("churn").to_pylist()
    assert "in.email" not in rows[0]
    assert rows[0]["in.phone"] == rows[1]["in.phone"] != "+3312345"
    assert rows[0]["in.name"] == "***"


def test_sealed_log_when_a_master_key_is_set(tmp_path: Path) -> None:
    key = base64.b64encode(os.urandom(32)).decode()
    settings = Settings(home=tmp_path / "home", security={"master_key": key})
    log = open_prediction_log(settings)
    log.emit(record(1, secret_field="topsecret-value"))
    log.flush()
    log.compact()
    stored = b"".join(p.read_bytes() for p in (settings.home / "predictions").rglob("*")
                      if p.is_file())
    assert stored and b"topsecret-value" not in stored and b"PAR1" not in stored
    assert log.scan("churn").to_pylist()[0]["in.secret_field"] == "topsecret-value"


class FlakyStore(LocalSegments):
    down = True

    def put(self, name: str, data: bytes) -> None:
        if self.down:
            raise UnavailableError("store down")
        super().put(name, data)


def test_a_down_store_only_grows_the_journal(tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    store = FlakyStore(tmp_path / "segments")
    log = PredictionLog(tmp_path / "journal", store, flush_interval_s=0.05,
                        segment_interval_s=0.05, metrics_registry=registry).start()
    for i in range(2_000):
        log.emit(record(i))
    deadline = time.monotonic() + 30  # a hang guard: the failing store must be noticed
    while log.store_failures < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert log.store_failures >= 2 and log.backlog()["journal_bytes"] > 0
    text = generate_latest(registry)
    assert b"mlharbor_prediction_log_backlog_bytes" in text
    assert b"mlharbor_prediction_log_store_failures" in text
    store.down = False
    log.close()
    assert log.scan("churn").num_rows == 2_000
    assert log.backlog()["journal_bytes"] == 0 and log.dropped == 0


def test_time_range_queries_and_retention(settings: Settings) -> None:
    log = open_prediction_log(settings)
    now = datetime.now(UTC)
    for days in (40, 10, 0):
        for i in range(10):
            log.emit(record(i, at=now - timedelta(days=days, minutes=i)))
        log.flush()
        log.compact()
    week = log.scan("churn", start=now - timedelta(days=11), end=now - timedelta(days=9))
    assert week.num_rows == 10
    assert log.apply_retention(timedelta(days=30), now=now) == 1
    assert log.scan("churn").num_rows == 20


@pytest.mark.s3
def test_segments_on_s3(tmp_path: Path, s3_bucket: str, moto_server: str) -> None:
    settings = Settings(home=tmp_path / "home", artifact_uri=f"s3://{s3_bucket}/artifacts",
                        s3_endpoint_url=moto_server)
    log = open_prediction_log(settings).start()
    for i in range(100):
        log.emit(record(i))
    log.close()
    import boto3

    keys = boto3.client("s3", endpoint_url=moto_server).list_objects_v2(
        Bucket=s3_bucket, Prefix="artifacts/predictions/")["KeyCount"]
    assert keys == 1
    assert open_prediction_log(settings).scan("churn").num_rows == 100


def test_serving_dispatcher_writes_through_the_log(settings: Settings) -> None:
    """The log is a serving ``PredictionSink``: serving's own dispatcher can drain into it."""
    from mlharbor.serving.sink import SinkDispatcher

    log = open_prediction_log(settings).start()
    dispatcher = SinkDispatcher(log, batch=100)
    dispatcher.start()
    for i in range(1_000):
        dispatcher.offer(record(i))
    dispatcher.stop()
    log.close()
    assert log.scan("churn", columns=["request_id"]).num_rows == 1_000


def test_a_failing_sink_counts_what_the_dispatcher_loses() -> None:
    """Serving's dispatcher: records a sink refuses are counted as dropped (and reported to
    its metric), never lost silently."""
    from mlharbor.serving.sink import MemorySink, SinkDispatcher

    class Broken(MemorySink):
        def write(self, records: object) -> None:
            raise OSError("the sink's disk is full")

    reported: list[int] = []
    dispatcher = SinkDispatcher(Broken(), batch=40, on_drop=reported.append)
    for i in range(100):
        dispatcher.offer(record(i))
    dispatcher.flush()
    assert dispatcher.dropped == 100 and sum(reported) == 100


def test_an_integer_wider_than_64_bits_loses_no_record(settings: Settings) -> None:
    log = open_prediction_log(settings)
    log.emit(record(1))
    log.emit(record(2, tenure=2**70))  # parsed JSON may hold any integer
    log.emit(record(3))
    log.close()
    ids = sorted(log.scan("churn", columns=["request_id"])["request_id"].to_pylist())
    assert ids == ["r1", "r2", "r3"]


def test_two_logs_on_one_home_never_share_a_journal(settings: Settings) -> None:
    first = open_prediction_log(settings)
    second = open_prediction_log(settings)
    assert first.journal.directory != second.journal.directory
    first.emit(record(1))
    second.emit(record(2))
    first.close()
    second.close()
    third = open_prediction_log(settings)  # slots are free again after close
    assert third.journal.directory == first.journal.directory
    third.close()
    ids = sorted(third.scan("churn", columns=["request_id"])["request_id"].to_pylist())
    assert ids == ["r1", "r2"]
