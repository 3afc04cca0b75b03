"""Distributed training: one search on a Dask cluster of 2 workers vs 1 worker, on 2 cores.

    .venv/bin/python bench/training/run.py [--rounds 3] [--rows 6000] [--trees 80] [--folds 5]

Writes a synthetic 20-feature classification dataset and a recipe whose RandomForest grid
search has 6 settings; with 5 folds that is 30 candidate fits plus 5 baseline fits. Starts two
real clusters on loopback (``dask scheduler`` + ``dask worker`` processes, one thread each):
"1 worker" (its worker pinned to core 0) and "2 workers" (pinned to cores 0 and 1). Each round
trains the recipe through ``run_training`` on each cluster (the order alternates between
rounds) and on the local joblib backend with 2 jobs for context, and times the search phase
(every CV fit, from the first submitted fold to the last result) and the whole run. Every
run must give the same metrics and winner, or the bench stops.

Prints every round, then the medians and the ratio 1 worker / 2 workers of the search time
(median of the per-round ratios; target >= 1.6). The machine should be otherwise idle.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
TARGET = 1.6

RECIPE = """\
data: {{path: data.csv, target: label}}
candidates:
  - name: forest
    estimator: sklearn.ensemble.RandomForestClassifier
    params: {{n_estimators: {trees}}}
    search: {{method: grid, space: {{max_depth: [6, 10, 14], min_samples_leaf: [1, 4]}}}}
validation: {{holdout: 0.2, folds: {folds}, seed: 0, bootstrap: 0}}
metrics: {{primary: f1}}
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[Any], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the dask scheduler exited ({proc.returncode})")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.1)
    raise RuntimeError(f"the dask scheduler did not listen on {port}")


@contextlib.contextmanager
def cluster(workdir: Path, cores: list[int]) -> Iterator[str]:
    """A scheduler and one single-thread worker per core (pinned there); yields the address."""
    workdir.mkdir(parents=True)
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}
    log = (workdir / "cluster.log").open("ab")
    procs = [subprocess.Popen([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port",
                               str(port), "--no-dashboard"], stdout=log, stderr=log, env=env,
                              start_new_session=True)]
    try:
        _wait_port(port, procs[0])
        for i, core in enumerate(cores):
            procs.append(subprocess.Popen(
                ["taskset", "-c", str(core), str(BIN / "dask"), "worker", address,
                 "--nthreads", "1", "--nworkers", "1", "--no-dashboard", "--host",
                 "127.0.0.1", "--local-directory", str(workdir / f"w{i}")],
                stdout=log, stderr=log, env=env, start_new_session=True))
        from distributed import Client

        with Client(address, timeout=60) as client:
            client.wait_for_workers(len(cores), timeout=60)
        yield address
    finally:
        for proc in reversed(procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def train_once(recipe: Any, **where: Any) -> tuple[float, float, dict[str, float], int]:
    """(search seconds, whole-run seconds, metrics, fits) of one run_training."""
    from mlharbor.pipelines.train_job import Progress, run_training

    class Clock(Progress):
        started = finished = 0.0
        fits = 0

        def start(self, task: str, description: str, total: int | None = None) -> None:
            if task == "folds":
                self.started, self.fits = time.perf_counter(), total or 0

        def finish(self, task: str) -> None:
            if task == "folds":
                self.finished = time.perf_counter()

    clock = Clock()
    began = time.perf_counter()
    outcome = run_training(recipe, progress=clock, **where)
    whole = time.perf_counter() - began
    return clock.finished - clock.started, whole, outcome.metrics, clock.fits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rows", type=int, default=6000)
    parser.add_argument("--trees", type=int, default=80)
    parser.add_argument("--folds", type=int, default=5)
    args = parser.parse_args()

    import pandas as pd
    from sklearn.datasets import make_classification

    from mlharbor.training.recipe import recipe_from_yaml

    with tempfile.TemporaryDirectory(prefix="mlh-bench-training-") as tmp:
        folder = Path(tmp)
        X, y = make_classification(n_samples=args.rows, n_features=20, n_informative=8,
                                   flip_y=0.05, random_state=0)
        frame = pd.DataFrame(X, columns=[f"f{i}" for i in range(20)]).assign(label=y)
        frame.to_csv(folder / "data.csv", index=False)
        recipe = recipe_from_yaml(RECIPE.format(trees=args.trees, folds=args.folds),
                                  source="bench recipe", base_dir=folder)
        with cluster(folder / "one", [0]) as one, cluster(folder / "two", [0, 1]) as two:
            configs = {"dask 1 worker": {"backend": "dask", "scheduler": one},
                       "dask 2 workers": {"backend": "dask", "scheduler": two},
                       "local joblib 2 jobs": {"backend": "local", "n_jobs": 2}}
            train_once(recipe, **configs["dask 2 workers"])  # warm: imports on the workers
            train_once(recipe, **configs["dask 1 worker"])
            rounds: list[dict[str, tuple[float, float]]] = []
            reference: dict[str, float] | None = None
            fits = 0
            for r in range(args.rounds):
                order = list(configs) if r % 2 == 0 else [*reversed(list(configs)[:2]),
                                                          list(configs)[2]]
                timings: dict[str, tuple[float, float]] = {}
                for name in order:
                    search, whole, metrics, fits = train_once(recipe, **configs[name])
                    if reference is None:
                        reference = metrics
                    elif metrics != reference:
                        raise SystemExit(f"{name}: metrics differ from the first run")
                    timings[name] = (search, whole)
                rounds.append(timings)
                ratio = timings["dask 1 worker"][0] / timings["dask 2 workers"][0]
                print(f"round {r + 1}: " + ", ".join(
                    f"{n} search {s:.2f}s (run {w:.2f}s)" for n, (s, w) in timings.items())
                    + f"; 1 worker / 2 workers = {ratio:.2f}x", flush=True)

    print(f"\n== training bench: {fits} fits per search ({args.rows} rows, {args.trees} trees, "
          f"{args.folds} folds), {args.rounds} round(s), medians")
    for name in configs:
        search = statistics.median(t[name][0] for t in rounds)
        whole = statistics.median(t[name][1] for t in rounds)
        print(f"{name:22s} search {search:8.2f}s   whole run {whole:8.2f}s")
    ratios = [t["dask 1 worker"][0] / t["dask 2 workers"][0] for t in rounds]
    median = statistics.median(ratios)
    verdict = "PASS" if median >= TARGET else "below target"
    print(f"search speed-up, 2 workers vs 1: {median:.2f}x (target >= {TARGET}x: {verdict}); "
          f"rounds: {', '.join(f'{x:.2f}' for x in ratios)}")
    print("every run gave the same metrics and winner")


if __name__ == "__main__":
    main()
