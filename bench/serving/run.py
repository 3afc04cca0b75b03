"""Floor vs our server, same model, same payloads: wrk on core 1, the server on core 0.

    .venv/bin/python bench/serving/run.py [--seconds 10] [--home /tmp/mlh-bench]

Trains RandomForestClassifier(n_estimators=100, max_depth=8) on 20 numeric features,
registers it (skops + ONNX after the parity check), writes 1-row and 64-row payloads, then
for each server: start it pinned to core 0, warm up, run wrk (64 connections, pinned to core 1)
per payload, read the server's CPU time per request from /proc, stop it by PID. Our server runs
with its defaults (auth with an API key, micro-batching, metrics, the record sink); only the
per-key rate limit is lifted, since one key drives all the load.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
BIN = Path(sys.executable).parent
LUA = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
{auth}
local f = io.open("{body}", "r"); wrk.body = f:read("*a"); f:close()
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def prepare(home: Path) -> tuple[Path, str]:
    import numpy as np
    import pandas as pd
    from sklearn.ensemble import RandomForestClassifier

    from mlharbor.bootstrap import open_identities, open_registry
    from mlharbor.registry.bundles import register_model
    from mlharbor.settings import Settings

    shutil.rmtree(home, ignore_errors=True)
    rng = np.random.default_rng(0)
    x = pd.DataFrame(rng.normal(size=(5000, 20)), columns=[f"f{i}" for i in range(20)])
    y = ((x.f0 + x.f1 - x.f2 + rng.normal(scale=0.5, size=5000)) > 0).astype(int)
    model = RandomForestClassifier(n_estimators=100, max_depth=8, random_state=0).fit(x, y)
    settings = Settings(home=home)
    registry = open_registry(settings)
    result = register_model(registry, "churn", model, settings=settings, sample_input=x.head(20))
    print(result.summary())
    registry.set_alias("churn", "champion", 1)
    key = open_identities(registry).init_admin("bench", actor="bench")[1]
    bundle = registry.download(result.version)
    onnx = next(bundle.rglob("*.onnx"))
    for rows in (1, 64):
        (home / f"rows{rows}.json").write_text(json.dumps(
            x.sample(rows, random_state=rows).to_dict(orient="records")))
    return onnx, key


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(url: str, body: Path, seconds: int, key: str | None, lua: Path) -> tuple[float, str]:
    auth = f'wrk.headers["Authorization"] = "Bearer {key}"' if key else ""
    lua.write_text(LUA.format(auth=auth, body=body))
    out = subprocess.run(["taskset", "-c", "1", "wrk", "-t1", "-c64", f"-d{seconds}s",
                          "--latency", "-s", str(lua), url],
                         capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out:
        raise RuntimeError(f"non-2xx answers:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = re.search(r"50%\s+(\S+)", out)
    p99 = re.search(r"99%\s+(\S+)", out)
    return rps, f"p50 {p50.group(1) if p50 else '?'} p99 {p99.group(1) if p99 else '?'}"


def serve(cmd: list[str], env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(["taskset", "-c", "0", *cmd], env={**os.environ, **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), 0.2):
                break
        except OSError:
            time.sleep(0.1)
    time.sleep(1.0)
    return proc


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--home", type=Path, default=Path("/tmp/mlharbor-bench"))
    args = parser.parse_args()
    onnx, key = prepare(args.home)
    lua = args.home / "post.lua"
    results = []
    servers = {
        "floor": (lambda port: [str(BIN / "python"), str(HERE / "floor_app.py"), str(port)],
                  {"ONNX": str(onnx)}, "/", None),
        "mlharbor": (lambda port: [str(BIN / "mlharbor"), "serve", "churn@champion",
                                   "--port", str(port)],
                     {"MLHARBOR_HOME": str(args.home),
                      "MLHARBOR_SECURITY__RATE_LIMIT_PER_MINUTE": "0"},
                     "/v1/endpoints/churn/predict", key),
    }
    for name, (cmd, env, path, api_key) in servers.items():
        port = free_port()
        proc = serve(cmd(port), env, port)
        try:
            url = f"http://127.0.0.1:{port}{path}"
            for rows in (1, 64):
                body = args.home / f"rows{rows}.json"
                wrk(url, body, 2, api_key, lua)  # warm-up
                before = cpu_seconds(proc.pid)
                rps, latency = wrk(url, body, args.seconds, api_key, lua)
                used = cpu_seconds(proc.pid) - before
                cpu_us = used / (rps * args.seconds) * 1e6
                results.append((name, rows, rps, cpu_us, latency))
                print(f"{name:9s} {rows:3d} row(s): {rps:8.0f} req/s, "
                      f"{cpu_us:6.0f} us CPU/request, {latency}", flush=True)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    print("\nrows  floor req/s  ours req/s  ratio  extra CPU us/request")
    for rows in (1, 64):
        floor = next(r for r in results if r[0] == "floor" and r[1] == rows)
        ours = next(r for r in results if r[0] == "mlharbor" and r[1] == rows)
        print(f"{rows:4d}  {floor[2]:11.0f}  {ours[2]:10.0f}  {ours[2] / floor[2]:5.2f}"
              f"  {ours[3] - floor[3]:8.0f}")


if __name__ == "__main__":
    main()
