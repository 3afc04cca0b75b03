"""HAProxy in front of serving replicas on loopback, as an operator would run it.

:func:`haproxy_config` writes the configuration documented for replicas (health checks on
``/readyz``, retries of idempotent predictions on another replica when a connection fails or
a replica dies before answering); :class:`Balancer` runs ``haproxy -f FILE -db`` as a process
of its own and reads each replica's state from HAProxy's admin socket, so tests can watch a
killed replica leave and a restarted one rejoin.
"""

from __future__ import annotations

import contextlib
import csv
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from tests.support import free_port, wait_for_port

HEALTH_INTERVAL_MS = 300


def haproxy_config(port: int, replicas: Sequence[int], stats_socket: Path) -> str:
    """The balancer of ``replicas`` (ports on 127.0.0.1) listening on ``port``."""
    servers = "\n".join(
        f"    server r{i} 127.0.0.1:{p} check" for i, p in enumerate(replicas))
    return f"""\
global
    maxconn 2000
    stats socket {stats_socket} mode 600 level admin

defaults
    mode http
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    # Predictions are idempotent: a request whose replica refused the connection or closed
    # it without an answer (killed, restarting) is sent again, to another replica.
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response
    option http-buffer-request

frontend predictions
    bind 127.0.0.1:{port}
    default_backend replicas

backend replicas
    balance roundrobin
    option httpchk
    http-check send meth GET uri /readyz ver HTTP/1.1 hdr Host 127.0.0.1
    http-check expect status 200
    default-server inter {HEALTH_INTERVAL_MS}ms fall 2 rise 2
{servers}
"""


class Balancer:
    """``haproxy`` on a free loopback port in front of ``replicas``; a context manager."""

    def __init__(self, folder: Path, replicas: Sequence[int]) -> None:
        exe = shutil.which("haproxy") or "/usr/sbin/haproxy"
        if not Path(exe).exists():
            raise FileNotFoundError("haproxy is not installed: bash scripts/system-deps.sh")
        self.exe = exe
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.stats_socket = folder / "haproxy.sock"
        self.config = folder / "haproxy.cfg"
        self.config.write_text(haproxy_config(self.port, replicas, self.stats_socket))
        self.names = [f"r{i}" for i in range(len(replicas))]
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Balancer:
        check = subprocess.run([self.exe, "-c", "-f", str(self.config)], capture_output=True,
                               text=True, check=False)
        if check.returncode != 0:
            raise RuntimeError(f"haproxy refused its configuration: {check.stderr}")
        self.proc = subprocess.Popen([self.exe, "-f", str(self.config), "-db"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_for_port(self.port, proc=self.proc)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def states(self) -> dict[str, str]:
        """Replica name (r0, r1 ...) -> HAProxy's status of it (UP, DOWN, ``UP 1/2`` ...)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(self.stats_socket))
            sock.sendall(b"show stat\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        rows = csv.DictReader(data.decode().lstrip("# ").splitlines())
        return {row["svname"]: row["status"] for row in rows
                if row.get("pxname") == "replicas" and row["svname"] in self.names}

    def wait_for(self, name: str, status: str, timeout: float = 30.0) -> None:
        """Wait until replica ``name`` has ``status`` (``UP`` or ``DOWN``) in HAProxy."""
        deadline = time.monotonic() + timeout
        seen = None
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                seen = self.states().get(name)
                if seen == status:
                    return
            time.sleep(0.1)
        raise TimeoutError(f"replica {name} stayed {seen!r}, not {status!r}, for {timeout}s")


class Replicas:
    """``count`` real ``mlharbor serve`` processes, each with its own home (as on separate
    hosts) and port, sharing the stores named by ``env`` (database, artifacts, log).

    Each process's output goes to ``<folder>/replica-<i>.log``; :meth:`kill` sends SIGKILL,
    :meth:`start` (re)starts one on its own port.
    """

    def __init__(self, folder: Path, env: dict[str, str], count: int = 3,
                 args: Sequence[str] = ()) -> None:
        import os

        self.folder = folder
        self.env = {**os.environ, **env}
        self.args = list(args)
        self.ports = [free_port() for _ in range(count)]
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * count

    def url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.ports[i]}"

    def log(self, i: int) -> str:
        path = self.folder / f"replica-{i}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self, i: int, *, wait: bool = True) -> subprocess.Popen[bytes]:
        from tests.support import VENV_BIN

        home = self.folder / f"home-{i}"
        home.mkdir(parents=True, exist_ok=True)
        with (self.folder / f"replica-{i}.log").open("ab") as out:
            proc = subprocess.Popen(
                [str(VENV_BIN / "mlharbor"), "serve", *self.args, "--host", "127.0.0.1",
                 "--port", str(self.ports[i])],
                env={**self.env, "MLHARBOR_HOME": str(home)}, stdout=out,
                stderr=subprocess.STDOUT)
        self.procs[i] = proc
        if wait:
            self.wait_ready(i)
        return proc

    def wait_ready(self, i: int, timeout: float = 90.0) -> None:
        import httpx

        proc = self.procs[i]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"replica {i} exited with {proc.returncode}:\n"
                                   f"{self.log(i)[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url(i)}/readyz", timeout=2).status_code == 200:
                    return
            time.sleep(0.1)
        raise TimeoutError(f"replica {i} was not ready within {timeout}s:\n{self.log(i)[-3000:]}")

    def kill(self, i: int) -> None:
        proc = self.procs[i]
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)
        self._kill_children(proc)

    def _kill_children(self, proc: subprocess.Popen[bytes] | None) -> None:
        """The prediction log's compactor child outlives a SIGKILLed server by design (it
        notices its parent is gone); end it here so tests leave nothing running."""
        import os
        import signal

        if proc is None:
            return
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) in (proc.pid, 1) and \
                        b"mlharbor.monitoring.compactor" in (entry / "cmdline").read_bytes() \
                        and str(self.folder).encode() in (entry / "environ").read_bytes():
                    os.kill(int(entry.name), signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM every replica (each drains and flushes its log), SIGKILL the stragglers."""
        for proc in self.procs:
            if proc is not None and proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            if proc is None:
                continue
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
            self._kill_children(proc)
