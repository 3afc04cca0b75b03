"""Where a serving request's CPU goes, by counts: cProfile over a fixed number of requests.

    .venv/bin/python bench/serving/hotpath.py [--requests 2000] [--home /tmp/mlh-profile]
                                              [--top 15] [--case rf-native-1 ...]

On a machine shared with other work, wall-clock figures drift by tens of percent between
minutes; function-call counts do not. So this drives the serving app of ``mlharbor serve``
(built by :class:`~mlharbor.bootstrap.serving.ServingProcess`, every default on: API-key auth,
signature validation, micro-batching, metrics, the prediction log) *in process*, through its
ASGI callable with no socket in between, for a fixed number of requests per case, under
cProfile. For each case it prints the Python function calls per request (the repeatable figure
to compare before/after) and the top entries by own time with their call counts.

Cases: the RandomForest (100 trees, depth 8) and a LogisticRegression on 20 numeric features,
both served by ONNX Runtime, at 1 and 64 rows, through the native route, MLflow's
``/invocations`` with ``inputs`` (rows in column order) and ``dataframe_split``, and Open
Inference v2 (one FP64 tensor).

``--cpu`` measures CPU instead of counting calls: each case runs ``--requests`` requests,
``--concurrency`` at a time (64, like the bench's wrk, so micro-batching joins them), without
the profiler, and reports CPU microseconds per request of the event loop (this thread), of the
prediction log's flusher thread (its CPU clock, read through ``pthread_getcpuclockid``) and of
compacting the journal those requests left (run here, timed, on the same code the compactor
child runs). Thread CPU clocks do not depend on how much of a core the process got, so the
figures hold on a shared machine far better than req/s.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import pstats
import shutil
import sys
import threading
from pathlib import Path
from typing import Any

COLUMNS = [f"f{i}" for i in range(20)]


def prepare(home: Path) -> str:
    """Register ``rf`` and ``lr`` (ONNX after the parity check); the admin API key."""
    import numpy as np
    import pandas as pd
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    from mlharbor.bootstrap import open_identities, open_registry
    from mlharbor.registry.bundles import register_model
    from mlharbor.registry.endpoints import EndpointService
    from mlharbor.settings import Settings

    shutil.rmtree(home, ignore_errors=True)
    rng = np.random.default_rng(0)
    x = pd.DataFrame(rng.normal(size=(5000, 20)), columns=COLUMNS)
    y = ((x.f0 + x.f1 - x.f2 + rng.normal(scale=0.5, size=5000)) > 0).astype(int)
    settings = Settings(home=home)
    registry = open_registry(settings)
    models = {"rf": RandomForestClassifier(n_estimators=100, max_depth=8, random_state=0),
              "lr": LogisticRegression(max_iter=1000)}
    for name, model in models.items():
        register_model(registry, name, model.fit(x, y), settings=settings,
                       sample_input=x.head(20))
        registry.set_alias(name, "champion", 1)
        EndpointService(registry).create({"name": name, "routes": [{"ref": f"{name}@champion"}]},
                                         actor="bench")
    key = open_identities(registry).init_admin("bench", actor="bench")[1]
    registry.close()
    sample = x.sample(64, random_state=64)
    (home / "rows.json").write_text(json.dumps(sample.to_dict(orient="split", index=False)))
    return key


def payloads(home: Path, model: str, rows: int) -> dict[str, tuple[str, bytes]]:
    """Route and body per protocol for ``rows`` rows of the sample."""
    split = json.loads((home / "rows.json").read_text())
    data = split["data"][:rows]
    records = [dict(zip(COLUMNS, row, strict=True)) for row in data]
    flat = [v for row in data for v in row]
    return {
        "native": (f"/v1/endpoints/{model}/predict", json.dumps(records).encode()),
        "mlflow-inputs": ("/invocations", json.dumps({"inputs": data}).encode()),
        "mlflow-split": ("/invocations", json.dumps(
            {"dataframe_split": {"columns": COLUMNS, "data": data}}).encode()),
        "oip": (f"/v2/models/{model}/infer", json.dumps({"inputs": [{
            "name": "input-0", "shape": [rows, 20], "datatype": "FP64",
            "data": flat}]}).encode()),
    }


class Driver:
    """Calls the ASGI app the way uvicorn does, one request at a time."""

    def __init__(self, app: Any, key: str) -> None:
        self.app = app
        self.key = key.encode()

    async def lifespan(self, phase: str) -> None:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        await queue.put({"type": f"lifespan.{phase}"})
        done = asyncio.Event()

        async def send(message: dict[str, Any]) -> None:
            done.set()

        task = asyncio.ensure_future(self.app({"type": "lifespan"}, queue.get, send))
        await done.wait()
        if phase == "shutdown":
            await task

    async def request(self, path: str, body: bytes, endpoint: str) -> tuple[int, bytes]:
        scope = {"type": "http", "method": "POST", "path": path, "query_string": b"",
                 "headers": [(b"host", b"127.0.0.1:8000"),
                             (b"content-type", b"application/json"),
                             (b"content-length", str(len(body)).encode()),
                             (b"authorization", b"Bearer " + self.key),
                             (b"x-mlharbor-endpoint", endpoint.encode())],
                 "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000),
                 "scheme": "http", "http_version": "1.1", "root_path": ""}
        out: dict[str, Any] = {}

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                out["status"] = message["status"]
            else:
                out["body"] = message.get("body", b"")

        await self.app(scope, receive, send)
        return out["status"], out["body"]


def session_key(home: Path, *, reuse: bool) -> str:
    """The API key of ``home`` (trained and registered by :func:`prepare` unless ``reuse``
    finds one), with uvloop installed when present, as the server runs."""
    keyfile = home / "key.txt"
    if reuse and keyfile.exists():
        key = keyfile.read_text()
    else:
        key = prepare(home)
        keyfile.write_text(key)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    return key


async def send_waves(driver: Driver, path: str, body: bytes, model: str, count: int,
                     concurrency: int) -> None:
    """``count`` requests, ``concurrency`` at a time."""
    for start in range(0, count, concurrency):
        n = min(concurrency, count - start)
        await asyncio.gather(*(driver.request(path, body, model) for _ in range(n)))


def settle_log(log: Any, *, wait_s: float, after_s: float) -> None:
    """Wait until the log's flusher has journaled everything (it runs every 0.2 s)."""
    import time

    deadline = time.monotonic() + wait_s
    while log.backlog()["pending_records"] and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(after_s)


