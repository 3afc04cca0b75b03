"""Batch-scoring bench: mlharbor predict vs bare ONNX Runtime, memory under a budget, Dask.

    taskset -c 0,1 .venv/bin/python bench/batch/run.py [--rows 4000000] [--rounds 3]
        [--home /tmp/mlh-batch] [--budget 256MiB] [--skip-memory] [--skip-dask]

1. Local throughput. The bench RandomForest (100 trees, depth 8, 20 float features, as in
   bench/serving) registered with ONNX. Each round runs, one after the other on core 0:
   `mlharbor predict --workers 1` (whole command) and a bare loop reading the same Parquet with
   pyarrow and running the same ONNX file in onnxruntime (one thread). Reported per round:
   mlharbor's steady state (the scoring loop, from the manifest's summary), its whole
   command (start-up, fingerprint and audit included) and the bare loop (session built, then
   timed), each as rows per wall second and rows per CPU second (user + system: far less
   sensitive than wall time to other programs on a shared machine), and their medians.
   Target: steady state >= 0.80 of bare.
2. Memory. A folder of 10 hard links to one Parquet file of the same 20 features, 10x
   --budget decoded bytes in all, scored with `--memory-budget`; the command's own peak RSS
   (through tests/peak_rss.py: a wait4 straight from this big process would report this
   process's size) against the budget. Target: < 1.00.
3. Dask. A scheduler and 2 one-thread workers; `--engine dask` vs the local rounds of (1) on
   one core. Target: >= 1.6x the local steady state, and whole command vs whole command.

Every figure is a ratio of medians measured in the same run; the load average is printed with
them (other programs share this machine).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
FEATURES = [f"f{i}" for i in range(20)]


def setup(home: Path) -> dict[str, str]:
    """The registered bench forest (once per home)."""
    import numpy as np
    import pandas as pd
    from sklearn.ensemble import RandomForestClassifier

    from mlharbor.bootstrap import open_registry
    from mlharbor.registry.bundles import register_model
    from mlharbor.settings import Settings

    settings = Settings(home=home / "home")
    if not (settings.home / "mlharbor.db").exists():
        rng = np.random.default_rng(0)
        x = pd.DataFrame(rng.normal(size=(5000, 20)), columns=FEATURES)
        model = RandomForestClassifier(n_estimators=100, max_depth=8, random_state=0)
        registry = open_registry(settings)
        register_model(registry, "bench", model.fit(x, (x.f0 + x.f1 > 0).astype(int)),
                       settings=settings, sample_input=x.head(20))
        registry.close()
    return {"MLHARBOR_HOME": str(settings.home)}


def dataset(path: Path, rows: int) -> Path:
    """``rows`` rows of 20 normal floats in row groups of 100k (written once)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not path.exists():
        rng = np.random.default_rng(1)
        tmp = path.with_suffix(".tmp")
        with pq.ParquetWriter(tmp, pa.schema([(f, pa.float64()) for f in FEATURES])) as out:
            for start in range(0, rows, 100_000):
                n = min(100_000, rows - start)
                out.write_table(pa.table({f: rng.normal(size=n) for f in FEATURES}),
                                row_group_size=100_000)
        tmp.replace(path)
    return path


@dataclass
class Run:
    """One `mlharbor predict` run: wall and CPU seconds of the whole command and of its
    scoring loop (from the manifest's summary), and the command's own peak RSS."""

    seconds: float
    cpu_seconds: float
    loop_seconds: float
    loop_cpu_seconds: float
    peak_rss: int


def run_predict(env: dict[str, str], data: Path, out: Path, *extra: str, cores: str = "0"
                ) -> Run:
    sys.path.insert(0, str(ROOT))
    from tests.peak_rss import run_measured

    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    done = run_measured(["/usr/bin/taskset", "-c", cores, str(BIN / "mlharbor"), "predict",
                         "bench:1", "--input", str(data), "--output", str(out),
                         "--part-rows", "200000", *extra], env=env, timeout=3600)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"mlharbor predict failed: {done.stderr}")
    summary = json.loads((out / "_manifest.json").read_text())["summary"]
    shutil.rmtree(out, ignore_errors=True)
    return Run(seconds, done.cpu_seconds, summary["seconds"], summary["cpu_seconds"],
               done.peak_rss)


def bare_onnx(env: dict[str, str], data: Path) -> tuple[float, float]:
    """(rows/s, rows per CPU second) of pyarrow + onnxruntime alone on core 0: one thread,
    the session built before the clocks start."""
    code = f"""
import time, glob, numpy as np, onnxruntime as ort, pyarrow.parquet as pq
path = sorted(glob.glob({env['MLHARBOR_HOME']!r} + '/cache/bundles/bench/1/**/*.onnx',
              recursive=True))[0]
opts = ort.SessionOptions(); opts.intra_op_num_threads = 1; opts.inter_op_num_threads = 1
sess = ort.InferenceSession(path, opts, providers=['CPUExecutionProvider'])
name = sess.get_inputs()[0].name
outs = [o.name for o in sess.get_outputs()]
start, cpu, rows = time.perf_counter(), time.process_time(), 0
for batch in pq.ParquetFile({str(data)!r}).iter_batches(batch_size=65536, use_threads=False):
    x = np.empty((batch.num_rows, batch.num_columns), np.float32)
    for i, column in enumerate(batch.columns):
        x[:, i] = column.to_numpy()
    sess.run(outs, {{name: x}})
    rows += batch.num_rows
print(rows / (time.perf_counter() - start), rows / (time.process_time() - cpu))
"""
    done = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", code], check=True,
                          capture_output=True, text=True)
    wall, cpu = done.stdout.split()
    return float(wall), float(cpu)


