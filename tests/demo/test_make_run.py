"""The main job behind `make run`, as a newcomer runs it: train, register, key, serve -- and
then, by itself, the closed loop: the drifting traffic triggers one retraining job that
snapshots, trains, validates, canaries and promotes churn:2, told line by line."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.support import VENV_BIN, free_port, wait_for_port

KEY = re.compile(r"\bmlh_[A-Za-z0-9_\-]+")
#: The lines the demo prints as the loop progresses, in order (demo/watch.py).
LOOP = [re.compile(p) for p in (
    r"^drift detected in \d+ of 4 30s windows -> retraining job (\w+) started: "
    r"http://127\.0\.0\.1:\d+/ui#/jobs/\1$",
    r"^snapshot: \d+ rows \(5000 champion \+ \d+ labelled production rows; fingerprint "
    r"sha256:[0-9a-f]{12}\)$",
    r"^challenger churn:2 validated \(f1 [0-9.]+ vs champion [0-9.]+ vs baseline [0-9.]+\)$",
    r"^canary 25%: guards passed",
    r"^canary 100%: guards passed",
    r"^promoted churn:2 to @champion \(job (\w+); demo traffic: \d+ requests, 0 failed\): "
    r"http://127\.0\.0\.1:\d+/ui#/jobs/\1$",
)]
END = re.compile(r"^(promoted|rolled back|challenger rejected|job \w+ (failed|cancelled))")


def free_port_pair() -> int:
    """A free port whose successor is free too (serving on it, the control plane on +1)."""
    for _ in range(50):
        port = free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two consecutive free ports")


def _printed(lines: list[str]) -> list[str]:
    return [line.strip() for line in "".join(lines).splitlines()]


def _wait_for_the_loop(lines: list[str], proc: subprocess.Popen[str], timeout: float
                       ) -> list[str]:
    """The printed lines once the job ended (a promotion, a rollback, a rejection ...)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if any(END.match(line) for line in _printed(lines)):
            return _printed(lines)
        time.sleep(1)
    raise AssertionError("the loop did not end within the deadline:\n"
                         + "\n".join(_printed(lines)[-40:]))


