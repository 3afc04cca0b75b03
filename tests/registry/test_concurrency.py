"""Concurrent registrations and crashes, with real processes on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from mlharbor.core.records import VersionStatus
from mlharbor.registry.schema import versions
from mlharbor.registry.service import Registry
from mlharbor.settings import Settings

WORKER = r"""
import json, sys, time
from pathlib import Path
from mlharbor.settings import Settings
from mlharbor.registry.service import Registry

home, url, bundle, start_at = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
registry = Registry.from_settings(Settings(home=home, database_url=url))
while time.time() < start_at:
    time.sleep(0.001)
mv = registry.register_version("churn", Path(bundle))
print(json.dumps({"version": mv.version, "status": mv.status.value}))
"""


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("MLHARBOR_")}


@pytest.mark.slow
def test_eight_processes_get_versions_one_to_eight(db_settings: Settings, tmp_path: Path
                                                  ) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "model.bin").write_bytes(os.urandom(64 * 1024))
    # Migrate once first so the race is about version numbers; a second test below races
    # the migrations themselves.
    Registry.from_settings(db_settings).close()
    start_at = time.time() + 2.5
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(db_settings.home), db_settings.database_url_value,
             str(bundle), str(start_at)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
        )
        for _ in range(8)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert sorted(r["version"] for r in results) == list(range(1, 9))
    assert {r["status"] for r in results} == {"ready"}
    registry = Registry.from_settings(db_settings)
    assert [v.version for v in registry.list_versions("churn").items] == list(range(8, 0, -1))
    audit_actions = [e.action for e in registry.store.iter_audit()]
    assert audit_actions.count("version.register") == 8
    registry.close()


@pytest.mark.slow
def test_fresh_database_opened_by_many_processes_at_once(db_settings: Settings,
                                                         tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "model.bin").write_bytes(b"x")
    start_at = time.time() + 2.5
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(db_settings.home), db_settings.database_url_value,
             str(bundle), str(start_at)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
        )
        for _ in range(4)
    ]
    versions = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        versions.append(json.loads(out.strip().splitlines()[-1])["version"])
    assert sorted(versions) == [1, 2, 3, 4]


KILLED_WORKER = r"""
import sys
from pathlib import Path
from mlharbor.settings import Settings
from mlharbor.registry.service import Registry

home, url, bundle = sys.argv[1], sys.argv[2], sys.argv[3]
Registry.from_settings(Settings(home=home, database_url=url)).register_version(
    "churn", Path(bundle))
"""


@pytest.mark.slow
def test_sigkill_mid_registration_leaves_nothing_ready_and_blocks_nothing(
    db_settings: Settings, tmp_path: Path
) -> None:
    registry = Registry.from_settings(db_settings)
    big = tmp_path / "big"
    big.mkdir()
    # Enough files that uploading takes a while, so the kill lands mid-upload.
    for i in range(300):
        (big / f"part-{i:03d}.bin").write_bytes(os.urandom(256 * 1024))
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_WORKER, str(db_settings.home),
         db_settings.database_url_value, str(big)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env(),
    )
    deadline = time.monotonic() + 60
    seen_registering = False
    while time.monotonic() < deadline and proc.poll() is None:
        with registry.store.db.read() as conn:
            row = conn.execute(select(versions.c.status)).first()
        if row is not None and row.status == VersionStatus.REGISTERING.value:
            seen_registering = True
            time.sleep(0.05)  # let a few files upload first
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait(30)
    assert seen_registering, "the registration finished before it could be killed"
    assert proc.returncode == -signal.SIGKILL

    # The killed version is not ready, has no files and nothing resolves to it.
    killed = registry.get_version("churn:1")
    assert killed.status is VersionStatus.REGISTERING
    assert killed.files == ()
    # The next registration is not blocked and gets the next number promptly.
    small = tmp_path / "small"
    small.mkdir()
    (small / "model.bin").write_bytes(b"ok")
    # "Not blocked": it finishes while the killed registration's row stays as it was (a hang
    # guard with a generous bound, not a speed check).
    done: list[Any] = []
    worker = threading.Thread(target=lambda: done.append(
        registry.register_version("churn", small)), daemon=True)
    worker.start()
    worker.join(120)
    assert done, "the next registration is blocked behind the killed one"
    nxt = done[0]
    assert (nxt.version, nxt.status) == (2, VersionStatus.READY)
    assert registry.get_version("churn").version == 2
    # The sweeper marks the abandoned registration as failed, with a reason.
    from datetime import timedelta

    assert registry.sweep_stale_registrations(older_than=timedelta(0)) == ["churn:1"]
    swept = registry.get_version("churn:1")
    assert swept.status is VersionStatus.FAILED and "interrupted" in (swept.status_reason or "")
    registry.close()
