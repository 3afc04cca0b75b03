"""The journal is compacted in a child process: rows arrive, secrets reach it only through its
pipe, a dead child is replaced by in-process compaction, and the child dies with its parent."""

from __future__ import annotations

import base64
import gc
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mlharbor.core.errors import CompactionFailed
from mlharbor.core.records import PredictionRecord
from mlharbor.monitoring.service import open_prediction_log
from mlharbor.settings import Settings
from tests.support import wait_until

ROOT = Path(__file__).resolve().parents[2]


def record(i: int) -> PredictionRecord:
    return PredictionRecord(f"r{i}", "churn", "churn@champion", 1,
                            {"tenure": i, "plan": "basic"}, [i % 2], 0.001, datetime.now(UTC))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purpose.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def _open_files(pid: int) -> list[str]:
    """What the process has open; a descriptor it closes while we list them is skipped."""
    files = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            files.append(str(fd.readlink()))
        except FileNotFoundError:
            continue
    return files


def test_compaction_runs_in_a_child_process(settings: Settings) -> None:
    log = open_prediction_log(settings)
    assert log.compactor is not None
    for i in range(300):
        log.emit(record(i))
    log.flush()
    assert log.compact() == 1
    child = log.compactor._proc
    assert child is not None and child.pid != os.getpid() and child.poll() is None
    # It does not hold the journal slot's lock: a server restarted after a crash claims the
    # same slot at once and recovers it.
    fds = _open_files(child.pid)
    assert not any(f.endswith("/.lock") for f in fds), fds
    assert log.backlog()["journal_bytes"] == 0  # the parent saw the child's work
    assert log.scan("churn").num_rows == 300
    log.close()
    assert child.poll() is not None  # closing the log ends the child
    assert child.stdin is not None and child.stdout is not None
    assert child.stdin.closed and child.stdout.closed  # and no descriptor stays open


def test_the_child_starts_once_records_are_journaled_not_before(settings: Settings) -> None:
    # No compaction round but the first (at start, nothing to compact) within the test.
    settings.monitoring.segment_interval_s = 3600.0
    log = open_prediction_log(settings)
    assert log.compactor is not None
    log.start()
    try:
        time.sleep(log.flush_interval_s)  # rounds of the flusher with nothing to journal
        assert log.compactor._proc is None  # a server nobody calls runs no child
        log.emit(record(0))
        # Started by the flusher (every flush_interval / 5), not by a compaction round: no
        # file needs compacting yet.
        wait_until(lambda: log.compactor is not None and log.compactor._proc is not None,
                   30, "the compactor child after the first journaled record")
        child = log.compactor._proc
        assert child is not None and child.poll() is None
        # And it loads pyarrow then, not in the first compaction request (none was sent).
        maps = Path(f"/proc/{child.pid}/maps")
        wait_until(lambda: "libarrow" in maps.read_text(), 60, "pyarrow in the idle child")
    finally:
        log.close()
    assert child.poll() is not None


def test_a_dead_child_is_replaced_and_a_broken_one_falls_back_to_this_process(
        settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    log = open_prediction_log(settings)
    compactor = log.compactor
    assert compactor is not None
    log.emit(record(0))
    log.flush()
    log.compact()
    child = compactor._proc
    assert child is not None
    child.kill()
    child.wait()
    log.emit(record(1))
    log.flush()
    assert log.compact() == 1  # a new child did it
    assert compactor._proc is not None and compactor._proc.pid != child.pid
    assert child.stdout is not None and child.stdout.closed  # the dead one's pipes: closed
    compactor._proc.kill()
    compactor._proc.wait()
    compactor._config = b"not the settings"  # the next child dies on start
    for i in range(2, 50):
        log.emit(record(i))
    log.flush()
    assert log.compact() == 1
    assert "Compacting in the serving process" in caplog.text
    log.close()
    assert log.scan("churn").num_rows == 50
    assert log.backlog()["journal_bytes"] == 0


def test_sealed_segments_with_the_key_passed_through_the_pipe(tmp_path: Path) -> None:
    key = base64.b64encode(os.urandom(32)).decode()
    settings = Settings(home=tmp_path / "home", security={"master_key": key})
    log = open_prediction_log(settings)
    log.emit(record(1))
    log.flush()
    log.compact()
    assert log.compactor is not None and log.compactor._proc is not None
    names = log.segment_names("churn")
    assert names and all(n.endswith(".sealed") for n in names)
    environ = Path(f"/proc/{log.compactor._proc.pid}/environ").read_bytes()
    cmdline = Path(f"/proc/{log.compactor._proc.pid}/cmdline").read_bytes()
    assert key.encode() not in environ and key.encode() not in cmdline
    assert log.scan("churn")["request_id"].to_pylist() == ["r1"]
    log.close()


def test_a_store_failure_in_the_child_is_reported_and_rows_stay(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", monitoring={"log_uri": str(tmp_path / "store")})
    log = open_prediction_log(settings)
    (tmp_path / "store").write_text("a file where the folder should be")
    log.emit(record(1))
    log.flush()
    with pytest.raises(CompactionFailed):
        log.compact()
    assert log.backlog()["journal_bytes"] > 0  # kept for the next attempt
    (tmp_path / "store").unlink()
    assert log.compact() == 1
    log.close()
    assert log.scan("churn").num_rows == 1


def test_the_child_exits_when_its_parent_is_killed(tmp_path: Path) -> None:
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from tests.monitoring.test_compactor import record\n"
        "from mlharbor.monitoring.service import open_prediction_log\n"
        "from mlharbor.settings import Settings\n"
        "log = open_prediction_log(Settings(home=Path(sys.argv[1])))\n"
        "log.emit(record(1)); log.flush(); log.compact()\n"
        "print(log.compactor._proc.pid, flush=True)\n"
        "import time; time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "home")],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert _alive(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child)
    finally:
        parent.kill()


def test_a_journal_file_compacted_by_another_process_meanwhile_is_skipped(
        settings: Settings) -> None:
    log = open_prediction_log(settings)
    log.emit(record(1))
    log.flush()
    log.journal.rotate()
    (sealed,) = log.journal.sealed()
    twin = open_prediction_log(settings.model_copy(update={"monitoring": settings.monitoring
                                                           .model_copy(update={
                                                               "compaction": "thread"})}))
    assert twin.compact_files([sealed]) == 1  # an orphaned compactor got there first
    assert log.compact_files([sealed]) == 0 and not sealed.exists()
    log.journal.recount()
    assert log.backlog()["journal_bytes"] == 0
    assert log.scan("churn").num_rows == 1
    twin.close()
    log.close()


def test_a_log_dropped_without_closing_lets_its_child_go(settings: Settings) -> None:
    log = open_prediction_log(settings)
    assert log.compactor is not None
    log.emit(record(0))
    log.flush()
    log.compact()
    child = log.compactor._proc
    assert child is not None and child.poll() is None
    del log
    gc.collect()
    # Its pipes closed (no descriptors left for the collector to warn about at exit), the
    # child sees its stdin end and exits.
    assert child.stdin is not None and child.stdout is not None
    assert child.stdin.closed and child.stdout.closed
    assert child.wait(timeout=60) == 0