def load() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def local_rounds(env: dict[str, str], data: Path, rows: int, rounds: int, home: Path
                 ) -> tuple[list[float], list[float]]:
    figures: dict[str, list[float]] = {k: [] for k in (
        "steady", "whole", "bare", "steady_cpu", "whole_cpu", "bare_cpu")}
    for i in range(rounds):
        run = run_predict(env, data, home / "out", "--workers", "1")
        bare, bare_cpu = bare_onnx(env, data)
        now = {"steady": rows / run.loop_seconds, "whole": rows / run.seconds, "bare": bare,
               "steady_cpu": rows / run.loop_cpu_seconds, "whole_cpu": rows / run.cpu_seconds,
               "bare_cpu": bare_cpu}
        for key, value in now.items():
            figures[key].append(value)
        print(f"  round {i}: rows/s wall: mlharbor steady {now['steady']:,.0f}, whole "
              f"{now['whole']:,.0f} ({run.seconds:.1f} s), bare {bare:,.0f}; rows per CPU s: "
              f"steady {now['steady_cpu']:,.0f}, whole {now['whole_cpu']:,.0f}, bare "
              f"{bare_cpu:,.0f}  [load {load()}]", flush=True)
    m = {k: median(v) for k, v in figures.items()}
    print(f"local vs bare ONNX Runtime (medians; target >= 0.80): wall steady "
          f"{m['steady'] / m['bare']:.2f}, wall whole {m['whole'] / m['bare']:.2f}; CPU steady "
          f"{m['steady_cpu'] / m['bare_cpu']:.2f}, CPU whole "
          f"{m['whole_cpu'] / m['bare_cpu']:.2f}", flush=True)
    return figures["steady"], figures["whole"]


def memory(env: dict[str, str], home: Path, budget_text: str) -> None:
    from mlharbor.cli.predict import parse_bytes

    budget = parse_bytes(budget_text)
    rows = -(-10 * budget // (10 * 8 * len(FEATURES)))  # per file, 10 files
    folder = home / f"mem-{budget}"
    if not folder.exists():
        folder.mkdir()
        one = dataset(home / f"rows-{rows}.parquet", rows)
        for i in range(10):
            os.link(one, folder / f"part-{i}.parquet")
    run = run_predict(env, folder, home / "mem-out", "--workers", "1", "--memory-budget",
                      str(budget))
    seconds, rate, peak = run.seconds, 10 * rows / run.loop_seconds, run.peak_rss
    print(f"memory: {10 * rows:,} rows ({10 * rows * 8 * len(FEATURES) / 2**20:,.0f} MiB "
          f"decoded) under --memory-budget {budget / 2**20:,.0f} MiB: peak RSS "
          f"{peak / 2**20:,.0f} MiB = {peak / budget:.2f} of the budget (target < 1.00); "
          f"{rate:,.0f} rows/s, {seconds:.1f} s  [load {load()}]", flush=True)


def dask_rounds(env: dict[str, str], data: Path, rows: int, rounds: int, home: Path,
                steady: list[float], whole: list[float]) -> None:
    sys.path.insert(0, str(ROOT))
    from tests.dask_cluster import dask_cluster

    (home / "dask").mkdir(exist_ok=True)
    with dask_cluster(home / "dask", workers=2) as cluster:
        rates, wholes = [], []
        for i in range(rounds):
            run = run_predict(env, data, home / "dask-out", "--engine", "dask",
                              "--scheduler", cluster.address, cores="0,1")
            seconds, rate = run.seconds, rows / run.loop_seconds
            rates.append(rate)
            wholes.append(rows / seconds)
            print(f"  round {i}: dask 2 workers steady {rate:,.0f} rows/s, whole command "
                  f"{wholes[-1]:,.0f} rows/s ({seconds:.1f} s); the driver's CPU "
                  f"{run.cpu_seconds:.1f} s in all  [load {load()}]", flush=True)
    print(f"dask (2 workers, 2 cores) vs local (1 core), medians: steady "
          f"{median(rates) / median(steady):.2f}, whole command "
          f"{median(wholes) / median(whole):.2f} (target >= 1.6)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, default=4_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--home", type=Path, default=Path("/tmp/mlh-batch"))
    parser.add_argument("--budget", default="256MiB")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-dask", action="store_true")
    args = parser.parse_args()
    args.home.mkdir(parents=True, exist_ok=True)
    env = setup(args.home)
    data = dataset(args.home / f"rows-{args.rows}.parquet", args.rows)
    print(f"{args.rows:,} rows, {args.rounds} rounds, cores {sorted(os.sched_getaffinity(0))}, "
          f"load {load()}", flush=True)
    run_predict(env, data, args.home / "warm", "--workers", "1")  # fills the bundle cache
    steady, whole = local_rounds(env, data, args.rows, args.rounds, args.home)
    if not args.skip_memory:
        memory(env, args.home, args.budget)
    if not args.skip_dask:
        dask_rounds(env, data, args.rows, args.rounds, args.home, steady, whole)


if __name__ == "__main__":
    main()
