"""A slow shadow never slows the primary, and a fallback chain shares one deadline.

The shadow test runs ``mlharbor serve`` as a real process and loads it with many concurrent
requests for a few seconds: one endpoint without a shadow, one whose shadow is a trusted
Python model that sleeps on every call. The shadow runs on capacity of its own and copies past
it are dropped (and counted), so the primary's p99 with the slow shadow stays below the
shadow's sleep, which it could not if the shadow ever held the primary's threads.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from mlharbor.settings import ServingSettings, Settings
from tests.serving.conftest import FEATURES
from tests.serving.test_behaviour import faulty, metric
from tests.support import VENV_BIN, cli_env, free_port

pytestmark = pytest.mark.slow
ROW = [{f: 0.1 * i for i, f in enumerate(FEATURES)}]
SHADOW_SLEEP_S = 2.0  # far above the p99 of a busy 2-core machine (~0.5 s at load 6)
LOAD_S = 3.0
CONCURRENCY = 16

SLEEPY = textwrap.dedent(f'''
    """A model that takes {SHADOW_SLEEP_S} seconds for every call: a slow shadow."""
    import time

    import numpy as np


    class Sleepy:
        def predict(self, frame):
            time.sleep({SHADOW_SLEEP_S})
            return np.zeros(len(frame))
''')


def _register_sleepy(registry: Any, settings: Settings, data: Any, tmp: Path) -> None:
    from mlharbor.registry.bundles import register_model

    source = tmp / "sleepy.py"
    source.write_text(SLEEPY, encoding="utf-8")
    x, _y = data
    register_model(registry, "sleepy", source, settings=settings, sample_input=x.head(5),
                   trust_code=True)


@pytest.fixture
def server(home_settings: Settings, registry: Any, data: Any,
           tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    from mlharbor.bootstrap import open_identities
    from mlharbor.registry.endpoints import EndpointService

    _register_sleepy(registry, home_settings, data, tmp_path)
    endpoints = EndpointService(registry)
    endpoints.create({"name": "plain", "routes": [{"ref": "churn@champion"}]}, actor="test")
    endpoints.create({"name": "shadowed", "routes": [{"ref": "churn@champion"}],
                      "shadow": "sleepy:1"}, actor="test")
    key = open_identities(registry).init_admin("ops", actor="test")[1]
    port = free_port()
    env = {**os.environ, **cli_env(home_settings),
           "MLHARBOR_SECURITY__RATE_LIMIT_PER_MINUTE": "0"}
    proc = subprocess.Popen([str(VENV_BIN / "mlharbor"), "serve", "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "mlharbor serve did not become ready"
            time.sleep(0.2)
        yield url, {"Authorization": f"Bearer {key}"}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


async def _load(url: str, headers: dict[str, str], endpoint: str) -> list[float]:
    """Latencies of every request answered 200 by ``endpoint`` while CONCURRENCY clients
    send back to back for LOAD_S seconds."""
    latencies: list[float] = []
    stop = time.monotonic() + LOAD_S
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30,
                                 limits=httpx.Limits(max_connections=CONCURRENCY)) as client:
        async def worker() -> None:
            while time.monotonic() < stop:
                started = time.perf_counter()
                response = await client.post(f"/v1/endpoints/{endpoint}/predict", json=ROW)
                assert response.status_code == 200, response.text
                latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return latencies


def test_a_slow_shadow_does_not_slow_the_primary(server: tuple[str, dict[str, str]]) -> None:
    url, headers = server
    asyncio.run(_load(url, headers, "plain"))  # warm-up: connections, caches, JIT-free
    plain = asyncio.run(_load(url, headers, "plain"))
    shadowed = asyncio.run(_load(url, headers, "shadowed"))
    p99_plain = float(np.percentile(plain, 99))
    p99_shadowed = float(np.percentile(shadowed, 99))
    text = httpx.get(f"{url}/metrics", headers=headers).text
    dropped = metric(text, 'mlharbor_shadow_dropped_total{endpoint="shadowed"}')
    summary = (f"p99 without shadow {p99_plain * 1000:.1f} ms ({len(plain)} requests), with "
               f"a {SHADOW_SLEEP_S * 1000:.0f} ms shadow {p99_shadowed * 1000:.1f} ms "
               f"({len(shadowed)} requests), {dropped:.0f} shadow copies dropped")
    # The shadow sleeps on every call: had a request ever waited for it (or for a thread it
    # held), that request would have taken the shadow's sleep at least.
    assert p99_shadowed < SHADOW_SLEEP_S, summary
    # The shadow could not keep up with the load, so copies were dropped, and counted ...
    assert dropped > 0, summary
    # ... and no request was dropped from the plain endpoint's count of answers.
    assert metric(text, 'mlharbor_shadow_dropped_total{endpoint="plain"}') == 0
    assert len(shadowed) > 2 * CONCURRENCY, summary


def test_a_fallback_chain_shares_one_deadline(home_settings: Settings, registry: Any,
                                              serve: Any) -> None:
    """Two slow models in a chain answer within the endpoint's one timeout: the fallback
    gets what the primary left of it (here nothing), never a fresh timeout of its own."""
    from mlharbor.registry.endpoints import EndpointSpec

    settings = home_settings.model_copy(update={"serving": ServingSettings(
        batching=False, poll_interval_s=0.2)})
    loader = faulty(settings, registry, v1={"delay": 4.0}, v2={"delay": 4.0})
    timeout_s = 1.5
    server = serve(settings, loader=loader, endpoints=[
        EndpointSpec.model_validate({"name": "churn", "routes": [{"ref": "churn:1"}],
                                     "fallback": ["churn:2"],
                                     "limits": {"timeout_ms": int(timeout_s * 1000)}}),
        EndpointSpec.model_validate({"name": "rescued", "routes": [{"ref": "churn:1"}],
                                     "fallback": ["churn:2"],
                                     "default_answer": {"prediction": 0},
                                     "limits": {"timeout_ms": int(timeout_s * 1000)}})])
    late = httpx.post(f"{server.url}/v1/endpoints/churn/predict", json=ROW, timeout=30)
    assert late.status_code == 504, late.text
    assert late.json()["error"]["code"] == "timeout"
    assert "within its timeout of 1.5s" in late.json()["error"]["message"]
    # One deadline for the chain: the fallback was never started once it was spent, where
    # each model used to get a full timeout of its own (2 x 1.5 s).
    text = httpx.get(f"{server.url}/metrics").text
    assert metric(text, 'mlharbor_batch_rows_count{endpoint="churn"}') == 1
    rescued = httpx.post(f"{server.url}/v1/endpoints/rescued/predict", json=ROW, timeout=30)
    assert rescued.status_code == 200, rescued.text
    assert rescued.json()["fallback"] == {"reason": "timeout", "from": "churn:1",
                                          "to": "default"}