async def run(home: Path, key: str, requests: int, top: int, cases: list[str] | None) -> None:
    from mlharbor.bootstrap.serving import ServingProcess
    from mlharbor.settings import Settings

    settings = Settings(home=home, serving={"rate_limit_per_minute": 0},
                        monitoring={"compaction": "thread"})
    app, close = ServingProcess(settings, None, json_logs=False)()
    driver = Driver(app, key)
    await driver.lifespan("startup")
    try:
        for model in ("rf", "lr"):
            for rows in (1, 64):
                for protocol, (path, body) in payloads(home, model, rows).items():
                    name = f"{model}-{protocol}-{rows}"
                    if cases and name not in cases:
                        continue
                    status, answer = await driver.request(path, body, model)
                    if status != 200:
                        raise SystemExit(f"{name}: HTTP {status}: {answer[:300]!r}")
                    for _ in range(50):  # warm caches before counting
                        await driver.request(path, body, model)
                    profiler = cProfile.Profile()
                    profiler.enable()
                    for _ in range(requests):
                        await driver.request(path, body, model)
                    profiler.disable()
                    report(name, profiler, requests, top)
    finally:
        await driver.lifespan("shutdown")
        close()


async def cpu_run(home: Path, key: str, requests: int, concurrency: int, rounds: int,
                  cases: list[str] | None) -> None:
    """CPU per request by thread (see the module docstring), every default on: the lowest of
    ``rounds`` rounds of ``requests`` requests each (and the medians)."""
    import statistics
    import time

    from mlharbor.bootstrap.serving import ServingProcess
    from mlharbor.settings import Settings

    # Compaction in this process, on demand: timed below on this thread.
    settings = Settings(home=home, serving={"rate_limit_per_minute": 0},
                        monitoring={"compaction": "thread", "segment_interval_s": 3600})
    app, close = ServingProcess(settings, None, json_logs=False)()
    driver = Driver(app, key)
    log = app.dispatcher.sink
    await driver.lifespan("startup")
    flusher = next(t for t in threading.enumerate() if t.name == "mlharbor-log-flusher")
    assert flusher.ident is not None
    flusher_clock = time.pthread_getcpuclockid(flusher.ident)

    async def wave(path: str, body: bytes, model: str, count: int) -> None:
        await send_waves(driver, path, body, model, count, concurrency)

    def settle() -> None:
        settle_log(log, wait_s=10, after_s=0.3)

    try:
        print("case                       loop us  flusher us  compaction us  total us "
              "(per request, lowest round)")
        for model in ("rf", "lr"):
            for rows in (1, 64):
                for protocol, (path, body) in payloads(home, model, rows).items():
                    name = f"{model}-{protocol}-{rows}"
                    if cases and name not in cases:
                        continue
                    status, answer = await driver.request(path, body, model)
                    if status != 200:
                        raise SystemExit(f"{name}: HTTP {status}: {answer[:300]!r}")
                    await wave(path, body, model, 5 * concurrency)  # warm
                    settle()
                    log.compact()
                    figures = []
                    for _round in range(rounds):
                        loop0 = time.thread_time()
                        flush0 = time.clock_gettime(flusher_clock)
                        await wave(path, body, model, requests)
                        loop_s = time.thread_time() - loop0
                        settle()
                        flush_s = time.clock_gettime(flusher_clock) - flush0
                        compact0 = time.thread_time()
                        log.compact()
                        compact_s = time.thread_time() - compact0
                        per = [x / requests * 1e6 for x in (loop_s, flush_s, compact_s)]
                        figures.append([*per, sum(per)])
                    # Each figure's lowest round: what other work on the machine added least.
                    low = [min(f[i] for f in figures) for i in range(4)]
                    mid = [statistics.median(f[i] for f in figures) for i in range(4)]
                    print(f"{name:24s} {low[0]:9.1f} {low[1]:11.1f} {low[2]:14.1f} "
                          f"{low[3]:9.1f}   (medians {' '.join(f'{m:.0f}' for m in mid)})",
                          flush=True)
    finally:
        await driver.lifespan("shutdown")
        close()


