"""Experiment tracking: the real MLflow client against mlharbor and against MLflow's own
tracking server, both on SQLite, in one run.

    .venv/bin/python bench/tracking/run.py [--points 100000] [--single-points N]
                                           [--runs 10000] [--rounds 3] [--replay-max 1000]
                                           [--home DIR]

Three phases, for each server: logging ``--points`` metric points in batches as
``mlflow.log_metrics`` sends them (100 metrics per call), ``--single-points`` (default: the
same number) one at a time (``mlflow.log_metric``; at MLflow's pace on a busy 2-core machine
100,000 single calls take hours, so a run may size this apart), and ``mlflow.search_runs``
with a metric filter over ``--runs`` runs (seeded through each server's own store; 5 searches
a round). MLflow 3.17.2 runs from its own venv under bench/.peers/ (made once). A third
server that stores nothing (``client floor``) runs the same workload: what the MLflow client
itself costs.

Each phase is measured twice, every round (``--rounds``, servers in a rotating order):

* end to end, through the real MLflow client (what a user waits for);
* the server's own answer time for the very same HTTP requests: every request the client
  sent in the phase is recorded (bytes as sent) and replayed on one keep-alive connection
  (:mod:`replay`), logging into a fresh run of the same experiment, at most
  ``--replay-max`` requests a phase (per-call figures, and the phase's total when all were
  replayed). Replayed to the no-op server, the same requests give the replay's own share.

Prints medians over rounds with every round shown, and writes everything to
bench/results/tracking.json. Targets (issue 16): logging >= 5x faster, search answered in
under 1/10 of MLflow's time.
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

from replay import Recorder, fresh_run, replay, run_id_of

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


PHASES = ("batched", "single", "search")
SEARCH = {"filter_string": "metrics.m > 0.9", "max_results": 50000}


def workload(url: str, token: str | None, points: int, single: int, search_eid: str,
             recorder: Recorder, *, searches: int = 5) -> dict[str, Any]:
    """One round through the MLflow client: seconds per phase, calls, load averages; the
    phases' requests go to ``recorder``."""
    import mlflow

    if token:
        os.environ["MLFLOW_TRACKING_TOKEN"] = token
    else:
        os.environ.pop("MLFLOW_TRACKING_TOKEN", None)
    mlflow.set_tracking_uri(url)
    experiment = mlflow.set_experiment(f"bench-{time.time_ns()}")
    out: dict[str, Any] = {"experiment_id": experiment.experiment_id}
    with mlflow.start_run():
        with recorder.phase("batched"):
            start = time.perf_counter()
            for step in range(points // KEYS):
                mlflow.log_metrics({f"k{k}": step * 0.001 + k for k in range(KEYS)}, step=step)
            out["batched_s"] = time.perf_counter() - start
        out["batched_load"] = os.getloadavg()[0]
        with recorder.phase("single"):
            start = time.perf_counter()
            for step in range(single):
                mlflow.log_metric("single", step * 0.001, step=step)
            out["single_s"] = time.perf_counter() - start
        out["single_load"] = os.getloadavg()[0]
    times = []
    with recorder.phase("search"):
        for _ in range(searches):
            start = time.perf_counter()
            found = mlflow.search_runs([search_eid], output_format="list", **SEARCH)
            times.append(time.perf_counter() - start)
    out["search_s"] = statistics.median(times)
    out["search_hits"] = len(found)
    out["search_load"] = os.getloadavg()[0]
    out["calls"] = {phase: len(recorder.phases.get(phase, [])) for phase in PHASES}
    return out


def warm_up(url: str, token: str | None, search_eid: str) -> None:
    """A few calls of every phase, not measured."""
    import mlflow

    workload(url, token, KEYS * 3, 20, search_eid, Recorder(), searches=1)
    mlflow.search_runs([search_eid], output_format="list", max_results=10)


def one_round(url: str, token: str | None, args: argparse.Namespace, single: int,
              search_eid: str) -> dict[str, Any]:
    """End to end through the client, then the server's answers to the same requests."""
    recorder = Recorder()
    with recorder.installed():
        out = workload(url, token, args.points, single, search_eid, recorder)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    answers: dict[str, Any] = {}
    for phase in ("batched", "single"):
        sent = recorder.phases[phase]
        old = run_id_of(sent)
        if old is None:
            continue
        new = fresh_run(url, headers, out["experiment_id"])
        answers[phase] = replay(url, sent, swap=(old, new), limit=args.replay_max).as_dict()
        # The same requests again, at the client's own pace: its work between two calls
        # (the phase's time less what it waited in Session.send) as busy time between them.
        pace = max(out[f"{phase}_s"] - recorder.waited.get(phase, 0.0), 0.0) / len(sent)
        new = fresh_run(url, headers, out["experiment_id"])
        answers[f"{phase}_paced"] = replay(url, sent, swap=(old, new), limit=args.replay_max,
                                           pace_s=pace).as_dict()
    answers["search"] = replay(url, recorder.phases["search"]).as_dict()
    out["server"] = answers
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--single-points", type=int, default=None,
                        help="points logged one at a time (default: --points)")
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--replay-max", type=int, default=1000,
                        help="requests replayed per logging phase (the first ones)")
    parser.add_argument("--home", type=Path, default=None)
    args = parser.parse_args()
    single = args.points if args.single_points is None else args.single_points
    home = args.home or Path(tempfile.mkdtemp(prefix="mlh-tracking-bench-"))
    peer = ensure_peer()
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in SERVERS}
    procs: list[subprocess.Popen[Any]] = []
    try:
        print(f"seeding {args.runs} runs in each store ...", flush=True)
        urls, tokens, eids = start_servers(home, peer, args.runs, procs)
        for name in SERVERS:  # first requests: lazy imports, statement compilation, key checks
            warm_up(urls[name], tokens[name], eids[name])
        for i in range(args.rounds):
            order = SERVERS[i % 3:] + SERVERS[:i % 3]
            for name in order:
                print(f"round {i + 1}/{args.rounds}: {name} ...", flush=True)
                rounds[name].append(one_round(urls[name], tokens[name], args, single,
                                              eids[name]))
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)
    report(rounds, args, single)
    out = ROOT / "bench" / "results" / "tracking.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args) | {"home": str(home)}, "rounds": rounds},
                              indent=2, default=str))


