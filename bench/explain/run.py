"""p50 latency of one explanation of the bench RandomForest (bench/serving/run.py's model).

    .venv/bin/python bench/explain/run.py [--rounds 200] [--rows 1]

Trains RandomForestClassifier(n_estimators=100, max_depth=8) on 20 numeric features (the
same data and seed as bench/serving/run.py), saves it as a bundle (skops, native runtime) and
loads it back, builds its explainer (exact TreeSHAP through ``shap``; build time and first
call reported apart), then times ``explain`` of ``--rows`` rows ``--rounds`` times in this
process, next to the native ``predict_proba`` of the same rows. Prints one JSON line.
In-process: a served explanation adds the HTTP layer (about what a predict request costs).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--rows", type=int, default=1)
    args = parser.parse_args()

    import numpy as np
    import pandas as pd
    from sklearn.ensemble import RandomForestClassifier

    from mlharbor.explain import explainer_for
    from mlharbor.formats.builder import build_bundle
    from mlharbor.formats.predictor import load_bundle

    columns = [f"f{i}" for i in range(20)]
    rng = np.random.default_rng(0)
    x = pd.DataFrame(rng.normal(size=(5000, 20)), columns=columns)
    y = ((x.f0 + x.f1 - x.f2 + rng.normal(scale=0.5, size=5000)) > 0).astype(int)
    model = RandomForestClassifier(n_estimators=100, max_depth=8, random_state=0).fit(x, y)
    with tempfile.TemporaryDirectory() as tmp:
        build_bundle(model, Path(tmp) / "b", sample_input=x.head(20), runtime="native")
        predictor = load_bundle(Path(tmp) / "b", runtime="native")
    started = time.perf_counter()
    explainer = explainer_for(predictor)
    build_s = time.perf_counter() - started
    records = x.iloc[:args.rows].to_dict("records")
    started = time.perf_counter()
    first = explainer.explain(records)
    first_s = time.perf_counter() - started
    explain_s, predict_s = [], []
    for i in range(args.rounds):
        rows = x.iloc[i % 4000:i % 4000 + args.rows].to_dict("records")
        t0 = time.perf_counter()
        explainer.explain(rows)
        t1 = time.perf_counter()
        predictor.predict_proba(rows)
        predict_s.append(time.perf_counter() - t1)
        explain_s.append(t1 - t0)
    gap = float(np.abs(first.outputs()[:, 0] - predictor.predict_proba(records)[:, 1]).max())
    print(json.dumps({
        "model": "RandomForestClassifier(100 trees, depth 8), 20 features",
        "method": first.method, "rows_per_call": args.rows, "rounds": args.rounds,
        "explain_p50_ms": round(statistics.median(explain_s) * 1e3, 2),
        "explain_p90_ms": round(statistics.quantiles(explain_s, n=10)[-1] * 1e3, 2),
        "native_predict_p50_ms": round(statistics.median(predict_s) * 1e3, 2),
        "explainer_build_s": round(build_s, 2), "first_explain_s": round(first_s, 2),
        "additivity_max_abs_error": gap,
    }))


if __name__ == "__main__":
    main()
