"""The main job behind `make run`, as a newcomer runs it: train, register, key, serve."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.support import VENV_BIN, free_port, wait_for_port

KEY = re.compile(r"\bmlh_[A-Za-z0-9_\-]+")


@pytest.mark.slow
def test_demo_trains_registers_and_serves_with_a_key(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLHARBOR_")}
    env |= {"MLHARBOR_HOME": str(tmp_path / "home"), "MLHARBOR_SERVER__PORT": str(port),
            "COLUMNS": "200"}
    exe = shutil.which("mlharbor", path=str(VENV_BIN)) or "mlharbor"
    proc = subprocess.Popen([exe, "demo"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")),
                              daemon=True)
    reader.start()
    try:
        wait_for_port(port, timeout=240, proc=proc)
        output = "".join(lines)
        keys = KEY.findall(output)
        assert keys, output
        assert "churn:1" in output and "champion" in output
        headers = {"Authorization": f"Bearer {keys[0]}"}
        row = {"tenure_months": 3, "monthly_charges": 90.5, "total_charges": 271.5,
               "support_calls": 4, "senior": 0, "contract": "month-to-month",
               "internet": "fiber", "payment_method": "electronic-check"}
        url = f"http://127.0.0.1:{port}/v1/endpoints/churn/predict"
        deadline = time.monotonic() + 60
        while True:  # ready once the model is loaded and warmed
            answer = httpx.post(url, json=[row], headers=headers, timeout=30)
            if answer.status_code != 503 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["predictions"][0] in (0, 1) and body["version"] == 1
        assert httpx.post(url, json=[row], timeout=30).status_code == 401
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        reader.join(5)
    assert "Traceback" not in "".join(lines)
