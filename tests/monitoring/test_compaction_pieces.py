"""A journal file is compacted in pieces: the compactor child's memory stays bounded whatever
the file's size, a file is still all or nothing, and the child paces its work only while the
backlog is small."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest

from mlharbor.core.records import PredictionRecord
from mlharbor.monitoring.compactor import CompactorProcess, Pacer
from mlharbor.monitoring.predlog import PIECE_BYTES, PredictionLog
from mlharbor.monitoring.segments import LocalSegments
from mlharbor.monitoring.service import open_prediction_log
from mlharbor.serving.model import Outputs
from mlharbor.settings import Settings

# The child's working memory above its baseline (after its imports and a first small file),
# whatever the size of the file it compacts: a piece's frames, rows and Arrow table, and the
# Parquet writer's row group.
MEMORY_BOUND = 32 << 20
COLUMNS = tuple(f"f{j}" for j in range(20))
AT = datetime(2026, 12, 6, tzinfo=UTC)
BASE = np.random.default_rng(7).normal(size=(64, len(COLUMNS)))


def record(i: int, endpoint: str = "churn") -> PredictionRecord:
    """A 64-row request as serving logs it (the validated matrix, no inputs as received)."""
    matrix = BASE + i
    proba = np.full((64, 2), 0.5)
    return PredictionRecord(f"r{i}", endpoint, f"{endpoint}@champion", 1, None,
                            Outputs(np.arange(64) % 2, proba), 0.001,
                            AT + timedelta(microseconds=i), matrix=matrix, columns=COLUMNS)


def log_records(log: PredictionLog, start: int, count: int, per_flush: int = 250) -> None:
    """``count`` records through the real log, a flush (one frame) every ``per_flush``."""
    for i in range(start, start + count):
        log.emit(record(i))
        if (i - start + 1) % per_flush == 0:
            log.flush()
    log.flush()


def expected_sum(start: int, count: int) -> float:
    """The sum of column f0 over records ``start`` .. ``start + count - 1``."""
    ids = np.arange(start, start + count)
    return float(BASE[:, 0].sum() * count + 64 * ids.sum())


def _status(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def _journal_file_bytes(log: PredictionLog) -> int:
    return sum(p.stat().st_size for p in log.journal.directory.glob("journal-*.log"))


def test_the_child_compacts_a_large_file_in_bounded_memory(settings: Settings) -> None:
    clear_refs = Path("/proc/self/clear_refs")
    if not os.access(clear_refs, os.W_OK):
        pytest.skip("cannot reset a process's peak RSS here (/proc/<pid>/clear_refs)")
    log = open_prediction_log(settings)
    assert log.compactor is not None
    log_records(log, 0, 1)
    assert log.compact() == 1  # the child is up, its imports done
    child = log.compactor._proc
    assert child is not None
    count = 10_000  # ~106 MB of frames, in one journal file
    log_records(log, 1, count)
    assert _journal_file_bytes(log) > 100 << 20
    baseline = _status(child.pid, "VmRSS")
    Path(f"/proc/{child.pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
    assert log.compact() == 1
    peak = _status(child.pid, "VmHWM")
    print(f"child peak above baseline: {(peak - baseline) / 2**20:.1f} MiB")
    assert peak - baseline <= MEMORY_BOUND, (peak - baseline) / 2**20
    table = log.scan("churn", columns=["request_id", "in.f0"])
    assert table.num_rows == 64 * (count + 1)
    assert set(table["request_id"].to_pylist()) == {f"r{i}" for i in range(count + 1)}
    assert float(pc.sum(table["in.f0"]).as_py()) == pytest.approx(expected_sum(0, count + 1))
    assert len(log.segment_names("churn")) == 2  # one segment per journal file, as before
    # pyarrow would import pandas (~100 MB of RSS) for nothing: the child keeps it out.
    assert "/pandas/" not in Path(f"/proc/{child.pid}/maps").read_text()
    log.close()


def test_rows_are_the_same_in_pieces_and_whole(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path / "journal", LocalSegments(tmp_path / "seg"))
    count = 3 * PIECE_BYTES // (64 * 21 * 8) + 100  # three pieces and some
    log_records(log, 0, count, per_flush=100)
    # A second endpoint, and a record whose columns differ (a new one): not one schema.
    log.emit(record(count, endpoint="fraud"))
    odd = record(count + 1)
    log.emit(PredictionRecord(odd.request_id, odd.endpoint, odd.model_ref, 1, None,
                              odd.outputs, 0.001, odd.at, matrix=odd.matrix[:, :3],
                              columns=("f0", "f1", "extra")))
    log.flush()
    assert log.compact() == 2
    table = log.scan("churn", columns=["request_id", "in.f0", "in.extra"])
    assert table.num_rows == 64 * (count + 1)
    assert float(pc.sum(table["in.f0"]).as_py()) == pytest.approx(
        expected_sum(0, count) + float(odd.matrix[:, 0].sum()))
    assert table["in.extra"].null_count == 64 * count
    assert log.scan("fraud").num_rows == 64
    assert not list((tmp_path / "seg").rglob("*.tmp"))


def test_a_server_compacting_itself_paces_too_and_loses_nothing(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path / "journal", LocalSegments(tmp_path / "seg"))
    count = 2 * PIECE_BYTES // (64 * 21 * 8) + 10
    log_records(log, 0, count, per_flush=100)
    log.journal.rotate()
    log_records(log, count, 5)
    assert log.compact(pace=True) == 2
    assert log.scan("churn").num_rows == 64 * (count + 5)
    assert log.backlog()["journal_bytes"] == 0


def test_a_column_that_changes_type_midway_restarts_the_file_in_pieces(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    log = PredictionLog(tmp_path / "journal", LocalSegments(tmp_path / "seg"))
    count = 2 * PIECE_BYTES // (64 * 21 * 8) + 10
    log_records(log, 0, count, per_flush=100)  # no fallback: an all-null column so far
    late = record(count)
    log.emit(PredictionRecord(late.request_id, late.endpoint, late.model_ref, 1, None,
                              late.outputs, 0.001, late.at, fallback="churn:1",
                              matrix=late.matrix, columns=COLUMNS))
    log.flush()
    with caplog.at_level("INFO", logger="mlharbor.monitoring.predlog"):
        assert log.compact() == 1
    assert "compacting it again with the columns joined" in caplog.text
    assert "compacting it whole" not in caplog.text
    table = log.scan("churn", columns=["request_id", "fallback"])
    assert table.num_rows == 64 * (count + 1)
    assert table["fallback"].null_count == 64 * count
    assert set(table["fallback"].drop_null().to_pylist()) == {"churn:1"}


def test_columns_that_do_not_join_send_the_file_whole(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    log = PredictionLog(tmp_path / "journal", LocalSegments(tmp_path / "seg"))
    count = 2 * PIECE_BYTES // (64 * 21 * 8) + 10
    log_records(log, 0, count, per_flush=100)  # integer predictions
    late = record(count)
    log.emit(PredictionRecord(late.request_id, late.endpoint, late.model_ref, 1, None,
                              Outputs(np.array(["no", "yes"] * 32), None), 0.001, late.at,
                              matrix=late.matrix, columns=COLUMNS))
    log.flush()
    with caplog.at_level("INFO", logger="mlharbor.monitoring.predlog"):
        assert log.compact() == 1
    assert "compacting it whole" in caplog.text
    table = log.scan("churn", columns=["request_id", "prediction"])
    assert table.num_rows == 64 * (count + 1)
    assert {"no", "yes"} <= set(table["prediction"].to_pylist())


def test_a_file_that_fails_midway_leaves_no_segment_and_stays(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path / "journal", LocalSegments(tmp_path / "seg"))
    log_records(log, 0, 2 * PIECE_BYTES // (64 * 21 * 8) + 10, per_flush=100)
    log.journal.rotate()
    (sealed,) = log.journal.sealed()
    # The segment's folder cannot be made: publishing fails after every piece was written.
    (tmp_path / "seg").mkdir()
    (tmp_path / "seg" / "endpoint=churn").write_text("a file where the folder should be")
    with pytest.raises(OSError):
        log.compact_files([sealed])
    assert sealed.exists()
    assert [p.name for p in (tmp_path / "seg").iterdir()] == ["endpoint=churn"]
    (tmp_path / "seg" / "endpoint=churn").unlink()
    assert log.compact_files([sealed]) == 1 and not sealed.exists()
    assert log.scan("churn").num_rows == 64 * (2 * PIECE_BYTES // (64 * 21 * 8) + 10)


def test_drafts_a_crash_left_are_swept_once_old(tmp_path: Path) -> None:
    store = LocalSegments(tmp_path / "seg")
    (tmp_path / "seg").mkdir()
    old, fresh = tmp_path / "seg" / ".draft-old.tmp", tmp_path / "seg" / ".draft-new.tmp"
    old.write_bytes(b"PAR1")
    fresh.write_bytes(b"PAR1")  # a live compactor's, perhaps: kept
    os.utime(old, (0, 0))
    store.draft().discard()
    assert not old.exists() and fresh.exists()
    assert store.names() == []


def test_the_pacer_sleeps_in_proportion_to_cpu_only_while_the_backlog_is_small() -> None:
    backlog = [0]
    slept: list[float] = []
    pacer = Pacer(lambda: backlog[0], duty=0.25, below_bytes=1000, sleep=slept.append)
    assert pacer.delay(0.01, 999) == pytest.approx(0.03)
    assert pacer.delay(0.01, 1000) == 0.0  # a backlog: flat out, so it always drains
    assert pacer.delay(5.0, 10**12) == 0.0
    busy = sum(range(200_000))  # some CPU since the mark
    assert busy
    pacer()
    backlog[0] = 1000
    pacer()
    assert len(slept) == 1 and slept[0] > 0 and pacer.slept_s == slept[0]
    with pytest.raises(ValueError, match="duty"):
        Pacer(lambda: 0, duty=0)


@pytest.mark.parametrize(("below_bytes", "paces"), [(1 << 40, True), (1, False)])
def test_the_child_paces_only_below_the_backlog_threshold(
        settings: Settings, below_bytes: int, paces: bool) -> None:
    log = open_prediction_log(settings)
    log.compactor = CompactorProcess(settings, log.journal.directory, duty=0.5,
                                     pace_below_bytes=below_bytes)
    log_records(log, 0, 2 * PIECE_BYTES // (64 * 21 * 8) + 10, per_flush=100)
    assert log.compact(pace=True) == 1
    assert (log.compactor.paced_s > 0) is paces
    log_records(log, 10_000, 2 * PIECE_BYTES // (64 * 21 * 8) + 10, per_flush=100)
    before = log.compactor.paced_s
    assert log.compact() == 1  # an explicit compaction (shutdown) never paces
    assert log.compactor.paced_s == before
    log.close()
    assert log.scan("churn").num_rows == 2 * 64 * (2 * PIECE_BYTES // (64 * 21 * 8) + 10)
