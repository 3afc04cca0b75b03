"""Shared fixtures: settings on a temporary home, real PostgreSQL, moto's S3, live servers.

Tests that need something this machine lacks skip with a visible reason; under
``MLHARBOR_REQUIRE_ALL=1`` (set by .ci/run) every such skip becomes a failure, so CI never
passes by skipping.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mlharbor.settings import Settings
from tests.support import LiveServer, free_port, wait_for_port

#: How `-n 2 --dist loadgroup` groups and orders the work (tests/scheduling.py).
pytest_plugins = ["tests.scheduling"]

REQUIRE_ALL = os.environ.get("MLHARBOR_REQUIRE_ALL") == "1"
PG_HOST = os.environ.get("MLHARBOR_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("MLHARBOR_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("MLHARBOR_TEST_PG_USER", "postgres")
VENV_BIN = Path(sys.executable).parent


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if REQUIRE_ALL and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped under MLHARBOR_REQUIRE_ALL=1 (CI may not skip): {reason}"


# -- settings ---------------------------------------------------------------------------------

@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Embedded default (SQLite + local folder) in a temporary home."""
    return Settings(home=tmp_path / "home")


# -- PostgreSQL -------------------------------------------------------------------------------

def _pg_admin_connect(dbname: str = "postgres") -> Any:
    import psycopg

    return psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=dbname,
                           autocommit=True, connect_timeout=3)


def pg_available() -> str | None:
    """None when PostgreSQL answers, else the reason it does not."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed"
    try:
        with _pg_admin_connect():
            return None
    except Exception as exc:
        return f"PostgreSQL at {PG_HOST}:{PG_PORT} is unreachable: {type(exc).__name__}"


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    reason = pg_available()
    if reason:
        pytest.skip(reason)
    name = f"mlharbor_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with _pg_admin_connect() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        with _pg_admin_connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def db_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """Settings on SQLite, then on PostgreSQL: every store test runs on both."""
    if request.param == "sqlite":
        return Settings(home=tmp_path / "home")
    url = request.getfixturevalue("pg_url")
    return Settings(home=tmp_path / "home", database_url=url)


# -- S3 (moto) --------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """moto's server on a free loopback port; yields its endpoint URL."""
    exe = shutil.which("moto_server", path=str(VENV_BIN)) or shutil.which("moto_server")
    if exe is None:
        pytest.skip("moto_server is not installed (pip install 'moto[server]')")
    port = free_port()
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc=proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)


@pytest.fixture
def s3_bucket(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket on moto's server; AWS credentials point at dummies."""
    import boto3

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    bucket = f"mlharbor-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1").create_bucket(
        Bucket=bucket)
    return bucket


# -- Dask --------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def dask_scheduler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real two-worker Dask cluster (scheduler and workers as processes); yields its address.

    One per session (per xdist worker): the modules that use it share the ``dask`` xdist
    group, so they run on one worker, one after the other, and each start of a cluster costs
    three Python processes importing Dask. Tests that kill workers start their own cluster
    (tests/dask_cluster.py)."""
    if shutil.which("dask", path=str(VENV_BIN)) is None:
        pytest.skip("dask is not installed (pip install 'mlharbor[dask]')")
    from tests.dask_cluster import dask_cluster

    with dask_cluster(tmp_path_factory.mktemp("dask"), workers=2) as cluster:
        yield cluster.address


# -- live servers -----------------------------------------------------------------------------

@pytest.fixture
def live_server() -> Callable[[Any], LiveServer]:
    """Factory: ``with live_server(app) as server: httpx.get(server.url + ...)``."""
    return LiveServer
