"""Experiment tracking: the real MLflow client against mlharbor and against MLflow's own
tracking server, both on SQLite, in one run.

    .venv/bin/python bench/tracking/run.py [--points 100000] [--single-points N]
                                           [--runs 10000] [--home DIR]

Measures, for each server: logging ``--points`` metric points in batches as
``mlflow.log_metrics`` sends them (100 metrics per call), ``--single-points`` (default: the
same number) one at a time (``mlflow.log_metric``; at MLflow's pace on a busy 2-core machine
100,000 single calls take hours, so a run may size this apart), and ``mlflow.search_runs``
with a metric filter over ``--runs`` runs
(seeded through each server's own store, then searched over HTTP; median of 5). MLflow 3.17.2
runs from its own venv under bench/.peers/ (made once). The same workload against a server
that stores nothing (``client floor``) measures the MLflow client's own share, so the table
also gives each server's own time above that floor. Prints a table and writes JSON to
bench/results/tracking.json. Targets (issue 16): logging >= 5x faster, search < 1/10 of
MLflow's time.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PEER = ROOT / "bench" / ".peers" / "mlflow-tracking"
MLFLOW = "mlflow==3.17.2"
KEYS = 100  # metrics per mlflow.log_metrics call

SERVE_MLHARBOR = """
import sys, uvicorn
from mlharbor.api.app import create_app
from mlharbor.bootstrap import open_identities, open_registry
from mlharbor.settings import Settings
s = Settings(home=sys.argv[1])  # default limits: MLflow logging has its own bucket
reg = open_registry(s)
ids = open_identities(reg)
ids.create_identity("bench", grants=["admin"], actor="bench")
print(ids.create_key("bench", actor="bench")[1], flush=True)
uvicorn.run(create_app(s, registry=reg), host="127.0.0.1", port=int(sys.argv[2]),
            log_level="warning")
"""

# The MLflow client's own cost: a server that stores nothing and answers every call at once
# with the smallest reply the client accepts (search: mlharbor's recorded reply, so the
# client parses the same runs). What it takes is the floor under both servers' figures.
SERVE_FLOOR = """
import sys, uvicorn
SEARCH = open(sys.argv[2], "rb").read()
RUN = (b'{"run": {"info": {"run_id": "' + b"f" * 32 + b'", "experiment_id": "1", '
       b'"status": "RUNNING", "start_time": 1, "artifact_uri": "mlflow-artifacts:/1", '
       b'"lifecycle_stage": "active"}, "data": {}}}')
EXP = (b'{"experiment": {"experiment_id": "1", "name": "floor", "lifecycle_stage": "active", '
       b'"artifact_location": "mlflow-artifacts:/1"}, "experiment_id": "1"}')
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    path = scope["path"]
    body = (SEARCH if path.endswith("runs/search") else RUN if path.endswith(("runs/create",
            "runs/get")) else EXP if "experiments/" in path else b"{}")
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""

