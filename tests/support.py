"""Plain helpers for tests: free ports, live servers, running the CLI as a user would."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from mlharbor.settings import Settings

VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 20.0, proc: subprocess.Popen[Any] | None = None
                  ) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listened on 127.0.0.1:{port} within {timeout}s")


def wait_until(check: Any, timeout: float, what: str, interval: float = 0.02) -> None:
    """Poll ``check()`` until it is true; a liveness bound (something that should happen at
    all), not a speed check: past ``timeout`` it raises TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} (waited {timeout:g}s)")
        time.sleep(interval)



class LiveServer:
    """A uvicorn server for an ASGI app on a free loopback port, in a background thread."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the live server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the installed ``mlharbor`` command as a user would."""
    exe = shutil.which("mlharbor", path=str(VENV_BIN)) or "mlharbor"
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([exe, *args], capture_output=True, text=True, env=full_env, cwd=cwd,
                          timeout=timeout, check=False)


def cli_env(settings: Settings) -> dict[str, str]:
    """Environment that points the CLI at ``settings``' home and stores (the home is made
    first, so the CLI does not announce a new one)."""
    settings.home.mkdir(parents=True, exist_ok=True)
    return {
        "MLHARBOR_HOME": str(settings.home),
        "MLHARBOR_DATABASE_URL": settings.database_url_value,
        "MLHARBOR_ARTIFACT_URI": settings.artifact_uri_value,
    }
