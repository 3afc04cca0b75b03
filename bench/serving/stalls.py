"""What stalls the serving event loop under load: loop lag, against what ran at that moment.

    .venv/bin/python bench/serving/stalls.py [--model lr] [--rows 64] [--seconds 20]
                                             [--reuse] [--env KEY=VALUE ...]

The server is ``mlharbor serve MODEL@champion`` as ``run.py`` measures it (pinned to core 0,
every default on, ``wrk -t1 -c64`` pinned to core 1), started through this file so that it
records, without changing what runs:

- loop lag: a task asks to wake every 5 ms; each wake-up later than 20 ms is a stall;
- garbage collections (``gc.callbacks``): generation and duration;
- the prediction log's flushes and compaction requests (start, end, the flusher's CPU);
- API-key checks that missed the key cache and went to the identity store;
- what the interpreter lock holder was doing: a watchdog thread notes the main thread's
  frame whenever the loop has not ticked for 20 ms.

At the end it prints wrk's p50/p99 and every stall with what overlapped it, so a tail can be
put down to its cause (a full collection, a flush holding the interpreter lock, the compactor
child taking the core, a burst of identity lookups) instead of guessed at.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

LAG_TICK_S = 0.005
STALL_S = 0.020


def serve(report: Path, ref: str, port: int) -> None:
    """The server side: ``mlharbor serve REF`` with the probes installed."""
    import asyncio
    import atexit
    import gc
    import sys as _sys
    import threading

    from mlharbor.bootstrap.serving import ServingProcess
    from mlharbor.monitoring.compactor import CompactorProcess
    from mlharbor.monitoring.predlog import PredictionLog
    from mlharbor.serving.auth import CachedIdentities
    from mlharbor.serving.runner import listener_from, run_server
    from mlharbor.settings import Settings

    events: dict[str, list[Any]] = {"lag": [], "gc": [], "flush": [], "compact": [],
                                    "child": [], "auth_miss": [], "watchdog": [],
                                    "request": []}
    clock = time.monotonic
    gc_started: list[float] = [0.0]

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            gc_started[0] = clock()
        else:
            # A full collection's cost grows with what it walks: the objects left in the
            # oldest generation (the frozen start-up objects are not walked).
            size = len(gc.get_objects(2)) if info["generation"] == 2 else 0
            events["gc"].append((gc_started[0], clock(), info["generation"],
                                 info["collected"], size))

    gc.callbacks.append(on_gc)

    def timed(name: str, fn: Any, cpu: bool = False) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start, cpu0 = clock(), time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                events[name].append((start, clock(), time.thread_time() - cpu0))
        return wrapper

    PredictionLog.flush = timed("flush", PredictionLog.flush)  # type: ignore[method-assign]
    PredictionLog.compact = timed("compact", PredictionLog.compact)  # type: ignore[method-assign]
    CompactorProcess.compact = timed("child", CompactorProcess.compact)  # type: ignore[method-assign]
    CachedIdentities.authenticate_key = timed(  # type: ignore[method-assign]
        "auth_miss", CachedIdentities.authenticate_key)

    ticks = [clock()]

    async def lag_probe() -> None:
        while True:
            before = clock()
            await asyncio.sleep(LAG_TICK_S)
            now = clock()
            ticks[0] = now
            if now - before - LAG_TICK_S > STALL_S:
                events["lag"].append((before + LAG_TICK_S, now))

    main_id = threading.get_ident()

    def watchdog() -> None:
        while True:
            time.sleep(0.005)
            since = clock() - ticks[0]
            if since > STALL_S:
                frame = _sys._current_frames().get(main_id)
                where = []
                while frame is not None and len(where) < 6:
                    code = frame.f_code
                    where.append(f"{Path(code.co_filename).name}:{frame.f_lineno}"
                                 f"({code.co_name})")
                    frame = frame.f_back
                events["watchdog"].append((clock(), since, where))

    settings = Settings()
    build = ServingProcess(settings, ref, True, False)

    def build_probed() -> Any:
        app, close = build()

        async def probed(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] == "lifespan":
                asyncio.get_running_loop().create_task(lag_probe())
                threading.Thread(target=watchdog, daemon=True).start()
                await app(scope, receive, send)
                return
            started = clock()
            await app(scope, receive, send)
            events["request"].append((started, clock()))

        probed.__dict__["listening_on"] = getattr(app, "listening_on", None)
        return probed, close

    def dump() -> None:
        report.write_text(json.dumps(events))

    atexit.register(dump)
    run_server(settings, build_probed, listener_from(settings, host="127.0.0.1", port=port,
                                                     workers=1))


def overlaps(window: tuple[float, float], spans: list[Any]) -> list[Any]:
    lo, hi = window
    return [s for s in spans if s[0] < hi and s[1] > lo]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--serve", nargs=3, metavar=("REPORT", "REF", "PORT"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--model", default="lr", choices=("lr", "churn"))
    parser.add_argument("--rows", type=int, default=64, choices=(1, 64))
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--home", type=Path, default=Path("/tmp/mlharbor-stalls"))
    parser.add_argument("--reuse", action="store_true", help="keep the registered home")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the server")
    args = parser.parse_args()
    if args.serve:
        report, ref, port = args.serve
        serve(Path(report), ref, int(port))
        return

    from run import Server, compile_bytecode, free_port, prepare, stop, wrk
    from run import serve as launch

    compile_bytecode()
    keyfile = args.home / "key.txt"
    if args.reuse and keyfile.exists():
        key = keyfile.read_text()
        expected = {k: tuple(v) for k, v in json.loads(
            (args.home / "expected.json").read_text()).items()}
    else:
        _onnx, key, expected = prepare(args.home, False)
        keyfile.write_text(key)
        (args.home / "expected.json").write_text(json.dumps(expected))
    report = args.home / "stalls.json"
    report.unlink(missing_ok=True)
    env = {"MLHARBOR_HOME": str(args.home), "MLHARBOR_SECURITY__RATE_LIMIT_PER_MINUTE": "0",
           **dict(item.split("=", 1) for item in args.env)}
    server = Server("stalls", lambda port: [sys.executable, __file__, "--serve", str(report),
                                            f"{args.model}@champion", str(port)],
                    env, f"/v1/endpoints/{args.model}/predict", key, model=args.model)
    port = free_port()
    proc, _launch_s = launch(server, port, args.home, expected)  # type: ignore[arg-type]
    url = f"http://127.0.0.1:{port}{server.path}"
    body = args.home / f"rows{args.rows}.json"
    lua = args.home / "post.lua"
    try:
        wrk(url, body, 3, key, lua)  # warm-up; starts the compactor child
        started = time.monotonic()
        rps, p50, p99, errors = wrk(url, body, args.seconds, key, lua)
        ended = time.monotonic()
    finally:
        stop(proc)
    events = json.loads(report.read_text())
    print(f"{args.model} {args.rows} rows: {rps:.0f} req/s, p50 {p50:.2f} ms, p99 {p99:.2f} ms"
          f" {errors}; load {os.getloadavg()[0]:.1f}")
    in_run = [e for e in events["lag"] if started <= e[0] <= ended]
    print(f"stalls > {STALL_S * 1e3:.0f} ms in the run: {len(in_run)}, worst "
          f"{max((e[1] - e[0] for e in in_run), default=0) * 1e3:.0f} ms")
    for name in ("gc", "flush", "compact", "child", "auth_miss"):
        spans = [e for e in events[name] if started <= e[0] <= ended]
        longest = max((e[1] - e[0] for e in spans), default=0.0)
        print(f"  {name:10s} {len(spans):5d} in the run, longest {longest * 1e3:7.1f} ms")
    full = [e for e in events["gc"] if e[2] == 2 and started <= e[0] <= ended]
    print(f"  full collections: {len(full)}, "
          f"{sum(e[1] - e[0] for e in full) * 1e3:.0f} ms in all, objects walked "
          f"{sorted(e[4] for e in full)}")
    young = [e for e in events["gc"] if e[2] < 2 and started <= e[0] <= ended]
    print(f"  young collections: {len(young)}, "
          f"{sum(e[1] - e[0] for e in young) * 1e3:.0f} ms in all")
    flushes = [e for e in events["flush"] if started <= e[0] <= ended]
    if flushes:
        cpu = sorted(e[2] for e in flushes)
        print(f"  flush CPU per flush: median {cpu[len(cpu) // 2] * 1e3:.1f} ms, "
              f"max {cpu[-1] * 1e3:.1f} ms")
    # Server-side request times (from the ASGI call to the last byte handed to uvicorn): the
    # slowest 1% against what overlapped them, and against the rest.
    requests = sorted((e for e in events["request"] if started <= e[0] <= ended),
                      key=lambda e: e[1] - e[0])
    if requests:
        times = [e[1] - e[0] for e in requests]
        p50, p99s = times[len(times) // 2], times[int(len(times) * 0.99)]
        slow = [e for e in requests if e[1] - e[0] >= p99s]
        print(f"  server-side request time: p50 {p50 * 1e3:.1f} ms, p99 {p99s * 1e3:.1f} ms; "
              f"the slowest 1% ({len(slow)}) overlapped:")
        for name in ("child", "flush", "gc", "auth_miss"):
            spans = [x for x in events[name] if started - 10 <= x[0] <= ended]
            hit = sum(1 for e in slow if overlaps(e, spans))
            base = sum(1 for e in requests if overlaps(e, spans))
            print(f"    {name:10s} {hit / len(slow):6.0%} of the slowest, "
                  f"{base / len(requests):6.0%} of all requests")
    for lo, hi in in_run:
        parts = []
        for name in ("gc", "flush", "compact", "child", "auth_miss"):
            hit = overlaps((lo, hi), events[name])
            if hit:
                parts.append(f"{name} x{len(hit)}")
        seen = [w for w in events["watchdog"] if lo <= w[0] <= hi + 0.01]
        where = " <- ".join(seen[-1][2][:3]) if seen else ""
        print(f"  stall at +{lo - started:6.2f} s: {(hi - lo) * 1e3:6.1f} ms  "
              f"{', '.join(parts) or '-'}  {where}")


if __name__ == "__main__":
    main()
