"""Floor vs our server (and, with --peers, MLflow and BentoML), same model, same rows.

    .venv/bin/python bench/serving/run.py [--seconds 10] [--home /tmp/mlh-bench]
                                          [--peers] [--batching-compare] [--log-compare]
                                          [--rounds N] [--only floor-lr,mlharbor-lr]

Trains RandomForestClassifier(n_estimators=100, max_depth=8) on 20 numeric features,
registers it (skops + ONNX after the parity check), writes 1-row and 64-row payloads, then
for each server: start it pinned to core 0 (the launcher is pinned, so every child process
inherits the mask), time launch -> first correct prediction (polling every 20 ms), warm up,
run wrk (64 connections, pinned to core 1) per payload, read the CPU time of the server's
whole process tree per request from /proc, stop its process group. Our server runs with its
defaults (auth with an API key, micro-batching, metrics, the record sink); only the per-key
rate limit is lifted, since one key drives all the load.

--peers: MLflow 3.17.2 (`mlflow models serve --env-manager local`, the model saved with
mlflow.sklearn.save_model) and BentoML 1.4.40 (bento_service.py, a @bentoml.service calling
predict_proba), each in its own venv under bench/.peers/ (created once, then reused), with
the scikit-learn version of this venv, each fed in its own request format.

--batching-compare: the same model registered with runtime="native" (scikit-learn in the
server, no ONNX) served by mlharbor with micro-batching on, then off
(MLHARBOR_SERVING__BATCHING=false); 1-row requests at 64 connections.

--log-compare: mlharbor again with the prediction log off
(MLHARBOR_MONITORING__LOG_PREDICTIONS=false; metrics stay on), for the on/off ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pickle
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
BIN = Path(sys.executable).parent
PEERS = HERE.parent / ".peers"  # git-ignored
PEER_PACKAGES = {"mlflow": ["mlflow==3.17.2"], "bentoml": ["bentoml==1.4.40"]}
COLUMNS = [f"f{i}" for i in range(20)]
LUA = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
{auth}
local f = io.open("{body}", "r"); wrk.body = f:read("*a"); f:close()
"""


@dataclass
class Server:
    name: str
    cmd: Callable[[int], list[str]]
    env: dict[str, str]
    path: str
    key: str | None = None
    payload: str = "rows"  # payload files: HOME/{payload}{rows}.json
    rows: tuple[int, ...] = (1, 64)
    cwd: Path | None = None
    model: str = "churn"  # whose expected answer the launch probe checks


@dataclass
class Result:
    name: str
    rows: int
    rps: float
    cpu_us: float
    p50_ms: float
    p99_ms: float
    errors: str = ""


@dataclass
class Run:
    results: list[Result] = field(default_factory=list)
    launch_s: dict[str, float] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    # name -> (idle RSS after the first correct answer, RSS after the load, sampled peak), MB,
    # of the whole process tree (peers fork workers; ours forks the log compactor on first
    # use) and of the launched process alone (for ours and the floor, the server itself)
    rss_mb: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    rss_own_mb: dict[str, tuple[float, float, float]] = field(default_factory=dict)

    def get(self, name: str, rows: int) -> Result | None:
        return next((r for r in self.results if r.name == name and r.rows == rows), None)


def compile_bytecode() -> None:
    """Byte-compile mlharbor's own modules, as installing a wheel does: from a source checkout
    under PYTHONDONTWRITEBYTECODE=1 every launch would otherwise compile ~100 modules from
    source (a tenth of a launch), while the floor's and the peers' libraries come compiled."""
    import mlharbor

    subprocess.run([sys.executable, "-m", "compileall", "-q", str(Path(mlharbor.__file__).parent)],
                   env={**os.environ, "PYTHONDONTWRITEBYTECODE": ""}, check=True,
                   stdout=subprocess.DEVNULL)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ensure_peer(name: str) -> Path:
    """bench/.peers/NAME: a venv with the peer and this venv's scikit-learn, made once."""
    import pandas
    import sklearn

    venv = PEERS / name
    # The model's scikit-learn; pandas too, which both peers' code paths build frames with.
    wanted = [*PEER_PACKAGES[name], f"scikit-learn=={sklearn.__version__}",
              f"pandas=={pandas.__version__}"]
    marker = venv / ".bench-ready"
    if marker.exists() and marker.read_text() == " ".join(wanted):
        return venv
    print(f"setting up {venv} ({' '.join(wanted)}) ...", flush=True)
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    done = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", *wanted],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"pip install {' '.join(wanted)} failed in {venv}:\n"
                           f"{done.stderr[-3000:]}")
    marker.write_text(" ".join(wanted))
    return venv