SEED_MLFLOW = """
import sys, time
from mlflow.entities import Metric
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
store = SqlAlchemyStore(sys.argv[1], sys.argv[2])
eid = store.create_experiment("search")
for i in range(int(sys.argv[3])):
    run = store.create_run(eid, "bench", int(time.time() * 1000), [], f"r{i}")
    store.log_batch(run.info.run_id, [Metric("m", (i % 100) / 100, 0, 0)], [], [])
print(eid)
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[Any], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listened on {port}")


def ensure_peer() -> Path:
    marker = PEER / ".bench-ready"
    if marker.exists() and marker.read_text() == MLFLOW:
        return PEER
    print(f"setting up {PEER} ({MLFLOW}) ...", flush=True)
    if not (PEER / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(PEER)], check=True)
    subprocess.run([str(PEER / "bin" / "pip"), "install", "-q", MLFLOW], check=True)
    marker.write_text(MLFLOW)
    return PEER


def seed_mlharbor(home: Path, runs: int) -> str:
    from mlharbor.bootstrap import open_registry
    from mlharbor.core.runs import MetricPoint
    from mlharbor.settings import Settings
    from mlharbor.tracking.store import TrackingStore

    reg = open_registry(Settings(home=home))
    try:
        store = TrackingStore(reg.store.db)
        eid = store.create_experiment("search").experiment_id
        for i in range(runs):
            run = store.create_run(eid, run_name=f"r{i}")
            store.log_batch(run.run_id, metrics=[MetricPoint("m", (i % 100) / 100, 0, 0)])
        return eid
    finally:
        reg.close()


def workload(url: str, token: str | None, points: int, single: int, search_eid: str
             ) -> dict[str, float]:
    import mlflow

    if token:
        os.environ["MLFLOW_TRACKING_TOKEN"] = token
    else:
        os.environ.pop("MLFLOW_TRACKING_TOKEN", None)
    mlflow.set_tracking_uri(url)
    mlflow.set_experiment(f"bench-{time.time_ns()}")
    out: dict[str, float] = {}
    with mlflow.start_run():
        start = time.perf_counter()
        for step in range(points // KEYS):
            mlflow.log_metrics({f"k{k}": step * 0.001 + k for k in range(KEYS)}, step=step)
        out["batched_s"] = time.perf_counter() - start
        out["batched_load"] = os.getloadavg()[0]
        start = time.perf_counter()
        for step in range(single):
            mlflow.log_metric("single", step * 0.001, step=step)
        out["single_s"] = time.perf_counter() - start
        out["single_ms_per_call"] = out["single_s"] / max(single, 1) * 1000
        out["single_load"] = os.getloadavg()[0]
    times = []
    for _ in range(5):
        start = time.perf_counter()
        found = mlflow.search_runs([search_eid], filter_string="metrics.m > 0.9",
                                   max_results=50000, output_format="list")
        times.append(time.perf_counter() - start)
    out["search_s"] = statistics.median(times)
    out["search_hits"] = float(len(found))
    out["search_load"] = os.getloadavg()[0]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--single-points", type=int, default=None,
                        help="points logged one at a time (default: --points)")
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--home", type=Path, default=None)
    args = parser.parse_args()
    single = args.points if args.single_points is None else args.single_points
    home = args.home or Path(tempfile.mkdtemp(prefix="mlh-tracking-bench-"))
    peer = ensure_peer()
    results: dict[str, dict[str, float]] = {}
    procs: list[subprocess.Popen[Any]] = []
    try:
        print(f"seeding {args.runs} runs in each store ...", flush=True)
        mlh_eid = seed_mlharbor(home / "mlharbor", args.runs)
        db = f"sqlite:///{home / 'mlflow.db'}"
        seeded = subprocess.run([str(peer / "bin" / "python"), "-c", SEED_MLFLOW, db,
                                 str(home / "mlflow-artifacts"), str(args.runs)],
                                capture_output=True, text=True, check=True)
        mlf_eid = seeded.stdout.strip().splitlines()[-1]
        port = free_port()
        mlh = subprocess.Popen([sys.executable, "-c", SERVE_MLHARBOR, str(home / "mlharbor"),
                                str(port)], stdout=subprocess.PIPE, text=True)
        procs.append(mlh)
        token = (mlh.stdout.readline() if mlh.stdout else "").strip()
        wait_port(port, mlh)
        results["mlharbor"] = workload(f"http://127.0.0.1:{port}", token, args.points,
                                       single, mlh_eid)
        import httpx

        reply = httpx.post(f"http://127.0.0.1:{port}/api/2.0/mlflow/runs/search", json={
            "experiment_ids": [mlh_eid], "filter": "metrics.m > 0.9", "max_results": 50000},
            headers={"Authorization": f"Bearer {token}"}, timeout=60).content
        (home / "search-reply.json").write_bytes(reply)
        port3 = free_port()
        floor = subprocess.Popen([sys.executable, "-c", SERVE_FLOOR, str(port3),
                                  str(home / "search-reply.json")])
        procs.append(floor)
        wait_port(port3, floor)
        results["client floor"] = workload(f"http://127.0.0.1:{port3}", None, args.points,
                                           single, mlh_eid)
        port2 = free_port()
        env = {**os.environ, "PATH": f"{peer / 'bin'}:{os.environ.get('PATH', '')}"}
        mlf = subprocess.Popen([str(peer / "bin" / "mlflow"), "server", "--backend-store-uri",
                                db, "--artifacts-destination", str(home / "mlflow-artifacts"),
                                "--host", "127.0.0.1", "--port", str(port2), "--workers", "1"],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(mlf)
        wait_port(port2, mlf)
        results["mlflow"] = workload(f"http://127.0.0.1:{port2}", None, args.points, single,
                                     mlf_eid)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)
    a, b, f = results["mlharbor"], results["mlflow"], results["client floor"]
    print(f"{'':28}{'mlharbor':>12}{'mlflow':>12}{'speed-up':>10}{'client floor':>14}"
          f"{'server-side speed-up':>22}")
    for key, label in (("batched_s", f"{args.points} points, batched"),
                       ("single_s", f"{single} points, one by one"),
                       ("search_s", f"search over {args.runs} runs")):
        server = (b[key] - f[key]) / max(a[key] - f[key], 1e-9)
        print(f"{label:28}{a[key]:>11.3f}s{b[key]:>11.3f}s{b[key] / a[key]:>9.1f}x"
              f"{f[key]:>13.3f}s{server:>21.1f}x")
    print(f"search hits: mlharbor {a['search_hits']:.0f}, mlflow {b['search_hits']:.0f}")
    print(f"one by one: mlharbor {a['single_ms_per_call']:.2f} ms/call, mlflow "
          f"{b['single_ms_per_call']:.2f} ms/call; 1-min load average at the end of each "
          f"phase: " + ", ".join(f"{k} {a[k]:.1f}/{b[k]:.1f}" for k in
                                 ("batched_load", "single_load", "search_load")))
    out = ROOT / "bench" / "results" / "tracking.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args) | {"home": str(home)}, "results": results},
                              indent=2))


if __name__ == "__main__":
    main()
