"""A real Dask cluster on loopback for tests: one ``dask scheduler`` and N ``dask worker``
processes, each its own OS process over TCP, killed by PID when the test is done.

Use :func:`dask_cluster` as a context manager, or the ``dask_scheduler`` fixture from
``tests/conftest.py`` (a two-worker cluster shared by a module). Workers can be killed and
restarted one by one (:meth:`DaskCluster.kill_worker`, :meth:`DaskCluster.add_worker`) to test
retries.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.support import VENV_BIN, free_port, wait_for_port


class DaskCluster:
    """A scheduler address plus the worker processes attached to it."""

    def __init__(self, workdir: Path, nthreads: int = 1) -> None:
        self.workdir = workdir
        self.nthreads = nthreads
        self.port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.scheduler: subprocess.Popen[Any] | None = None
        self.workers: list[subprocess.Popen[Any]] = []

    def _spawn(self, args: list[str], log_name: str) -> subprocess.Popen[Any]:
        log = (self.workdir / log_name).open("ab")
        env = {**os.environ, "DASK_DISTRIBUTED__WORKER__DAEMON": "False",
               "PYTHONUNBUFFERED": "1"}
        return subprocess.Popen([str(VENV_BIN / "dask"), *args], stdout=log, stderr=log,
                                cwd=self.workdir, env=env, start_new_session=True)

    def start_scheduler(self) -> None:
        self.scheduler = self._spawn(
            ["scheduler", "--host", "127.0.0.1", "--port", str(self.port), "--no-dashboard"],
            "scheduler.log")
        wait_for_port(self.port, timeout=60, proc=self.scheduler)

    def add_worker(self) -> subprocess.Popen[Any]:
        index = len(self.workers)
        worker = self._spawn(
            ["worker", self.address, "--nthreads", str(self.nthreads), "--nworkers", "1",
             "--no-dashboard", "--host", "127.0.0.1", "--name", f"w{index}",
             "--local-directory", str(self.workdir / f"w{index}")],
            f"worker{index}.log")
        self.workers.append(worker)
        return worker

    def wait_for_workers(self, n: int, timeout: float = 60.0) -> None:
        """Block until the scheduler sees ``n`` workers (asked through a real client)."""
        from distributed import Client

        with Client(self.address, timeout=timeout) as client:
            client.wait_for_workers(n, timeout=timeout)

    def kill_worker(self, index: int = 0) -> None:
        """SIGKILL one worker's process group: no goodbye to the scheduler, as in a crash."""
        worker = self.workers[index]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(10)

    def stop(self) -> None:
        for proc in [*self.workers, self.scheduler]:
            if proc is None or proc.poll() is not None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in [*self.workers, self.scheduler]:
            if proc is None:
                continue
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)

    def logs(self) -> str:
        """Every process's log, for a failing test's message."""
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}"
                         for p in sorted(self.workdir.glob("*.log")))


@contextlib.contextmanager
def dask_cluster(workdir: Path, workers: int = 2, nthreads: int = 1) -> Iterator[DaskCluster]:
    """A scheduler plus ``workers`` worker processes, stopped (by PID) on exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    cluster = DaskCluster(workdir, nthreads=nthreads)
    try:
        cluster.start_scheduler()
        for _ in range(workers):
            cluster.add_worker()
        cluster.wait_for_workers(workers)
        yield cluster
    finally:
        cluster.stop()