def peer_env(venv: Path) -> dict[str, str]:
    return {"PATH": f"{venv / 'bin'}:{os.environ.get('PATH', '')}", "VIRTUAL_ENV": str(venv)}


Expected = dict[str, tuple[list[float], Any]]  # model -> (first row's probabilities, label)


def prepare(home: Path, native: bool) -> tuple[dict[str, Path], str, Expected]:
    """Train and register ``churn`` (the forest) and ``lr`` (LogisticRegression, the cheap
    model) on the same 20 features; their ONNX files (the floors'), pickles (the peers'),
    payloads and expected first-row answers."""
    import numpy as np
    import pandas as pd
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    from mlharbor.bootstrap import open_identities, open_registry
    from mlharbor.registry.bundles import register_model
    from mlharbor.settings import Settings

    shutil.rmtree(home, ignore_errors=True)
    rng = np.random.default_rng(0)
    x = pd.DataFrame(rng.normal(size=(5000, 20)), columns=COLUMNS)
    y = ((x.f0 + x.f1 - x.f2 + rng.normal(scale=0.5, size=5000)) > 0).astype(int)
    model = RandomForestClassifier(n_estimators=100, max_depth=8, random_state=0).fit(x, y)
    cheap = LogisticRegression(max_iter=1000).fit(x, y)
    settings = Settings(home=home)
    registry = open_registry(settings)
    for name, fitted in (("churn", model), ("lr", cheap)):
        result = register_model(registry, name, fitted, settings=settings,
                                sample_input=x.head(20))
        print(result.summary())
        registry.set_alias(name, "champion", 1)
    if native:
        # The same model with scikit-learn itself in the server: what micro-batching is for.
        result = register_model(registry, "churnnative", model, settings=settings,
                                sample_input=x.head(20), runtime="native")
        print(result.summary())
        registry.set_alias("churnnative", "champion", 1)
    key = open_identities(registry).init_admin("bench", actor="bench")[1]
    onnx = {name: next(registry.download(registry.get_version(f"{name}@champion"))
                       .rglob("*.onnx")) for name in ("churn", "lr")}
    (home / "model.pkl").write_bytes(pickle.dumps(model))  # for the peers' own save_model
    (home / "lr.pkl").write_bytes(pickle.dumps(cheap))
    for rows in (1, 64):
        sample = x.sample(rows, random_state=rows)
        records = sample.to_dict(orient="records")
        (home / f"rows{rows}.json").write_text(json.dumps(records))
        (home / f"mlflow{rows}.json").write_text(json.dumps(
            {"dataframe_split": sample.to_dict(orient="split", index=False)}))
        (home / f"bentoml{rows}.json").write_text(json.dumps({"rows": records}))
    first = x.sample(1, random_state=1)
    expected = {name: (m.predict_proba(first)[0].tolist(), m.predict(first)[0].item())
                for name, m in (("churn", model), ("lr", cheap))}
    return onnx, key, expected


