"""Faults of the prediction log, each ending with the same account: every acknowledged record
is either stored (readable through ``scan``) or counted as dropped (the metric), exactly.

* a journal write that raises: a full disk (a real ``EFBIG`` from ``RLIMIT_FSIZE``, after a
  partial write) and a KMS error (moto's KMS, the key's alias gone);
* a torn (half-written) frame in the middle of a journal file, binary and JSON, compacted in
  this process and in the compactor process;
* ``mlharbor serve`` started while the segment store is down (a local path that cannot be
  written; S3 on a stopped moto server) with an old journal left over.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from mlharbor.core.records import PredictionRecord
from mlharbor.monitoring.journal import HEADER_SIZE
from mlharbor.monitoring.predlog import PredictionLog
from mlharbor.monitoring.segments import LocalSegments, Sealer, open_segments
from mlharbor.serving.model import Outputs
from mlharbor.settings import Settings
from tests.support import VENV_BIN, cli_env, free_port, wait_for_port

FEATURES = ("a", "b", "c")


def record(i: int, *, binary: bool = False) -> PredictionRecord:
    """A record as serving makes it: with its input matrix (a binary frame) or without (a
    JSON entry). Ids are the same width, so batches of records are the same size."""
    rows = [{"a": i % 7 * 1.0, "b": 0.5, "c": -1.0}]
    matrix = np.array([[r[k] for k in FEATURES] for r in rows]) if binary else None
    return PredictionRecord(f"r{i:05d}", "churn", "churn@champion", 1, rows,
                            Outputs(np.array([i % 2]), np.array([[0.25, 0.75]])), 0.001,
                            datetime.now(UTC), matrix=matrix,
                            columns=FEATURES if binary else None)


def stored_ids(log: PredictionLog) -> list[str]:
    table = log.scan("churn", columns=["request_id"])
    if "request_id" not in table.column_names:  # nothing stored yet
        return []
    return sorted(table["request_id"].to_pylist())


def dropped_metric(registry: CollectorRegistry) -> dict[str, float]:
    out = {}
    for line in generate_latest(registry).decode().splitlines():
        if line.startswith("mlharbor_prediction_log_dropped_records{"):
            labels, value = line.rsplit(" ", 1)
            out[labels.split('reason="')[1].split('"')[0]] = float(value)
    return out


def assert_accounted(acknowledged: range, stored: list[str], dropped: set[str],
                     log: PredictionLog, registry: CollectorRegistry) -> None:
    """Every acknowledged record stored once or counted as dropped; the counts exact."""
    assert len(stored) == len(set(stored)), "a record was stored twice"
    assert set(stored) <= {f"r{i:05d}" for i in acknowledged}
    lost = {f"r{i:05d}" for i in acknowledged} - set(stored)
    assert lost == dropped
    assert len(lost) == log.dropped == sum(dropped_metric(registry).values())


# -- a journal write that raises -------------------------------------------------------------

@contextlib.contextmanager
def disk_full_past(limit: int) -> Iterator[None]:
    """Writes past ``limit`` bytes of any file fail with EFBIG, as on a full disk (the write
    that crosses it is partial). This process only; restored on exit."""
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


def test_a_full_disk_keeps_records_for_the_next_flush_then_counts_the_overflow(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    metrics = CollectorRegistry()
    log = PredictionLog(tmp_path / "journal", LocalSegments(tmp_path / "segments"),
                        metrics_registry=metrics)
    batches = [range(0, 100), range(100, 200), range(200, 300), range(300, 350)]
    for i in batches[0]:
        log.emit(record(i))
    assert log.flush() == 100
    (active,) = (tmp_path / "journal").glob("journal-*.log")
    size = active.stat().st_size
    with disk_full_past(size + 64):  # the next frame's header fits, its payload does not
        for i in batches[1]:
            log.emit(record(i))
        assert log.flush() == 0
        assert active.stat().st_size == size  # the partial write was cut off again
        assert log.unwritten_records == 100 and log.dropped == 0
        batch_bytes = sum(b.size for b in log._unwritten)
        for i in batches[2]:
            log.emit(record(i))
        assert log.flush() == 0
        assert log.unwritten_records == 200 and log.dropped == 0
        # Memory for unwritten records is bounded: room for two batches, not a third.
        log.max_unwritten_bytes = 2 * batch_bytes + batch_bytes // 4  # not half a batch
        for i in batches[3]:
            log.emit(record(i))
        assert log.flush() == 0
        assert log.unwritten_records == 200 and log.drops["write_failed"] == 50
    assert "EFBIG" in caplog.text or "File too large" in caplog.text
    assert "50 record(s) dropped (write_failed)" in caplog.text
    assert log.flush() == 200  # the disk has room again: the kept records go first
    log.compact()
    stored = stored_ids(log)
    assert stored == [f"r{i:05d}" for i in range(300)]
    assert dropped_metric(metrics)["write_failed"] == 50
    assert_accounted(range(350), stored, {f"r{i:05d}" for i in batches[3]}, log, metrics)
    log.close()


def test_records_the_journal_still_refuses_at_shutdown_are_counted(tmp_path: Path) -> None:
    metrics = CollectorRegistry()
    log = PredictionLog(tmp_path / "journal", LocalSegments(tmp_path / "segments"),
                        metrics_registry=metrics)
    for i in range(10):
        log.emit(record(i))
    assert log.flush() == 10
    (active,) = (tmp_path / "journal").glob("journal-*.log")
    for i in range(10, 30):
        log.emit(record(i))
    with disk_full_past(active.stat().st_size + 64):
        log.close()  # the last flush fails: this process cannot keep them any longer
    assert log.drops == {**dict.fromkeys(log.drops, 0), "write_failed": 20}
    recovered = PredictionLog(tmp_path / "journal", LocalSegments(tmp_path / "segments"))
    recovered.compact()  # whatever the shutdown could not compact, the next start does
    assert_accounted(range(30), stored_ids(recovered), {f"r{i:05d}" for i in range(10, 30)},
                     log, metrics)


@pytest.fixture
def kms_alias(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, str, str]:
    """(kms client, alias, key id) of a fresh key on moto's KMS, addressed by its alias."""
    import boto3

    for var, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                       ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(var, value)
    kms = boto3.client("kms", endpoint_url=moto_server, region_name="us-east-1")
    key_id = kms.create_key(Description="mlharbor log")["KeyMetadata"]["KeyId"]
    alias = f"alias/mlharbor-log-{uuid.uuid4().hex[:8]}"
    kms.create_alias(AliasName=alias, TargetKeyId=key_id)
    return kms, alias, key_id


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.s3
def test_a_kms_error_keeps_records_for_the_next_flush(
        tmp_path: Path, moto_server: str, kms_alias: tuple[Any, str, str],
        caplog: pytest.LogCaptureFixture) -> None:
    from mlharbor.security.envelope import KmsMasterKey

    kms, alias, key_id = kms_alias
    clock = Clock()
    sealer = Sealer(KmsMasterKey.connect(alias, endpoint_url=moto_server, region="us-east-1"),
                    max_age_s=300, clock=clock)
    metrics = CollectorRegistry()
    log = PredictionLog(tmp_path / "journal", LocalSegments(tmp_path / "segments"),
                        sealer=sealer, metrics_registry=metrics)
    for i in range(40):
        log.emit(record(i, binary=i % 2 == 0))
    assert log.flush() == 40
    kms.delete_alias(AliasName=alias)  # KMS now answers NotFoundException
    clock.now += 301  # the cached data key expired: the next write needs KMS
    for i in range(40, 90):
        log.emit(record(i, binary=i % 2 == 0))
    assert log.flush() == 0
    assert log.unwritten_records == 50 and log.dropped == 0
    assert "NotFoundException" in caplog.text and "kept in memory" in caplog.text
    kms.create_alias(AliasName=alias, TargetKeyId=key_id)
    assert log.flush() == 50
    log.close()
    stored = stored_ids(log)
    assert_accounted(range(90), stored, set(), log, metrics)
    assert len(stored) == 90