def report(rounds: dict[str, list[dict[str, Any]]], args: argparse.Namespace,
           single: int) -> None:
    """Medians over rounds, each round beside them: end to end, and each server's own
    answers to the same requests."""
    a, b, f = rounds["mlharbor"], rounds["mlflow"], rounds["client floor"]
    labels = {"batched": f"{args.points} points, batched", "single":
              f"{single} points, one by one", "search": f"search, {args.runs} runs"}

    def med(values: list[float]) -> float:
        return statistics.median(values)

    def each(values: list[float], scale: float = 1.0) -> str:
        return "/".join(f"{v * scale:.3g}" for v in values)

    print("\nEnd to end through the MLflow client (seconds; search: median of 5 a round)")
    print(f"{'':30}{'mlharbor':>10}{'mlflow':>10}{'speed-up':>10}{'floor':>9}"
          f"{'max (floor)':>13}   rounds: mlharbor | mlflow | floor")
    for phase in PHASES:
        key = f"{phase}_s"
        x, y, z = ([r[key] for r in rs] for rs in (a, b, f))
        print(f"{labels[phase]:30}{med(x):>10.3f}{med(y):>10.3f}{med(y) / med(x):>9.1f}x"
              f"{med(z):>9.3f}{med(y) / med(z):>12.1f}x   {each(x)} | {each(y)} | {each(z)}")
    print("\nThe servers' own answers to the same requests, replayed (ms per request; median,"
          " then mean (e2e figures are means), then at the client's pace, mean)")
    print(f"{'':30}{'mlharbor':>10}{'mlflow':>10}{'speed-up':>10}{'replay':>9}"
          f"{'net':>8}   rounds: mlharbor | mlflow | replay to the floor")
    rows = [(phase, "median_s", labels[phase]) for phase in PHASES] + [
        (phase, "mean_s", f"  {phase}, mean") for phase in PHASES if phase != "search"] + [
        (f"{phase}_paced", "mean_s", f"  {phase}, client's pace") for phase in PHASES
        if phase != "search"]
    for phase, stat, label in rows:
        x, y, z = ([r["server"][phase][stat] for r in rs
                    if phase in r["server"] and stat in r["server"][phase]]
                   for rs in (a, b, f))
        if not (x and y and z):
            continue
        net = (med(y) - med(z)) / max(med(x) - med(z), 1e-9)
        print(f"{label:30}{med(x) * 1e3:>10.3f}{med(y) * 1e3:>10.3f}"
              f"{med(y) / med(x):>9.1f}x{med(z) * 1e3:>9.3f}{net:>7.1f}x   "
              f"{each(x, 1e3)} | {each(y, 1e3)} | {each(z, 1e3)}")
    replayed = {p: a[0]["server"][p]["calls"] for p in PHASES if p in a[0]["server"]}
    paces = {p: round(a[0]["server"][f"{p}_paced"]["pace_s"] * 1e3, 2) for p in PHASES
             if f"{p}_paced" in a[0]["server"]}
    print(f"client's own work between calls (ms, mlharbor's first round): {paces}")
    print(f"\nreplayed per round: {replayed} (of {a[0]['calls']}); search hits: mlharbor "
          f"{a[0]['search_hits']}, mlflow {b[0]['search_hits']}")
    for phase in PHASES:
        if phase == "search":
            continue
        calls = a[0]["calls"][phase]
        per_call = [r[f"{phase}_s"] / max(r["calls"][phase], 1) * 1e3 for r in a]
        print(f"{phase}: {calls} calls; end to end ms per call mlharbor {med(per_call):.2f}, "
              f"mlflow {med([r[f'{phase}_s'] / max(r['calls'][phase], 1) * 1e3 for r in b]):.2f}"
              f", floor {med([r[f'{phase}_s'] / max(r['calls'][phase], 1) * 1e3 for r in f]):.2f}")
    print("1-min load average at the end of each phase (mlharbor/mlflow per round): " +
          "; ".join(", ".join(f"{p} {ra[f'{p}_load']:.1f}/{rb[f'{p}_load']:.1f}"
                              for p in PHASES) for ra, rb in zip(a, b, strict=True)))


