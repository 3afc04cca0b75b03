"""Resource samples of serving processes (issue 14): each process writes its own under the
home, the control plane reads those serving an endpoint, old ones are stale, a stopped process
leaves none."""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path

import orjson

from mlharbor.core.clock import utcnow
from mlharbor.monitoring.traffic import ResourceReporter, endpoint_resources, resources_dir


def test_samples_are_written_read_per_endpoint_and_removed_on_stop(tmp_path: Path) -> None:
    sample = {"pid": os.getpid(), "cpu_seconds": 1.5, "resident_bytes": 3 << 20,
              "endpoints": ["churn", "fraud"], "models": [
                  {"model": "churn", "version": 2, "memory_bytes": 1 << 20}]}
    reporter = ResourceReporter(tmp_path, lambda: dict(sample), interval_s=0.05).start()
    try:
        assert reporter.path.parent == resources_dir(tmp_path)
        while not reporter.path.exists():  # the first sample is written at start
            time.sleep(0.01)
        body = endpoint_resources(tmp_path, "churn", utcnow())
        (mine,) = body["processes"]
        assert mine["pid"] == os.getpid() and mine["cpu_seconds"] == 1.5
        assert mine["models"] == sample["models"] and not mine["stale"]
        assert endpoint_resources(tmp_path, "other", utcnow())["processes"] == []
        # Three intervals later without a new sample, it is stale (a process that died).
        later = utcnow() + timedelta(seconds=10)
        assert endpoint_resources(tmp_path, "churn", later)["processes"][0]["stale"]
    finally:
        reporter.stop()
    assert not reporter.path.exists()
    assert endpoint_resources(tmp_path, "churn", utcnow())["processes"] == []


def test_unreadable_samples_are_skipped(tmp_path: Path) -> None:
    folder = resources_dir(tmp_path)
    folder.mkdir(parents=True)
    (folder / "torn.json").write_bytes(b'{"pid": 1, "endp')
    (folder / "old-format.json").write_bytes(orjson.dumps({"pid": 2}))
    assert endpoint_resources(tmp_path, "churn", utcnow())["processes"] == []