# -- a torn record in the middle of a journal file --------------------------------------------

def frames_of(data: bytes) -> list[bytes]:
    """The frames (header and payload) of a journal file, in order."""
    out = []
    while data:
        size = int.from_bytes(data[4:8], "big")
        out.append(data[:HEADER_SIZE + size])
        data = data[HEADER_SIZE + size:]
    return out


@pytest.mark.parametrize("compaction", ["thread", "process"])
@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_a_torn_frame_mid_file_is_skipped_and_counted_and_later_files_compact(
        tmp_path: Path, compaction: str, binary: bool,
        caplog: pytest.LogCaptureFixture) -> None:
    from mlharbor.monitoring.service import open_prediction_log

    settings = Settings(home=tmp_path / "home", monitoring={"compaction": compaction})
    metrics = CollectorRegistry()
    log = open_prediction_log(settings, metrics_registry=metrics)
    for batch in range(3):  # three frames in one journal file
        for i in range(batch * 10, batch * 10 + 10):
            log.emit(record(i, binary=binary))
        assert log.flush() == 10
    log.journal.rotate()
    (path,) = log.journal.sealed()
    first, middle, last = frames_of(path.read_bytes())
    # A crash (or a failing disk) tore the middle frame, and writing went on after it.
    path.write_bytes(first + middle[:len(middle) // 2] + last)
    log.journal.recount()  # its size changed behind the journal's back
    for i in range(30, 40):  # a later journal file
        log.emit(record(i, binary=binary))
    log.flush()
    log.compact()
    stored = stored_ids(log)
    assert stored == [f"r{i:05d}" for i in (*range(10), *range(20, 40))]
    assert log.drops["torn"] == 10 and dropped_metric(metrics)["torn"] == 10
    assert "10 record(s) dropped (torn)" in caplog.text
    assert log.journal.sealed() == [] and log.backlog()["journal_bytes"] == 0
    assert_accounted(range(40), stored, {f"r{i:05d}" for i in range(10, 20)}, log, metrics)
    log.close()


def test_a_damaged_old_format_journal_does_not_stop_later_files(tmp_path: Path) -> None:
    """Journals of older versions (``length | payload`` frames, no checksum): the damaged
    frame and what follows it in that file are skipped (counted as damaged stretches, their
    record count unknown); the entries before it and every later file are stored."""
    import orjson

    from mlharbor.monitoring.logrows import record_entry

    def old_frame(ids: range) -> bytes:
        payload = b"\n".join(orjson.dumps(record_entry(record(i), None),
                                          option=orjson.OPT_SERIALIZE_NUMPY) for i in ids)
        return len(payload).to_bytes(4, "big") + payload

    journal = tmp_path / "journal"
    journal.mkdir()
    middle = old_frame(range(10, 20))
    (journal / "journal-0000000001.log").write_bytes(
        old_frame(range(10)) + middle[:len(middle) // 2] + old_frame(range(20, 30)))
    (journal / "journal-0000000002.log").write_bytes(old_frame(range(30, 40)))
    log = PredictionLog(journal, LocalSegments(tmp_path / "segments"))
    assert log.compact() == 2
    ids = set(stored_ids(log))
    assert {f"r{i:05d}" for i in (*range(10), *range(30, 40))} <= ids
    assert log.torn_frames >= 1 and not list(journal.glob("journal-*.log"))


# -- mlharbor serve while the store is down -------------------------------------------------

def _register_model(settings: Settings) -> str:
    """churn v1 @champion (a small logistic regression); returns an admin API key."""
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    from mlharbor.bootstrap import open_identities, open_registry
    from mlharbor.registry.bundles import register_model

    rng = np.random.default_rng(0)
    x = pd.DataFrame(rng.normal(size=(200, 3)), columns=list(FEATURES))
    y = (x.a + x.b > 0).astype(int)
    registry = open_registry(settings)
    try:
        register_model(registry, "churn", LogisticRegression().fit(x, y), settings=settings,
                       sample_input=x.head(10))
        registry.set_alias("churn", "champion", 1)
        return open_identities(registry).init_admin("ops", actor="test")[1]
    finally:
        registry.close()


def _leave_journal(settings: Settings, ids: range) -> None:
    """A journal an earlier server left behind in slot 0 (journaled, never compacted)."""
    slot = settings.home / "monitoring" / "journal" / "slot-0"
    earlier = PredictionLog(slot, LocalSegments(settings.home / "unused"))
    for i in ids:
        earlier.emit(record(i))
    assert earlier.flush() == len(ids)


class MotoProcess:
    """moto's server on a fixed loopback port, stopped and started again by the test (its
    buckets live in memory: a restarted one needs its bucket made again)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, bucket: str) -> None:
        import boto3

        exe = shutil.which("moto_server", path=str(VENV_BIN)) or shutil.which("moto_server")
        if exe is None:
            pytest.skip("moto_server is not installed (pip install 'moto[server]')")
        self.proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port, proc=self.proc)
        boto3.client("s3", endpoint_url=self.url, region_name="us-east-1").create_bucket(
            Bucket=bucket)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 90.0) -> None:
    """A hang guard, not a speed bound: the condition must come true eventually."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f}s")
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.parametrize("store", ["unwritable-folder", "s3-down"])
def test_serve_starts_with_the_store_down_and_the_log_catches_up(
        tmp_path: Path, store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(home=tmp_path / "home")
    key = _register_model(settings)
    env = {**os.environ, **cli_env(settings),
           "MLHARBOR_SECURITY__RATE_LIMIT_PER_MINUTE": "0",
           "MLHARBOR_MONITORING__SEGMENT_INTERVAL_S": "0.5",
           "MLHARBOR_MONITORING__FLUSH_INTERVAL_S": "0.1"}
    moto = MotoProcess()
    bucket = f"mlharbor-{uuid.uuid4().hex[:12]}"
    if store == "s3-down":
        for var, value in (("AWS_ACCESS_KEY_ID", "testing"),
                           ("AWS_SECRET_ACCESS_KEY", "testing"),
                           ("AWS_DEFAULT_REGION", "us-east-1")):
            monkeypatch.setenv(var, value)
            env[var] = value
        uri = f"s3://{bucket}/predictions"
        env.update(MLHARBOR_S3_ENDPOINT_URL=moto.url)
        reader_settings = Settings(home=tmp_path / "reader", s3_endpoint_url=moto.url)
    else:
        uri = str(tmp_path / "store")
        (tmp_path / "store").write_text("a file where the store's folder should be")
        reader_settings = Settings(home=tmp_path / "reader")
    env["MLHARBOR_MONITORING__LOG_URI"] = uri
    _leave_journal(settings, range(0, 25))  # acknowledged by the server that died

    port = free_port()
    proc = subprocess.Popen([str(VENV_BIN / "mlharbor"), "serve", "churn@champion",
                             "--port", str(port)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {key}"}
    try:
        def ready() -> bool:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
            return False

        _wait_for(ready, "mlharbor serve became ready with the store down")
        row = [{"a": 0.3, "b": -0.2, "c": 1.0}]
        for i in range(25, 60):  # served and acknowledged while the store is down
            answer = httpx.post(f"{url}/v1/endpoints/churn/predict", json=row,
                                headers={**headers, "x-request-id": f"r{i:05d}"}, timeout=30)
            assert answer.status_code == 200, answer.text
        _wait_for(lambda: _gauge(httpx.get(f"{url}/metrics", headers=headers).text,
                                 "mlharbor_prediction_log_store_failures") >= 1,
                  "the server noticed the store was down")

        # The store comes back: the log catches up without a restart.
        if store == "s3-down":
            moto.start(bucket)
        else:
            (tmp_path / "store").unlink()
        reader = PredictionLog(tmp_path / "reader-journal",
                               open_segments(uri, reader_settings))
        _wait_for(lambda: len(stored_ids(reader)) == 60, "the log caught up")
        metrics_text = httpx.get(f"{url}/metrics", headers=headers).text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        stored = stored_ids(reader)
        assert stored == [f"r{i:05d}" for i in range(60)]  # every one, once
        assert _gauge(metrics_text, "mlharbor_prediction_log_dropped_records") == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        moto.stop()


def _gauge(text: str, name: str) -> float:
    """The sum of a metric's samples (over its labels) in a Prometheus exposition."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and line[len(name)] in " {")
