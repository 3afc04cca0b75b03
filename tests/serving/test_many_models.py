"""Many models in bounded memory (issue 15): 200 registered models, 200 stored endpoints, one
``mlharbor serve`` process whose ``serving.model_memory_budget`` holds about 20 of them.

Each model is a decision tree grown on noise (about 1 MiB of node arrays: a real, measurable
footprint), so the budget means something. A seeded random
access pattern from 8 concurrent clients must get every answer right (each equals that model's
own ``predict``), the server must unload and reload (the counter and the pool status say so),
and the process's resident memory, sampled from /proc all along, must stay under the baseline
measured after start (runtimes imported) and a warm-up of the request path by the same 8
clients on one model, plus the budget.
"""

from __future__ import annotations

import os
import random
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from mlharbor.settings import Settings
from tests.support import VENV_BIN, cli_env, free_port

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("many_models")]
MODELS = 200
DISTINCT = 10
SLACK = 24 << 20  # allocator fragmentation after unloads (see the final assertion)
HOLDS = 20
COLUMNS = ["a", "b", "c", "d"]
TRAIN_ROWS = 20_000  # a tree of ~11,600 nodes: about 1 MiB of node and value arrays


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def many(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, dict[int, Any]]]:
    """200 versions registered straight through the registry API, one endpoint each.

    Ten distinct trees are bundled once each (the slow part: skops, signature, checks) and
    each bundle is registered under 20 model names; the answer's ``model`` field tells which
    of the 200 answered, and its predictions must be that model's tree's own."""
    import tempfile

    import pandas as pd
    from sklearn.tree import DecisionTreeClassifier

    from mlharbor.bootstrap import open_identities, open_registry
    from mlharbor.formats.base import TrustOptions
    from mlharbor.formats.builder import build_bundle
    from mlharbor.registry.endpoints import EndpointService
    from mlharbor.registry.lineage import environment_lineage

    settings = Settings(home=tmp_path_factory.mktemp("many") / "home")
    registry = open_registry(settings)
    endpoints = EndpointService(registry)
    environment = environment_lineage()  # git and package versions: read once, not 200x
    rng = np.random.default_rng(15)
    trees: list[Any] = []
    models: dict[int, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        bundles = []
        for t in range(DISTINCT):
            x = pd.DataFrame(rng.normal(size=(TRAIN_ROWS, 4)), columns=COLUMNS)
            y = rng.integers(0, 2, TRAIN_ROWS)  # noise: the tree grows a leaf per few rows
            trees.append(DecisionTreeClassifier(random_state=t).fit(x, y))
            folder = Path(tmp) / f"tree{t}"
            built = build_bundle(trees[t], folder, sample_input=x.head(3), runtime="native",
                                 trust=TrustOptions())
            bundles.append((folder, built.manifest.to_dict()))
        for i in range(MODELS):
            folder, manifest = bundles[i % DISTINCT]
            registry.register_version(f"m{i}", folder, manifest=manifest, actor="test",
                                      environment=environment)
            endpoints.create({"name": f"m{i}", "routes": [{"ref": f"m{i}:1"}]}, actor="test")
            models[i] = trees[i % DISTINCT]
    key = open_identities(registry).init_admin("ops", actor="test")[1]
    registry.close()
    os.environ.setdefault("MLHARBOR_TEST_MANY_KEY", key)
    yield settings, models


def _serve(settings: Settings, key: str, budget: int, **env: str
           ) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    full = {**os.environ, **cli_env(settings),
            "MLHARBOR_SECURITY__RATE_LIMIT_PER_MINUTE": "0",
            "MLHARBOR_MONITORING__LOG_PREDICTIONS": "false",
            "MLHARBOR_SERVING__MODEL_MEMORY_BUDGET": str(budget), **env}
    proc = subprocess.Popen([str(VENV_BIN / "mlharbor"), "serve", "--port", str(port),
                             "--plain-logs"], env=full, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(proc.stderr.read().decode() if proc.stderr else "exited")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise AssertionError("mlharbor serve did not become ready")


def test_200_models_in_a_budget_of_20(many: tuple[Settings, dict[int, Any]]) -> None:
    settings, models = many
    key = os.environ["MLHARBOR_TEST_MANY_KEY"]
    headers = {"Authorization": f"Bearer {key}"}
    # One model's footprint, as the server measures it: a server with room for everything
    # loads three and says what each took.
    proc, url = _serve(settings, key, budget=1 << 40)
    try:
        with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
            for i in range(3):
                assert client.post(f"/v1/endpoints/m{i}/predict",
                                   json=[dict.fromkeys(COLUMNS, 0.0)]).status_code == 200
            sizes = [m["memory_bytes"] for m in client.get("/v1/endpoints").json()["models"]
                     if m["state"] == "ready"]
    finally:
        proc.kill()
        proc.wait(10)
    assert len(sizes) == 3 and min(sizes) > 1 << 19, sizes  # measured, not 0
    budget = HOLDS * max(sizes)

    proc, url = _serve(settings, key, budget=budget)
    started = _rss(proc.pid)  # runtimes imported (primed), no model loaded
    # The request path's own first-use memory under this concurrency (8 connections, their
    # buffers, the inference and load threads and their malloc arenas) is part of the process
    # baseline, not of any model: take it with the same 8 clients on one model (which the
    # baseline therefore includes: conservative by one model's size).
    def warm(_: int) -> None:
        with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
            for _n in range(20):
                client.post("/v1/endpoints/m0/predict",
                            json=[dict.fromkeys(COLUMNS, 0.5)] * 3).raise_for_status()

    warmers = [threading.Thread(target=warm, args=(t,)) for t in range(8)]
    for thread in warmers:
        thread.start()
    for thread in warmers:
        thread.join()
    baseline = _rss(proc.pid)
    peak = baseline
    sampling = True

    def sample() -> None:
        nonlocal peak
        while sampling:
            peak = max(peak, _rss(proc.pid))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    rng = random.Random(15)
    # Mostly a hot set of 15 models, and the long tail of the other 185: under load, the LRU
    # keeps the hot ones and reloads the tail.
    plan = [(rng.randrange(15) if rng.random() < 0.6 else rng.randrange(MODELS),
             [{c: rng.uniform(-2, 2) for c in COLUMNS} for _ in range(rng.randint(1, 3))])
            for _ in range(600)]
    wrong: list[Any] = []
    codes: list[int] = []

    def client_thread(offset: int) -> None:
        import pandas as pd

        with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
            for index in range(offset, len(plan), 8):
                i, rows = plan[index]
                try:
                    response = client.post(f"/v1/endpoints/m{i}/predict", json=rows)
                    codes.append(response.status_code)
                    if response.status_code != 200:
                        wrong.append((i, response.status_code, response.text[:300]))
                        continue
                    body = response.json()
                    expected = models[i].predict(pd.DataFrame(rows, columns=COLUMNS)).tolist()
                    if body["predictions"] != expected or body["model"] != f"m{i}":
                        wrong.append((i, body, expected))
                except Exception as exc:  # a thread's exception must fail the test
                    wrong.append((i, repr(exc)))

    try:
        threads = [threading.Thread(target=client_thread, args=(t,)) for t in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
            status = client.get("/v1/endpoints").json()
            metrics = client.get("/metrics").text
    finally:
        sampling = False
        sampler.join()
        proc.kill()
        proc.wait(10)
    assert not wrong, wrong[:5]
    assert len(codes) == len(plan)
    loaded = [m for m in status["models"] if m["state"] == "ready"]
    # Trees measure 0.9-1.2 MiB, the budget is 20 of the largest: a few more than 20 fit.
    assert HOLDS // 2 <= len(loaded) <= 2 * HOLDS
    assert sum(m["memory_bytes"] for m in loaded) <= budget
    unloads = next(float(line.split()[-1]) for line in metrics.splitlines()
                   if line.startswith("mlharbor_model_unloads_total "))
    assert unloads >= 50  # the tail really came and went
    # Without the budget the 200 trees would add ~200 MiB. Measured here the peak passes
    # baseline + budget by 10-13 MiB whatever the budget (19-24 MiB runs): memory of unloaded
    # versions the C allocator and Python's arenas keep in fragments. Allowed as SLACK until the
    # pool accounts for it (open item of the issue-15 note), so this still fails on any leak.
    assert peak <= baseline + budget + SLACK, (started, baseline, peak, budget)
