"""``mlharbor serve`` as users run it: a separate process, real auth, canary split, SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from mlharbor.registry.endpoints import EndpointService
from tests.serving.conftest import FEATURES
from tests.support import VENV_BIN, cli_env, free_port

pytestmark = pytest.mark.slow
ROW = [{f: 0.1 * i for i, f in enumerate(FEATURES)}]


class Served:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, key: str) -> None:
        self.proc, self.port, self.key = proc, port, key
        self.url = f"http://127.0.0.1:{port}"
        self.headers = {"Authorization": f"Bearer {key}"}


@pytest.fixture
def mlharbor_serve(home_settings: Any, registry: Any) -> Iterator[Any]:
    from mlharbor.bootstrap import open_identities

    key = open_identities(registry).init_admin("ops", actor="test")[1]
    procs: list[subprocess.Popen[bytes]] = []

    def start(*args: str) -> Served:
        port = free_port()
        env = {**os.environ, **cli_env(home_settings),
               "MLHARBOR_SECURITY__RATE_LIMIT_PER_MINUTE": "0",
               "MLHARBOR_SERVING__POLL_INTERVAL_S": "0.3"}
        proc = subprocess.Popen([str(VENV_BIN / "mlharbor"), "serve", *args, "--port",
                                 str(port)], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        procs.append(proc)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    return Served(proc, port, key)
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError("mlharbor serve did not become ready")

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def hammer(served: Served, n: int, threads: int = 8,
           header: Any = None) -> list[httpx.Response]:
    out: list[httpx.Response] = []
    lock = threading.Lock()

    def work(offset: int) -> None:
        with httpx.Client(base_url=served.url, headers=served.headers, timeout=30) as client:
            for i in range(offset, n, threads):
                extra = header(i) if header else None
                response = client.post("/v1/endpoints/scoring/predict", json=ROW,
                                       headers=extra)
                with lock:
                    out.append(response)

    pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return out


def test_serve_stored_endpoints_with_a_canary_split(registry: Any, mlharbor_serve: Any) -> None:
    EndpointService(registry).create({"name": "scoring", "routes": [
        {"ref": "churn@champion", "weight": 90}, {"ref": "churn:2", "weight": 10}]},
        actor="test")
    served = mlharbor_serve()
    responses = hammer(served, 5000)
    assert {r.status_code for r in responses} == {200}
    versions = Counter(r.json()["version"] for r in responses)
    assert 0.08 <= versions[2] / 5000 <= 0.12, versions
    sticky = hammer(served, 40, 4, header=lambda i: {"x-mlharbor-sticky": "user-7"})
    assert len({r.json()["version"] for r in sticky}) == 1
    users = hammer(served, 200, 4, header=lambda i: {"x-mlharbor-sticky": f"user-{i}"})
    assert {r.json()["version"] for r in users} == {1, 2}
    assert httpx.post(f"{served.url}/v1/endpoints/scoring/predict",
                      json=ROW).status_code == 401


def test_serve_one_model_by_reference_then_drain_on_sigterm(mlharbor_serve: Any) -> None:
    served = mlharbor_serve("churn@champion")
    with httpx.Client(base_url=served.url, headers=served.headers) as client:
        assert client.post("/v1/endpoints/churn/predict", json=ROW).json()["version"] == 1
        assert client.post("/v1/models/churn:predict",
                           json={"instances": ROW}).status_code == 200
        assert client.get("/v2/models/churn/ready").status_code == 200
    body = json.dumps(ROW * 200).encode()
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/endpoints/churn/predict HTTP/1.1\r\nhost: 127.0.0.1\r\n"
                     b"authorization: Bearer " + served.key.encode() + b"\r\n"
                     b"content-type: application/json\r\n"
                     b"content-length: " + str(len(body)).encode() + b"\r\n\r\n"
                     + body[:1000])
        time.sleep(0.3)
        served.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert served.proc.poll() is None, "the server quit with a request in flight"
        sock.sendall(body[1000:])
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200")
    assert served.proc.wait(15) == 0
    stderr = served.proc.stderr.read().decode() if served.proc.stderr else ""
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert any(line.get("event") == "model.loaded" for line in lines)


def test_serve_refuses_a_bad_reference(home_settings: Any) -> None:
    from tests.support import run_cli

    result = run_cli("serve", "churn@ghost", "--port", "0", env=cli_env(home_settings))
    assert result.returncode != 0
    assert "ghost" in result.stderr and "Traceback" not in result.stderr
