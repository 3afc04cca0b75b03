"""Instructions per serving request, counted by callgrind: what CPU time cannot show here.

    valgrind --tool=callgrind --instr-atstart=no --separate-threads=yes \\
        --callgrind-out-file=/tmp/cg.%p .venv/bin/python bench/serving/instr.py \\
        --home /tmp/mlh-profile --reuse --case rf-native-1 --case lr-native-1
    grep summary /tmp/cg.PID.N-*            # per dump N (one per case) and thread
    callgrind_annotate /tmp/cg.PID.N-01      # the event loop's, by symbol

Drives the app ``mlharbor serve`` builds in process (every default on, as ``hotpath.py``;
``PYTHONPATH=/other/tree/src`` measures another checkout with the same driver),
``--concurrency`` requests in flight at once so micro-batching joins them as under wrk.
Per case: a warm-up wave; callgrind's counters are zeroed; ``--requests`` requests run; the
prediction log's flusher is let finish them; the counters are dumped under the case's name.
Per request = a dump's total / ``--requests``; start-up and warm-up are out
(``--instr-atstart=no`` runs start-up uninstrumented, so fast; collection is per thread in
callgrind, so it stays on and the counters are zeroed instead). The journal is compacted
outside the counted window.

The event loop's thread (``-01``) is the steady figure: other threads do work whose amount
depends on timing under valgrind's 50x slowdown (the flusher's flush sizes, the key cache's
background re-check, a query, every ~5 s of wall time), so the whole-process total of one
case moved by up to 10% between runs of the same code; the loop's by ~1%.

The counters are toggled with callgrind's client requests from a tiny C shim built with the
system compiler (the macros are inline assembly). Outside valgrind they do nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from hotpath import Driver, payloads, send_waves, session_key, settle_log

SHIM = r"""
#include <valgrind/callgrind.h>
void cg_zero(void) { CALLGRIND_ZERO_STATS; }
void cg_on(void) { CALLGRIND_START_INSTRUMENTATION; }
void cg_dump(const char *name) { CALLGRIND_DUMP_STATS_AT(name); }
"""


def shim() -> ctypes.CDLL:
    """Build and load the client-request shim (a few lines of C)."""
    out = Path(tempfile.gettempdir()) / "mlh_cgshim.so"
    if not out.exists():
        src = out.with_suffix(".c")
        src.write_text(SHIM)
        subprocess.run(["cc", "-O1", "-shared", "-fPIC", "-o", str(out), str(src)], check=True)
    lib = ctypes.CDLL(str(out))
    lib.cg_dump.argtypes = [ctypes.c_char_p]
    return lib


def overrides(items: list[str]) -> dict[str, dict[str, Any]]:
    """``section.key=JSON`` items (``monitoring.log_predictions=false``) as settings sections."""
    sections: dict[str, dict[str, Any]] = {}
    for item in items:
        name, _, value = item.partition("=")
        section, _, field = name.partition(".")
        sections.setdefault(section, {})[field] = json.loads(value)
    return sections


class _NoLog:
    def backlog(self) -> dict[str, int]:
        return {"pending_records": 0}

    def compact(self) -> None:
        return None


async def run(home: Path, key: str, requests: int, concurrency: int, cases: list[str],
              sets: list[str], floor: Path | None) -> None:
    cg = shim()
    close: Any = None
    log: Any = _NoLog()
    if floor is not None:  # the floor app (floor_app.py) on the same driver: its own cost
        from floor_app import make_app

        app: Any = make_app(str(floor))
    else:
        from mlharbor.bootstrap.serving import ServingProcess
        from mlharbor.settings import Settings

        extra = overrides(sets)
        settings = Settings(home=home, serving={"rate_limit_per_minute": 0,
                                                **extra.pop("serving", {})},
                            monitoring={"compaction": "thread", "segment_interval_s": 3600,
                                        **extra.pop("monitoring", {})}, **extra)
        app, close = ServingProcess(settings, None, json_logs=False)()
        if settings.monitoring.log_predictions:
            log = app.dispatcher.sink
    driver = Driver(app, key)
    if close is not None:
        await driver.lifespan("startup")

    async def wave(path: str, body: bytes, model: str, count: int) -> None:
        await send_waves(driver, path, body, model, count, concurrency)

    def settle() -> None:
        settle_log(log, wait_s=120, after_s=0.5)

    try:
        for name in cases:
            model, rest = name.split("-", 1)
            protocol, rows = rest.rsplit("-", 1)
            path, body = payloads(home, model, int(rows))[protocol]
            status, answer = await driver.request(path, body, model)
            if status != 200:
                raise SystemExit(f"{name}: HTTP {status}: {answer[:300]!r}")
            await wave(path, body, model, 2 * concurrency)  # warm
            settle()
            log.compact()
            cg.cg_on()
            cg.cg_zero()
            await wave(path, body, model, requests)
            settle()
            cg.cg_dump(name.encode())
            log.compact()
            print(f"{name}: dumped ({requests} requests)", flush=True)
    finally:
        if close is not None:
            await driver.lifespan("shutdown")
            close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=512)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--home", type=Path, default=Path("/tmp/mlh-profile"))
    parser.add_argument("--case", action="append", required=True, help="e.g. rf-native-1")
    parser.add_argument("--reuse", action="store_true", help="keep the registered home")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=JSON",
                        help="a setting, e.g. monitoring.log_predictions=false (ablations)")
    parser.add_argument("--floor", type=Path, metavar="MODEL.onnx",
                        help="drive floor_app.py's app on this ONNX file instead (native "
                             "cases: the same records)")
    args = parser.parse_args()
    key = session_key(args.home, reuse=args.reuse)
    asyncio.run(run(args.home, key, args.requests, args.concurrency, args.case, args.set,
                    args.floor))


if __name__ == "__main__":
    main()
