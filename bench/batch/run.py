"""Batch-scoring bench: mlharbor predict vs bare ONNX Runtime, memory under a budget, Dask.

    taskset -c 0,1 .venv/bin/python bench/batch/run.py [--rows 2000000] [--rounds 3]
                                                         [--home /tmp/mlh-batch] [--budget 400MB]

1. Local throughput: the bench RandomForest (100 trees, depth 8, 20 features, as in
   bench/serving) registered with ONNX; `mlharbor predict --workers 1` pinned to core 0 vs a bare
   loop reading the same Parquet with pyarrow and running the same ONNX file in onnxruntime on
   core 0 (target ratio >= 0.80). Rows/s of each round shown, medians compared.
2. Memory: a dataset 10x --budget (decoded bytes), scored with --memory-budget; the child's
   peak RSS (os.wait4) against the budget.
3. Dask: a scheduler and 2 one-thread workers on cores 0 and 1 vs local --workers 1
   (target >= 1.6x).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
FEATURES = [f"f{i}" for i in range(20)]


def setup(home: Path, rows: int) -> tuple[dict[str, str], Path]:
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq
    from sklearn.ensemble import RandomForestClassifier

    from mlharbor.bootstrap import open_registry
    from mlharbor.registry.bundles import register_model
    from mlharbor.settings import Settings

    settings = Settings(home=home / "home")
    env = {"MLHARBOR_HOME": str(settings.home)}
    data = home / f"rows-{rows}.parquet"
    if not (settings.home / "mlharbor.db").exists():
        rng = np.random.default_rng(0)
        x = pd.DataFrame(rng.normal(size=(5000, 20)), columns=FEATURES)
        model = RandomForestClassifier(n_estimators=100, max_depth=8, random_state=0)
        registry = open_registry(settings)
        register_model(registry, "bench", model.fit(x, (x.f0 + x.f1 > 0).astype(int)),
                       settings=settings, sample_input=x.head(20))
        registry.close()
    if not data.exists():
        rng = np.random.default_rng(1)
        with pq.ParquetWriter(data, pa.schema([(f, pa.float64()) for f in FEATURES])) as out:
            for start in range(0, rows, 100_000):
                n = min(100_000, rows - start)
                out.write_table(pa.table({f: rng.normal(size=n) for f in FEATURES}),
                                row_group_size=100_000)
    return env, data


def run_predict(env: dict[str, str], data: Path, out: Path, *extra: str, cores: str = "0"
                ) -> tuple[float, int]:
    """Seconds of one `mlharbor predict` run and the child's peak RSS in bytes."""
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    proc = subprocess.Popen(["taskset", "-c", cores, str(BIN / "mlharbor"), "predict",
                             "bench:1", "--input", str(data), "--output", str(out),
                             "--part-rows", "200000", *extra],
                            env={**os.environ, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    if status != 0:
        raise SystemExit(f"mlharbor predict failed: {proc.stderr.read().decode()}")  # type: ignore[union-attr]
    return seconds, usage.ru_maxrss * 1024


def bare_onnx(env: dict[str, str], data: Path) -> float:
    """Seconds for pyarrow + onnxruntime alone on core 0 (in a child pinned like predict)."""
    code = f"""
import time, glob, numpy as np, onnxruntime as ort, pyarrow.parquet as pq
path = sorted(glob.glob({env['MLHARBOR_HOME']!r} + '/cache/bundles/bench/1/**/*.onnx',
              recursive=True))[0]
opts = ort.SessionOptions(); opts.intra_op_num_threads = 1; opts.inter_op_num_threads = 1
sess = ort.InferenceSession(path, opts, providers=['CPUExecutionProvider'])
name = sess.get_inputs()[0].name
outs = [o.name for o in sess.get_outputs()]
start = time.perf_counter()
for batch in pq.ParquetFile({str(data)!r}).iter_batches(batch_size=65536):
    x = np.column_stack([c.to_numpy() for c in batch.columns]).astype(np.float32)
    sess.run(outs, {{name: x}})
print(time.perf_counter() - start)
"""
    done = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", code], check=True,
                          capture_output=True, text=True)
    return float(done.stdout.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--home", type=Path, default=Path("/tmp/mlh-batch"))
    parser.add_argument("--budget", default="400MB")
    parser.add_argument("--skip-dask", action="store_true")
    args = parser.parse_args()
    args.home.mkdir(parents=True, exist_ok=True)
    env, data = setup(args.home, args.rows)
    run_predict(env, data, args.home / "warm", "--workers", "1")  # fills the bundle cache
    ours, bare = [], []
    for i in range(args.rounds):
        seconds, _ = run_predict(env, data, args.home / "out", "--workers", "1")
        ours.append(args.rows / seconds)
        bare.append(args.rows / bare_onnx(env, data))
        print(f"round {i}: mlharbor {ours[-1]:,.0f} rows/s (whole command), "
              f"bare onnxruntime {bare[-1]:,.0f} rows/s (loop only)")
    ratio = statistics.median(ours) / statistics.median(bare)
    print(f"local vs bare ONNX Runtime: {ratio:.2f} (target >= 0.80)")

    from mlharbor.cli.predict import parse_bytes

    budget = parse_bytes(args.budget)
    big_rows = 10 * budget // (8 * len(FEATURES))
    _, big = setup(args.home, big_rows)
    _, peak = run_predict(env, big, args.home / "mem", "--workers", "1", "--memory-budget",
                          str(budget))
    print(f"memory: {big_rows:,} rows ({10 * budget:,} decoded bytes) under a budget of "
          f"{budget:,}: peak RSS {peak:,} ({peak / budget:.2f} of the budget)")
    if args.skip_dask:
        return
    sys.path.insert(0, str(ROOT))
    from tests.dask_cluster import dask_cluster

    with dask_cluster(args.home / "dask", workers=2) as cluster:
        dask_rates, local_rates = [], []
        for i in range(args.rounds):
            seconds, _ = run_predict(env, data, args.home / "dask-out", "--engine", "dask",
                                     "--scheduler", cluster.address, cores="0,1")
            dask_rates.append(args.rows / seconds)
            local_rates.append(ours[i % len(ours)])
            print(f"round {i}: dask 2 workers {dask_rates[-1]:,.0f} rows/s")
        print(f"dask (2 workers) vs local (1 core): "
              f"{statistics.median(dask_rates) / statistics.median(local_rates):.2f} "
              "(target >= 1.6)")


if __name__ == "__main__":
    main()