def cpu_seconds(root: int) -> float:
    """User + system CPU of ``root`` and every live descendant (peers fork workers)."""
    parent: dict[int, int] = {}
    cpu: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent[int(entry.name)] = int(fields[1])
        cpu[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    total = 0.0
    for pid, seconds in cpu.items():
        walk = pid
        while walk > 1 and walk != root:
            walk = parent.get(walk, 0)
        if walk == root:
            total += seconds
    return total


def own_rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` alone, MB (0 once it is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    line = next((x for x in status.splitlines() if x.startswith("VmRSS:")), "VmRSS: 0 kB")
    return int(line.split()[1]) / 1024


def settled_rss_mb(root: int, *, least_s: float = 1.0, most_s: float = 10.0) -> float:
    """The tree's RSS once it is at rest: after ``least_s``, three samples 0.5 s apart
    within 1 MB of each other (at most ``most_s``, said when reached). A child still starting
    (mlharbor's log compactor, started once the first answers are journaled) is counted
    whole, not half-imported: at 1 s flat it was caught at 36 of its ~100 MB."""
    time.sleep(least_s)
    deadline = time.monotonic() + most_s - least_s
    samples = [rss_mb(root)]
    while time.monotonic() < deadline:
        time.sleep(0.5)
        samples = [*samples[-2:], rss_mb(root)]
        if len(samples) == 3 and max(samples) - min(samples) < 1.0:
            return samples[-1]
    print(f"  (idle RSS still moving after {most_s:.0f} s: {samples})", flush=True)
    return samples[-1]


def rss_mb(root: int) -> float:
    """Resident memory of ``root`` and every live descendant, MB."""
    parent: dict[int, int] = {}
    rss: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        parent[int(entry.name)] = int(fields.get("PPid", "0").strip() or 0)
        rss[int(entry.name)] = int(fields.get("VmRSS", "0 kB").split()[0]) / 1024
    total = 0.0
    for pid, mb in rss.items():
        walk = pid
        while walk > 1 and walk != root:
            walk = parent.get(walk, 0)
        if walk == root:
            total += mb
    return total


class PeakSampler:
    """Samples a process tree's RSS (and its root's) every 0.25 s while load runs: peaks."""

    def __init__(self, root: int) -> None:
        import threading

        self.root = root
        self.peak = 0.0
        self.own_peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            self.peak = max(self.peak, rss_mb(self.root))
            self.own_peak = max(self.own_peak, own_rss_mb(self.root))

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def to_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not match:
        return float("nan")
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}[match.group(2)]
    return float(match.group(1)) * scale


def wrk(url: str, body: Path, seconds: int, key: str | None,
        lua: Path) -> tuple[float, float, float, str]:
    auth = f'wrk.headers["Authorization"] = "Bearer {key}"' if key else ""
    lua.write_text(LUA.format(auth=auth, body=body))
    out = subprocess.run(["taskset", "-c", "1", "wrk", "-t1", "-c64", f"-d{seconds}s",
                          "--timeout", "10s", "--latency", "-s", str(lua), url],
                         capture_output=True, text=True, check=True).stdout
    with (lua.parent / "wrk.log").open("a") as log:
        log.write(f"== {url} {body.name} {seconds}s\n{out}\n")
    if "Non-2xx" in out:
        raise RuntimeError(f"non-2xx answers:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    # Anchored: a "+/- Stdev" column such as "61.50%" also contains "50%".
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    errors = re.search(r"Socket errors:.*", out)
    done = re.search(r"(\d+) requests in", out)
    if done and int(done.group(1)) == 0:
        # A server slower than 64 requests per run answers none within it: not "0 req/s".
        return (float("nan"), float("nan"), float("nan"),
                f"no request completed within {seconds}s at 64 connections: use a longer "
                "--seconds")
    return (rps, to_ms(p50.group(1)) if p50 else float("nan"),
            to_ms(p99.group(1)) if p99 else float("nan"), errors.group(0) if errors else "")


def foreign_wrk() -> int:
    """wrk processes running now: between our own runs, they belong to someone else."""
    count = 0
    for comm in Path("/proc").glob("[0-9]*/comm"):
        with contextlib.suppress(OSError):
            count += comm.read_text().strip() == "wrk"
    return count


def correct(answer: Any, expected: tuple[list[float], Any]) -> bool:
    """The first row's class probabilities (or, from a server answering the model's default
    ``predict``, as MLflow does, its label), whatever the server's answer looks like."""
    if not isinstance(answer, dict):
        return False
    proba, label = expected
    rows = answer.get("probabilities", answer.get("predictions"))
    if not isinstance(rows, list) or not rows:
        return False
    first = rows[0]
    if isinstance(first, int | float) and not isinstance(first, bool):
        return first == label
    expected = proba
    if isinstance(first, dict):
        first = list(first.values())
    if not isinstance(first, list) or len(first) != len(proba):
        return False
    return all(abs(float(a) - b) <= 1e-3 for a, b in zip(first, proba, strict=True))


def serve(server: Server, port: int, home: Path,
          expected: Expected) -> tuple[subprocess.Popen[bytes], float]:
    """Start pinned to core 0; seconds from launch to the first correct 1-row prediction."""
    body = (home / f"{server.payload}1.json").read_bytes()
    headers = {"Content-Type": "application/json"}
    if server.key:
        headers["Authorization"] = f"Bearer {server.key}"
    url = f"http://127.0.0.1:{port}{server.path}"
    log = (home / f"{server.name}.log").open("wb")
    start = time.monotonic()
    proc = subprocess.Popen(["taskset", "-c", "0", *server.cmd(port)],
                            env={**os.environ, **server.env}, cwd=server.cwd,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = start + 180
    tick = start
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited with {proc.returncode}; "
                               f"see {home / (server.name + '.log')}")
        try:
            request = urllib.request.Request(url, data=body, headers=headers, method="POST")
            with urllib.request.urlopen(request, timeout=2) as response:
                if response.status == 200 and correct(json.loads(response.read()),
                                                      expected[server.model]):
                    return proc, time.monotonic() - start
        except (OSError, urllib.error.HTTPError, ValueError):
            pass
        tick += 0.02
        time.sleep(max(0.0, tick - time.monotonic()))
    stop(proc)
    raise RuntimeError(f"{server.name}: no correct prediction within 180 s; "
                       f"see {home / (server.name + '.log')}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's own process group (it was started in a new session)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    except ProcessLookupError:
        pass


def measure(server: Server, home: Path, seconds: int, expected: Expected, run: Run) -> None:
    lua = home / "post.lua"
    port = free_port()
    try:
        proc, launch = serve(server, port, home, expected)
    except RuntimeError as exc:
        run.failures[server.name] = str(exc)
        print(f"{server.name}: FAILED: {exc}", flush=True)
        return
    run.launch_s[server.name] = launch
    run.ports[server.name] = port
    idle = settled_rss_mb(proc.pid)  # idle RSS: the server answered once, its tree at rest
    own_idle = own_rss_mb(proc.pid)
    peak, own_peak = idle, own_idle
    print(f"{server.name:22s} launch -> first correct prediction: {launch:6.2f} s", flush=True)
    try:
        url = f"http://127.0.0.1:{port}{server.path}"
        for rows in server.rows:
            body = home / f"{server.payload}{rows}.json"
            wrk(url, body, 2, server.key, lua)  # warm-up
            others = foreign_wrk()
            before = cpu_seconds(proc.pid)
            with PeakSampler(proc.pid) as sampler:
                rps, p50, p99, errors = wrk(url, body, seconds, server.key, lua)
            peak = max(peak, sampler.peak)
            own_peak = max(own_peak, sampler.own_peak)
            others = max(others, foreign_wrk())
            if others:
                errors = f"{errors} [another wrk was running: contended]".strip()
            used = cpu_seconds(proc.pid) - before
            cpu_us = used / (rps * seconds) * 1e6 if rps else float("nan")
            run.results.append(Result(server.name, rows, rps, cpu_us, p50, p99, errors))
            print(f"{server.name:22s} {rows:3d} row(s): {rps:8.0f} req/s, "
                  f"{cpu_us:7.0f} us CPU/request, p50 {p50:8.2f} ms p99 {p99:8.2f} ms"
                  f"{'  ' + errors if errors else ''}", flush=True)
        time.sleep(1.0)
        after, own_after = rss_mb(proc.pid), own_rss_mb(proc.pid)
        run.rss_mb[server.name] = (idle, after, max(peak, after))
        run.rss_own_mb[server.name] = (own_idle, own_after, max(own_peak, own_after))
        print(f"{server.name:22s} RSS (tree) idle {idle:.0f} MB, after load {after:.0f} MB, "
              f"sampled peak {max(peak, after):.0f} MB; launched process alone "
              f"{own_idle:.0f} / {own_after:.0f} / {max(own_peak, own_after):.0f} MB",
              flush=True)
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        run.failures[server.name] = str(exc)
        print(f"{server.name}: FAILED: {exc}", flush=True)
    finally:
        stop(proc)


def peer_servers(home: Path, which: list[str]) -> list[Server]:
    """MLflow and/or BentoML serving the forest (``mlflow``, ``bentoml``) and the linear model
    (``mlflow-lr``, ``bentoml-lr``), each saved with the peer's own ``save_model``."""
    servers = []
    saves = (home / "peer_save.log").open("ab")  # MLflow's pip probing is noisy
    models = (("churn", "model.pkl", ""), ("lr", "lr.pkl", "-lr"))
    if "mlflow" in which:
        mlflow = ensure_peer("mlflow")
        for model, pkl, suffix in models:
            model_dir = home / f"mlflow-model{suffix}"
            subprocess.run([str(mlflow / "bin" / "python"), str(HERE / "peer_save.py"),
                            "mlflow", str(home / pkl), str(model_dir)], check=True,
                           env={**os.environ, **peer_env(mlflow)}, stdout=saves, stderr=saves)
            servers.append(Server(
                f"mlflow{suffix}",
                lambda port, d=model_dir: [str(mlflow / "bin" / "mlflow"), "models", "serve",
                                           "-m", str(d), "--env-manager", "local", "-h",
                                           "127.0.0.1", "-p", str(port)],
                peer_env(mlflow), "/invocations", payload="mlflow", model=model))
    if "bentoml" in which:
        bento = ensure_peer("bentoml")
        for model, pkl, suffix in models:
            tag = f"bench_{model}"
            bento_env = {**peer_env(bento), "BENTOML_HOME": str(home / "bentoml-home"),
                         "BENTOML_DO_NOT_TRACK": "True", "BENCH_BENTO_MODEL": f"{tag}:latest"}
            subprocess.run([str(bento / "bin" / "python"), str(HERE / "peer_save.py"),
                            "bentoml", str(home / pkl), tag], check=True,
                           env={**os.environ, **bento_env}, stdout=saves, stderr=saves)
            servers.append(Server(
                f"bentoml{suffix}", lambda port: [str(bento / "bin" / "bentoml"), "serve",
                                                  "bento_service:RandomForest", "--host",
                                                  "127.0.0.1", "--port", str(port)],
                bento_env, "/predict", payload="bentoml", cwd=HERE, model=model))
    return servers


def verdict(value: float, target: float, higher: bool = True) -> str:
    if value != value or target != target:  # nan: not measured, or no target
        return "n/a"
    return "PASS" if (value >= target if higher else value <= target) else "MISS"


def ratios(run: Run) -> list[tuple[str, float, str, float, bool]]:
    """(label, value, goal text, target, higher is better) of one round."""
    def ratio(a: str, b: str, rows: int) -> float:
        ra, rb = run.get(a, rows), run.get(b, rows)
        return ra.rps / rb.rps if ra and rb and rb.rps else float("nan")

    nan = float("nan")
    lines: list[tuple[str, float, str, float, bool]] = []
    for suffix, label in (("", "RF"), ("-lr", "LR")):
        for rows, target in ((1, 0.50), (64, 0.75)):
            lines.append((f"{label} ours / floor req/s, {rows} row(s)",
                          ratio(f"mlharbor{suffix}", f"floor{suffix}", rows),
                          f">= {target:.2f}", target, True))
    for suffix, label in (("", "RF"), ("-lr", "LR")):
        for peer in ("mlflow", "bentoml"):
            for rows in (1, 64):
                lines.append((f"{label} ours / {peer} req/s, {rows} row(s)",
                              ratio(f"mlharbor{suffix}", f"{peer}{suffix}", rows), "info",
                              nan, True))
        for rows in (1, 64):
            ours, theirs = run.get(f"mlharbor{suffix}", rows), run.get(f"mlflow{suffix}", rows)
            value = ours.p99_ms / theirs.p99_ms if ours and theirs and theirs.p99_ms else nan
            lines.append((f"{label} p99 ours / mlflow, {rows} row(s)", value, "<= 0.10", 0.10,
                          False))
        launch = run.launch_s.get(f"mlharbor{suffix}", nan)
        lines.append((f"{label} launch -> first correct prediction, s", launch, "<= 1.00",
                      1.0, False))
        # The server process alone, and the tree: the log compactor is a child started once
        # the first answers are journaled (counted in idle once settled_rss_mb saw it at rest).
        idle, after, _peak = run.rss_own_mb.get(f"mlharbor{suffix}", (nan, nan, nan))
        lines.append((f"{label} RSS after load / idle, server", after / idle if idle else nan,
                      "<= 1.50", 1.5, False))
        idle, after, _peak = run.rss_mb.get(f"mlharbor{suffix}", (nan, nan, nan))
        lines.append((f"{label} RSS after load / idle, tree", after / idle if idle else nan,
                      "<= 1.50", 1.5, False))
    lines.append(("native sklearn, batching on / off, 1 row",
                  ratio("mlharbor-native-batch", "mlharbor-native-nobatch", 1), ">= 5x", 5.0,
                  True))
    for rows in (1, 64):
        lines.append((f"prediction log on / off req/s, {rows} row(s)",
                      ratio("mlharbor", "mlharbor-nolog", rows), ">= 0.90", 0.90, True))
    return lines


def report(runs: list[Run], seconds: int, busy: str) -> None:
    """Each server's median over the rounds, then each ratio's median over the rounds (each
    round's ratio compares servers measured minutes apart, not a whole run apart)."""
    import statistics

    def median(values: list[float]) -> float:
        values = [v for v in values if v == v]
        return statistics.median(values) if values else float("nan")

    print(f"\n== serving bench: {len(runs)} round(s), {seconds}s per wrk run, -t1 -c64, server "
          f"core 0, wrk core 1; {busy}")
    print(f"{'server':22s} {'rows':>4s} {'req/s':>9s} {'p50 ms':>9s} {'p99 ms':>9s} "
          f"{'CPU us/req':>10s} {'launch s':>9s} {'RSS idle/after/peak MB':>23s} "
          f"{'(launched proc alone)':>21s}  (medians over rounds; req/s of every round after)")
    for r in runs[0].results:
        same = [x for run in runs if (x := run.get(r.name, r.rows)) is not None]
        launch = median([run.launch_s[r.name] for run in runs if r.name in run.launch_s])
        rss = [run.rss_mb[r.name] for run in runs if r.name in run.rss_mb]
        memory = "/".join(f"{median([m[i] for m in rss]):.0f}" for i in range(3))
        own = [run.rss_own_mb[r.name] for run in runs if r.name in run.rss_own_mb]
        alone = "/".join(f"{median([m[i] for m in own]):.0f}" for i in range(3))
        print(f"{r.name:22s} {r.rows:4d} {median([x.rps for x in same]):9.0f} "
              f"{median([x.p50_ms for x in same]):9.2f} {median([x.p99_ms for x in same]):9.2f} "
              f"{median([x.cpu_us for x in same]):10.0f} {launch:9.2f} {memory:>23s} "
              f"{alone:>21s}  "
              f"[{' '.join(f'{x.rps:.0f}' for x in same)}]"
              f"{'  ' + r.errors if r.errors else ''}")
    for run in runs:
        for name, why in run.failures.items():
            print(f"{name:22s} FAILED: {why.splitlines()[0]}")
    per_round = [ratios(run) for run in runs]
    print(f"\n{'ratio':42s} {'median':>8s} {'target':>8s}  verdict   rounds")
    for i, (label, _v, goal, target, higher) in enumerate(per_round[0]):
        values = [lines[i][1] for lines in per_round]
        value = median(values)
        each = " ".join(f"{v:.2f}" for v in values)
        print(f"{label:42s} {value:8.2f} {goal:>8s}  {verdict(value, target, higher):7s}  "
              f"{each}")


def log_check(runs: list[Run], home: Path) -> None:
    """Every request our server answered with 200 (wrk's counts, warm-ups included) is in its
    prediction log, read back after the server's clean stop."""
    sys.path.insert(0, str(ROOT / "src"))
    from mlharbor.monitoring.service import open_prediction_log
    from mlharbor.settings import Settings

    ports = {str(run.ports["mlharbor"]) for run in runs if "mlharbor" in run.ports}
    if not ports:
        return
    answered = 0
    for block in re.split(r"^== ", (home / "wrk.log").read_text(), flags=re.M)[1:]:
        port = block.split(maxsplit=1)[0].split(":")[2].split("/")[0]
        done = re.search(r"(\d+) requests in", block)
        failed = re.search(r"Non-2xx or 3xx responses: (\d+)", block)
        if port in ports and done:
            answered += int(done.group(1)) - (int(failed.group(1)) if failed else 0)
    log = open_prediction_log(Settings(home=home, monitoring={"compaction": "thread"}))
    try:
        table = log.scan("churn", columns=["request_id"])
        logged = len(set(table["request_id"].to_pylist())) if table.num_rows else 0
    finally:
        log.close()
    verdict_text = "PASS" if logged >= answered else "MISS"
    print(f"\nprediction log: {answered} requests answered 200 by mlharbor (wrk), {logged} "
          f"request ids logged (also launch probes)  {verdict_text}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure every server this many times, in turn, and report "
                        "medians (a shared VM's speed drifts by 20%% between minutes)")
    parser.add_argument("--home", type=Path, default=Path("/tmp/mlharbor-bench"))
    parser.add_argument("--peers", nargs="?", const="mlflow,bentoml", default="",
                        help="also measure these peers, comma-separated (default both: "
                        "mlflow,bentoml): MLflow 3.17.2 and BentoML 1.4.40 (venvs in "
                        "bench/.peers, made once)")
    parser.add_argument("--batching-compare", action="store_true",
                        help="mlharbor on the native sklearn runtime, batching on vs off")
    parser.add_argument("--log-compare", action="store_true",
                        help="mlharbor with the prediction log off "
                        "(MLHARBOR_MONITORING__LOG_PREDICTIONS=false), to compare with on")
    parser.add_argument("--only", default="",
                        help="measure only these servers, comma-separated (e.g. "
                        "floor-lr,mlharbor-lr: the LogisticRegression's floor and ours; the "
                        "names are those of the report)")
    args = parser.parse_args()
    load = os.getloadavg()
    compile_bytecode()
    onnx, key, expected = prepare(args.home, args.batching_compare)
    ours_env = {"MLHARBOR_HOME": str(args.home),
                "MLHARBOR_SECURITY__RATE_LIMIT_PER_MINUTE": "0"}
    servers = []
    for model, suffix in (("churn", ""), ("lr", "-lr")):
        servers += [
            Server(f"floor{suffix}", lambda port: [str(BIN / "python"),
                                                   str(HERE / "floor_app.py"), str(port)],
                   {"ONNX": str(onnx[model])}, "/", model=model),
            Server(f"mlharbor{suffix}",
                   lambda port, m=model: [str(BIN / "mlharbor"), "serve", f"{m}@champion",
                                          "--port", str(port)],
                   ours_env, f"/v1/endpoints/{model}/predict", key, model=model),
        ]
    if args.log_compare:
        servers.append(Server(
            "mlharbor-nolog", lambda port: [str(BIN / "mlharbor"), "serve", "churn@champion",
                                            "--port", str(port)],
            {**ours_env, "MLHARBOR_MONITORING__LOG_PREDICTIONS": "false"},
            "/v1/endpoints/churn/predict", key))
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = sorted(set(peers) - set(PEER_PACKAGES))
    if unknown:
        parser.error(f"unknown peer(s) {', '.join(unknown)}; known: {', '.join(PEER_PACKAGES)}")
    if peers:
        servers += peer_servers(args.home, peers)
    if args.batching_compare:
        for name, batching in (("mlharbor-native-batch", "true"),
                               ("mlharbor-native-nobatch", "false")):
            servers.append(Server(
                name, lambda port: [str(BIN / "mlharbor"), "serve", "churnnative@champion",
                                    "--port", str(port)],
                {**ours_env, "MLHARBOR_SERVING__BATCHING": batching},
                "/v1/endpoints/churnnative/predict", key, rows=(1,)))
    only = [name.strip() for name in args.only.split(",") if name.strip()]
    if only:
        known = [server.name for server in servers]
        missing = sorted(set(only) - set(known))
        if missing:
            parser.error(f"--only names unknown servers {', '.join(missing)}; with these "
                         f"options the servers are {', '.join(known)}")
        servers = [server for server in servers if server.name in only]
    runs = []
    for _round in range(args.rounds):
        run = Run()
        for server in servers:
            measure(server, args.home, args.seconds, expected, run)
        runs.append(run)
    end_load = os.getloadavg()
    busy = (f"load average {load[0]:.2f} at start, {end_load[0]:.2f} at end "
            f"on {os.cpu_count()} cores")
    report(runs, args.seconds, busy)
    log_check(runs, args.home)
    (args.home / "results.json").write_text(json.dumps({"rounds": [{
        "results": [r.__dict__ for r in run.results], "launch_s": run.launch_s,
        "rss_mb": run.rss_mb, "rss_own_mb": run.rss_own_mb, "failures": run.failures}
        for run in runs], "load": busy},
        indent=1))


if __name__ == "__main__":
    main()
