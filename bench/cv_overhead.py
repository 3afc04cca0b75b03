"""Overhead of mlharbor's cross-validation over scikit-learn's ``cross_validate``.

Same pipelines (built from the demo recipe), same folds, same two workers. mlharbor computes
every metric of the task per fold (14 for binary classification) and reports progress fold by
fold; scikit-learn computes one metric (f1). Run by hand, pinned to two cores::

    taskset -c 0,1 .venv/bin/python bench/cv_overhead.py [--repeats 5]

Prints the median wall time of each and the overhead in percent (target: under 20%). With
``--n-jobs 1`` everything runs in this process, so its CPU time is printed too: a figure that
other load on the machine barely disturbs.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import mlharbor
from mlharbor.evaluation.crossval import cross_validate_many
from mlharbor.evaluation.metrics import Target
from mlharbor.pipelines.train_job import _candidate_settings, prepare
from mlharbor.training.binding import bind_schema, load_data
from mlharbor.training.recipe import load_recipe

RECIPE = Path(mlharbor.__file__).parent / "demo" / "recipe.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--n-jobs", type=int, default=2)
    args = parser.parse_args()

    from sklearn.model_selection import cross_validate

    from mlharbor.data.splits import plan_splits

    recipe = load_recipe(RECIPE)
    dataset = load_data(recipe)
    schema = bind_schema(recipe, dataset)
    plan = prepare(recipe, schema.task)
    frame = dataset.frame
    splits = plan_splits(frame, "churn", task="classification", strategy="auto",
                         holdout=recipe.validation.holdout, folds=recipe.validation.folds,
                         seed=recipe.validation.seed)
    X = frame[schema.feature_names].iloc[splits.train]
    y = frame["churn"].to_numpy()[splits.train]
    settings = _candidate_settings(plan, schema, X)
    target = Target("classification", schema.classes, 1)
    jobs = [(s.key, s.pipeline) for s in settings]

    def ours() -> None:
        cross_validate_many(jobs, X, y, splits.folds, target, n_jobs=args.n_jobs,
                            on_fold=lambda *_: None)

    def sklearn_direct() -> None:
        for _, pipeline in jobs:
            cross_validate(pipeline, X, y, cv=splits.folds, scoring="f1", n_jobs=args.n_jobs)

    cpu: dict[str, list[float]] = {"ours": [], "sklearn": []}

    def timed(func: object, key: str) -> float:
        started, cpu_started = time.perf_counter(), time.process_time()
        func()  # type: ignore[operator]
        cpu[key].append(time.process_time() - cpu_started)
        return time.perf_counter() - started

    ours()
    sklearn_direct()  # warm both: worker start-up is paid once per process
    mine, theirs = [], []
    for _ in range(args.repeats):  # interleaved, so drift in machine load hits both alike
        theirs.append(timed(sklearn_direct, "sklearn"))
        mine.append(timed(ours, "ours"))
    a, b = statistics.median(mine), statistics.median(theirs)
    print(f"pipelines: {', '.join(k for k, _ in jobs)}; folds: {len(splits.folds)}; "
          f"train rows: {len(y)}; n_jobs: {args.n_jobs}; repeats: {args.repeats}")
    print(f"sklearn cross_validate (f1 only): median {b:.3f} s  "
          f"runs {[round(t, 3) for t in theirs]}")
    print(f"mlharbor cross_validate_many (14 metrics): median {a:.3f} s  "
          f"runs {[round(t, 3) for t in mine]}")
    print(f"overhead (wall): {100 * (a - b) / b:+.1f}%")
    if args.n_jobs == 1:
        c_ours, c_sk = statistics.median(cpu["ours"]), statistics.median(cpu["sklearn"])
        print(f"CPU time: sklearn {c_sk:.3f} s, mlharbor {c_ours:.3f} s, "
              f"overhead {100 * (c_ours - c_sk) / c_sk:+.1f}%")


if __name__ == "__main__":
    main()
