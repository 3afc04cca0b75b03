"""Where our server's CPU per request goes, by thread and child process, under real load.

    .venv/bin/python bench/serving/cpusplit.py [--model lr] [--rows 64] [--seconds 10]
                                               [--rounds 2] [--env KEY=VALUE ...]

``run.py`` reports the CPU of the whole process tree per request; this splits it: the event
loop (the main thread), each other thread of the server (the prediction log's flusher is the
busy one; the inference threads idle while batches run on the loop), and the children (the
log compactor). Same set-up as ``run.py``: ``mlharbor serve MODEL@champion`` pinned to core 0,
``wrk -t1 -c64`` pinned to core 1, API-key auth and every other default on. CPU comes from
``/proc`` (user + system ticks), so it does not depend on how much of the core the server got
on a shared machine; wrk's p50/p99 are printed too, but those do.

Threads are told apart by their share: Python 3.11 does not name OS threads, so the report
lists thread ids in order of CPU, the main thread first.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import (  # noqa: E402  (the bench's own helpers, beside this file)
    BIN,
    Server,
    compile_bytecode,
    free_port,
    prepare,
    serve,
    stop,
    wrk,
)


def ticks(path: Path) -> float:
    """User + system seconds from a ``stat`` file (0 when it is gone)."""
    try:
        fields = path.read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def threads(pid: int) -> dict[int, float]:
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        out[int(task.name)] = ticks(task / "stat")
    return out


def children(pid: int) -> dict[int, float]:
    """CPU seconds of every live descendant of ``pid`` (not ``pid`` itself)."""
    parent: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parent[int(entry.name)] = int(fields[1])
            cpu[int(entry.name)] = (int(fields[11]) + int(fields[12])) / os.sysconf(
                "SC_CLK_TCK")
    out = {}
    for child, seconds in cpu.items():
        walk = parent.get(child, 0)
        while walk > 1 and walk != pid:
            walk = parent.get(walk, 0)
        if walk == pid and child != pid:
            out[child] = seconds
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="lr", choices=("lr", "churn"))
    parser.add_argument("--rows", type=int, default=64, choices=(1, 64))
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--home", type=Path, default=Path("/tmp/mlharbor-cpusplit"))
    parser.add_argument("--reuse", action="store_true", help="keep the registered home")
    parser.add_argument("--env", action="append", default=[],
                        help="KEY=VALUE for the server (e.g. MLHARBOR_MONITORING__...)")
    args = parser.parse_args()
    compile_bytecode()
    keyfile = args.home / "key.txt"
    if args.reuse and keyfile.exists():
        key = keyfile.read_text()
        import json

        expected = {k: tuple(v) for k, v in json.loads(
            (args.home / "expected.json").read_text()).items()}
    else:
        _onnx, key, expected = prepare(args.home, False)
        keyfile.write_text(key)
        import json

        (args.home / "expected.json").write_text(json.dumps(expected))
    env = {"MLHARBOR_HOME": str(args.home), "MLHARBOR_SECURITY__RATE_LIMIT_PER_MINUTE": "0",
           **dict(item.split("=", 1) for item in args.env)}
    server = Server("mlharbor", lambda port: [str(BIN / "mlharbor"), "serve",
                                              f"{args.model}@champion", "--port", str(port)],
                    env, f"/v1/endpoints/{args.model}/predict", key, model=args.model)
    port = free_port()
    proc, launch = serve(server, port, args.home, expected)  # type: ignore[arg-type]
    print(f"launch -> first correct answer {launch:.2f} s; load {os.getloadavg()[0]:.1f}")
    url = f"http://127.0.0.1:{port}{server.path}"
    body = args.home / f"rows{args.rows}.json"
    lua = args.home / "post.lua"
    try:
        wrk(url, body, 3, key, lua)  # warm-up; starts the compactor child
        for _round in range(args.rounds):
            before_t, before_c = threads(proc.pid), children(proc.pid)
            started = time.monotonic()
            rps, p50, p99, errors = wrk(url, body, args.seconds, key, lua)
            wall = time.monotonic() - started
            after_t, after_c = threads(proc.pid), children(proc.pid)
            requests = rps * args.seconds
            per = {tid: (after_t[tid] - before_t.get(tid, 0.0)) / requests * 1e6
                   for tid in after_t}
            kids = sum(after_c[c] - before_c.get(c, 0.0) for c in after_c) / requests * 1e6
            main_us = per.pop(proc.pid, 0.0)
            others = sorted(per.items(), key=lambda kv: -kv[1])
            total = main_us + sum(per.values()) + kids
            print(f"\n{args.model} {args.rows} rows: {rps:.0f} req/s, p50 {p50:.2f} ms, "
                  f"p99 {p99:.2f} ms {errors} ({wall:.1f} s; load {os.getloadavg()[0]:.1f})")
            print(f"  CPU us/request: total {total:.0f} = loop (main thread) {main_us:.0f}"
                  f" + other threads {sum(per.values()):.0f} + children {kids:.0f}")
            print("  other threads: " + ", ".join(f"{tid}: {us:.0f}" for tid, us in others
                                                   if us >= 1))
    finally:
        stop(proc)


if __name__ == "__main__":
    main()