def report(name: str, profiler: cProfile.Profile, requests: int, top: int) -> None:
    stats = pstats.Stats(profiler)
    calls = stats.total_calls  # type: ignore[attr-defined]
    print(f"\n### {name}: {calls / requests:.0f} Python function calls per request "
          f"({requests} requests)\n")
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(top)
    lines = text.getvalue().splitlines()
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("ncalls"))
    print("    calls/req  own us/req  function")
    for line in lines[start + 1:]:
        parts = line.split(None, 5)
        if len(parts) < 6:
            continue
        ncalls = int(parts[0].split("/")[0])
        where = parts[5].replace(str(Path.cwd()) + "/", "")
        where = where.split("site-packages/")[-1]
        print(f"    {ncalls / requests:9.1f}  {float(parts[1]) / requests * 1e6:10.1f}  {where}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--home", type=Path, default=Path("/tmp/mlh-profile"))
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--case", action="append", help="e.g. lr-mlflow-inputs-64")
    parser.add_argument("--reuse", action="store_true", help="keep the registered home")
    parser.add_argument("--cpu", action="store_true",
                        help="CPU per request by thread instead of call counts")
    parser.add_argument("--concurrency", type=int, default=64,
                        help="requests in flight at once (--cpu)")
    parser.add_argument("--rounds", type=int, default=5,
                        help="rounds of --requests per case (--cpu); the lowest is reported")
    args = parser.parse_args()
    key = session_key(args.home, reuse=args.reuse)
    if args.cpu:
        asyncio.run(cpu_run(args.home, key, args.requests, args.concurrency, args.rounds,
                            args.case))
    else:
        asyncio.run(run(args.home, key, args.requests, args.top, args.case))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
