"""How the compactor child shares a core with serving: its CPU share over time, and how much
it slows a busy process on the same core, while it compacts one journal file.

    .venv/bin/python bench/serving/compactshare.py [--records 6500] [--rounds 3] [--paced]

A journal file of ``--records`` 64-row requests (6,500 is ~5 s of full load, ~68 MB) is
written through the real ``PredictionLog``; the real compactor child is pinned to core 0 with
a probe process that runs fixed units of work (~5 ms each) there, as the event loop would;
the writer runs on core 1. Reported per round: the compaction's wall time, the child's CPU
(``/proc``: user + system), its largest share of the core over any 1 s window (sampled every
100 ms, ticks of 10 ms), its peak RSS above the baseline, and the probe's unit times (median,
p99, and the share of units slowed 1.5x or more) while the compaction ran. ``--paced`` asks
for the background loop's pacing (an older version without it ignores the flag).
"""

from __future__ import annotations

import argparse
import inspect
import multiprocessing
import os
import shutil
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

TICK = os.sysconf("SC_CLK_TCK")


def probe(stop: multiprocessing.synchronize.Event, out: multiprocessing.Queue) -> None:
    """Units of ~5 ms of interpreter work, timed, until told to stop."""
    os.sched_setaffinity(0, {0})
    times = []
    while not stop.is_set():
        start = time.perf_counter()
        total = 0
        for i in range(60_000):
            total += i * i
        times.append((start, time.perf_counter() - start))
    out.put(times)


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def log_records(log: Any, start: int, count: int, per_flush: int = 300) -> None:
    """64-row requests of 20 numbers, as serving logs them, a flush every ``per_flush``."""
    import numpy as np

    from mlharbor.core.records import PredictionRecord
    from mlharbor.serving.model import Outputs

    columns = tuple(f"f{j}" for j in range(20))
    base = np.random.default_rng(7).normal(size=(64, 20))
    at = datetime.now(UTC)
    for i in range(start, start + count):
        log.emit(PredictionRecord(f"r{i}", "lr", "lr@champion", 1, None,
                                  Outputs(np.arange(64) % 2, np.full((64, 2), 0.5)), 0.001,
                                  at + timedelta(microseconds=i), matrix=base + i,
                                  columns=columns))
        if (i - start + 1) % per_flush == 0:
            log.flush()
    log.flush()


def one_round(records: int, paced: bool, home: Path) -> dict[str, float]:
    from mlharbor.monitoring.service import open_prediction_log
    from mlharbor.settings import Settings

    shutil.rmtree(home, ignore_errors=True)
    log = open_prediction_log(Settings(home=home))
    log_records(log, 0, 1)
    log.compact()
    assert log.compactor is not None and log.compactor._proc is not None
    child = log.compactor._proc.pid
    os.sched_setaffinity(child, {0})
    log_records(log, 1, records, per_flush=300)
    base_rss = status_kb(child, "VmRSS")
    Path(f"/proc/{child}/clear_refs").write_text("5")
    stop, out = multiprocessing.Event(), multiprocessing.Queue()
    prober = multiprocessing.Process(target=probe, args=(stop, out))
    prober.start()
    time.sleep(1.0)  # the probe's undisturbed units first
    samples: list[tuple[float, float]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append((time.perf_counter(), cpu_s(child)))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample)
    sampler.start()
    kwargs = {"pace": True} if paced and "pace" in inspect.signature(log.compact).parameters \
        else {}
    start = time.perf_counter()
    log.compact(**kwargs)
    end = time.perf_counter()
    done.set()
    sampler.join()
    peak_rss = status_kb(child, "VmHWM")
    time.sleep(0.5)
    stop.set()
    units = out.get()
    prober.join()
    log.close()
    before = sorted(d for t, d in units if t + d < start)
    during = sorted(d for t, d in units if start <= t and t + d <= end)
    quiet = before[len(before) // 2]
    share = max((samples[j][1] - samples[i][1]) / (samples[j][0] - samples[i][0])
                for i in range(len(samples)) for j in range(i + 1, len(samples))
                if 0.95 <= samples[j][0] - samples[i][0] <= 1.05) if end - start > 1.1 else \
        (samples[-1][1] - samples[0][1]) / max(end - start, 1e-9)
    return {"wall_s": end - start, "child_cpu_s": samples[-1][1] - samples[0][1],
            "max_share_1s": share, "rss_above_mb": (peak_rss - base_rss) / 1024,
            "unit_quiet_ms": quiet * 1e3,
            "unit_p50_ms": during[len(during) // 2] * 1e3 if during else 0.0,
            "unit_p99_ms": during[int(len(during) * 0.99)] * 1e3 if during else 0.0,
            "slowed_1_5x": sum(d >= 1.5 * quiet for d in during) / max(len(during), 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=6500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--paced", action="store_true")
    parser.add_argument("--home", type=Path, default=Path("/tmp/mlharbor-compactshare"))
    args = parser.parse_args()
    os.sched_setaffinity(0, {1})
    for n in range(args.rounds):
        r = one_round(args.records, args.paced, args.home)
        print(f"round {n + 1}: compaction {r['wall_s']:.2f} s wall, child CPU "
              f"{r['child_cpu_s']:.2f} s, max share of core 0 over 1 s "
              f"{r['max_share_1s']:.0%}, peak RSS +{r['rss_above_mb']:.0f} MB; probe units "
              f"quiet {r['unit_quiet_ms']:.1f} ms, during p50 {r['unit_p50_ms']:.1f} / p99 "
              f"{r['unit_p99_ms']:.1f} ms, {r['slowed_1_5x']:.0%} slowed >=1.5x; "
              f"load {os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
    main()