SERVERS = ["mlharbor", "client floor", "mlflow"]


def start_servers(home: Path, peer: Path, runs: int, procs: list[subprocess.Popen[Any]]
                  ) -> tuple[dict[str, str], dict[str, str | None], dict[str, str]]:
    """The three servers, seeded (their URLs, API tokens and search experiments)."""
    import httpx

    mlh_eid = seed_mlharbor(home / "mlharbor", runs)
    db = f"sqlite:///{home / 'mlflow.db'}"
    seeded = subprocess.run([str(peer / "bin" / "python"), "-c", SEED_MLFLOW, db,
                             str(home / "mlflow-artifacts"), str(runs)],
                            capture_output=True, text=True, check=True)
    mlf_eid = seeded.stdout.strip().splitlines()[-1]
    port = free_port()
    mlh = subprocess.Popen([sys.executable, "-c", SERVE_MLHARBOR, str(home / "mlharbor"),
                            str(port)], stdout=subprocess.PIPE, text=True)
    procs.append(mlh)
    token = (mlh.stdout.readline() if mlh.stdout else "").strip()
    wait_port(port, mlh)
    reply = httpx.post(f"http://127.0.0.1:{port}/api/2.0/mlflow/runs/search", json={
        "experiment_ids": [mlh_eid], "filter": SEARCH["filter_string"],
        "max_results": SEARCH["max_results"]},
        headers={"Authorization": f"Bearer {token}"}, timeout=60).content
    (home / "search-reply.json").write_bytes(reply)
    port3 = free_port()
    floor = subprocess.Popen([sys.executable, "-c", SERVE_FLOOR, str(port3),
                              str(home / "search-reply.json")])
    procs.append(floor)
    wait_port(port3, floor)
    port2 = free_port()
    env = {**os.environ, "PATH": f"{peer / 'bin'}:{os.environ.get('PATH', '')}"}
    mlf = subprocess.Popen([str(peer / "bin" / "mlflow"), "server", "--backend-store-uri",
                            db, "--artifacts-destination", str(home / "mlflow-artifacts"),
                            "--host", "127.0.0.1", "--port", str(port2), "--workers", "1"],
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs.append(mlf)
    wait_port(port2, mlf)
    return ({"mlharbor": f"http://127.0.0.1:{port}", "client floor":
             f"http://127.0.0.1:{port3}", "mlflow": f"http://127.0.0.1:{port2}"},
            {"mlharbor": token, "client floor": None, "mlflow": None},
            {"mlharbor": mlh_eid, "client floor": mlh_eid, "mlflow": mlf_eid})


if __name__ == "__main__":
    main()