@pytest.mark.slow
def test_demo_trains_registers_serves_and_closes_the_loop(tmp_path: Path) -> None:
    port = free_port_pair()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLHARBOR_")}
    env |= {"MLHARBOR_HOME": str(tmp_path / "home"), "MLHARBOR_SERVER__PORT": str(port),
            "COLUMNS": "60"}  # narrow: printed commands must still be whole lines
    exe = shutil.which("mlharbor", path=str(VENV_BIN)) or "mlharbor"
    proc = subprocess.Popen([exe, "demo"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    stdout = proc.stdout
    assert stdout is not None
    reader = threading.Thread(target=lambda: lines.extend(iter(stdout.readline, "")),
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

        # The demo runs the control plane next to serving and sends it drifting traffic with
        # delayed ground truth: predictions reach the log and labels join them.
        control = f"http://127.0.0.1:{port + 1}"
        assert f"{control}/ui" in "".join(lines) and f"{control}/docs" in "".join(lines)
        assert httpx.get(f"{control}/docs", headers=headers, timeout=10).status_code == 200
        assert httpx.get(f"{control}/ui", headers=headers, timeout=10).status_code == 200
        # The training is a tracked run with a child run per candidate (Experiments page).
        runs = httpx.get(f"{control}/api/v1/runs", headers=headers, timeout=10)
        assert runs.status_code == 200, runs.text
        parents = [r for r in runs.json()["runs"] if r["parent_run_id"] is None]
        assert len(parents) == 1 and parents[0]["status"] == "FINISHED", runs.json()
        # Every command the demo printed works when pasted into a shell, in order.
        printed = [line.strip() for line in "".join(lines).splitlines()]
        commands = [line for line in printed
                    if line.startswith("export KEY=") or line.startswith("curl ")]
        assert [c.split()[0] for c in commands] == ["export", "curl", "curl"], printed
        for command in commands[1:]:
            pasted = subprocess.run(["bash", "-c", f"{commands[0]}\n{command}"],
                                    capture_output=True, text=True, timeout=60)
            assert pasted.returncode == 0, pasted.stderr
            assert '"error"' not in pasted.stdout and ("churn" in pasted.stdout
                                                        or "predictions" in pasted.stdout), (
                command, pasted.stdout)
        monitoring = f"{control}/api/v1/monitoring/endpoints/churn"
        deadline = time.monotonic() + 60
        labelled = logged = 0
        while time.monotonic() < deadline and not (labelled and logged):
            time.sleep(1)
            perf = httpx.get(f"{monitoring}/performance", params={"window": "1h", "step": "1h"},
                             headers=headers, timeout=30)
            assert perf.status_code == 200, perf.text
            labelled = sum(w["labelled_rows"] for w in perf.json()["windows"])
            drift = httpx.get(f"{monitoring}/drift", params={"window": "1h"}, headers=headers,
                              timeout=30)
            assert drift.status_code in (200, 404), drift.text  # 404 until a segment exists
            logged = drift.json()["window"]["rows"] if drift.status_code == 200 else 0
        assert logged > 0 and labelled > 0, (logged, labelled)
        assert perf.json()["windows"][0]["metrics"]["accuracy"] is not None

        # The closed loop, by itself: one line per step, each whole, in order.
        printed = _wait_for_the_loop(lines, proc, timeout=420)
        told = [line for line in printed if any(p.match(line) for p in LOOP) or END.match(line)]
        assert len(told) == len(LOOP), "\n".join(printed[-30:])
        for pattern, line in zip(LOOP, told, strict=True):
            assert pattern.match(line), (pattern.pattern, line)
        job_id = LOOP[0].match(told[0])[1]  # type: ignore[index]
        jobs = httpx.get(f"{control}/api/v1/jobs", params={"endpoint": "churn"},
                         headers=headers, timeout=30).json()
        assert jobs["total"] == 1, jobs  # a persisting drift started one job
        job = jobs["items"][0]
        assert (job["id"], job["state"], job["outcome"]) == (job_id, "succeeded", "promoted")
        assert job["request"]["trigger"] == "drift"
        champion = httpx.get(f"{control}/api/v1/models/churn/aliases/champion",
                             headers=headers, timeout=30).json()
        assert champion["version"] == 2 and champion["tags"]["mlharbor.job"] == job_id
        ledger = httpx.get(f"{control}/api/v1/deployments", params={"model": "churn"},
                           headers=headers, timeout=30).json()["items"]
        moves = [e for e in ledger if e["kind"] == "alias" and e["subject"] == "churn@champion"
                 and e["to_version"] == 2]
        assert moves and job_id in moves[0]["reason"] and moves[0]["actor"] == f"job:{job_id}"
        weights = [e for e in ledger if e["kind"] == "endpoint" and job_id in e["reason"]]
        assert {tuple((r["ref"], r["weight"]) for r in e["routes"]) for e in weights} >= {
            (("churn:1", 75.0), ("churn:2", 25.0)), (("churn:2", 100.0),)}, weights
        # Serving follows the endpoint: the champion's traffic now goes to version 2.
        served = httpx.post(url, json=[row], headers=headers, timeout=30).json()
        assert served["version"] == 2, served
        logs = subprocess.run([exe, "jobs", "logs", job_id], env=env, capture_output=True,
                              text=True, timeout=120)
        assert logs.returncode == 0 and "promote" in logs.stdout, logs.stdout + logs.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        reader.join(5)
    assert "Traceback" not in "".join(lines)
    assert proc.returncode == 0, "".join(lines)[-2000:]
    # Zero failed requests during the whole demo (the rollout included); connections refused
    # once Ctrl-C stopped serving are counted apart.
    final = [line for line in _printed(lines) if line.startswith("Demo traffic: ")]
    assert final and re.match(r"^Demo traffic: \d+ requests, 0 failed", final[-1]), final
    verify = subprocess.run([exe, "audit", "verify"], env=env, capture_output=True, text=True,
                            timeout=120)
    assert verify.returncode == 0, verify.stdout + verify.stderr
