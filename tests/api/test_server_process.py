"""`mlharbor server` as a user starts it: a real process on a free loopback port."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from mlharbor.settings import Settings
from tests.support import VENV_BIN, cli_env, free_port, run_cli, wait_for_port


@pytest.mark.slow
def test_server_serves_the_registry_and_health(settings: Settings, tmp_path: Path) -> None:
    env = {**os.environ, **cli_env(settings)}
    model = tmp_path / "model.bin"
    model.write_bytes(b"weights")
    assert run_cli("models", "register", "churn", str(model), "--raw", env=env).returncode == 0
    port = free_port()
    exe = shutil.which("mlharbor", path=str(VENV_BIN)) or "mlharbor"
    proc = subprocess.Popen([exe, "server", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        wait_for_port(port, proc=proc)
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/livez").status_code == 200
        assert httpx.get(f"{base}/readyz").status_code == 200
        assert httpx.get(f"{base}/docs").status_code == 401  # docs need a key too
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=20)
    # uvicorn shuts down cleanly, then re-raises SIGTERM so the exit status tells why.
    assert proc.returncode in (0, -signal.SIGTERM), output
    assert "Application shutdown complete" in output
    assert "Traceback" not in output
