"""Single-row latency of the Predictor against bare ONNX Runtime and native scikit-learn.

Run by hand, pinned to one core:  taskset -c 1 .venv/bin/python bench/predictor_bench.py

Model: RandomForestClassifier(100 trees, max_depth 8) on 20 numeric features. Prints one table
row per path: bare ``session.run``, Predictor given a NumPy row, a dict, a one-row DataFrame,
and native scikit-learn ``predict_proba``; then the serving path (``ServedModel.prepare`` +
``run``: labels and probabilities of one dict row) on ONNX Runtime and on the native model.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def measure(fn: Callable[[], Any], *, seconds: float = 1.0) -> tuple[float, float]:
    """Median and p99 microseconds per call, from batches of calls over ``seconds``."""
    for _ in range(200):
        fn()
    samples = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter_ns()
        for _ in range(50):
            fn()
        samples.append((time.perf_counter_ns() - start) / 50 / 1000)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.99) - 1]


def main() -> None:
    import pandas as pd
    from sklearn.ensemble import RandomForestClassifier

    from mlharbor.formats.builder import build_bundle
    from mlharbor.formats.onnx import make_session
    from mlharbor.formats.predictor import load_bundle
    from mlharbor.serving.model import ServedModel, runner_for

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 20))
    y = (x[:, 0] + x[:, 1] * x[:, 2] > 0).astype(int)
    model = RandomForestClassifier(100, max_depth=8, random_state=0).fit(x, y)
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(tmp) / "bundle"
        result = build_bundle(model, bundle, training_data=x)
        predictor = load_bundle(bundle)
        session = make_session(bundle / "onnx" / "model.onnx")
        row = x[:1].astype(np.float32)
        row64 = x[:1]
        names = predictor.signature.names
        as_dict = {n: float(v) for n, v in zip(names, row64[0], strict=True)}
        frame = pd.DataFrame([as_dict])
        input_name = session.get_inputs()[0].name
        served = {}
        for runtime in ("onnx", "native"):
            loaded = load_bundle(bundle, runtime=runtime)
            served[runtime] = ServedModel("bench", 1, loaded.signature, runner_for(loaded),
                                          task=loaded.task, classes=loaded.classes)

        def serve(runtime: str) -> Callable[[], Any]:
            model = served[runtime]
            return lambda: model.run(model.prepare(as_dict)[0])

        rows = [
            ("bare ORT session.run (float32 row)",
             lambda: session.run(["probabilities"], {input_name: row})),
            ("Predictor.predict_proba numpy row", lambda: predictor.predict_proba(row64)),
            ("Predictor.predict_proba dict", lambda: predictor.predict_proba(as_dict)),
            ("Predictor.predict_proba DataFrame", lambda: predictor.predict_proba(frame)),
            ("Predictor.predict dict", lambda: predictor.predict(as_dict)),
            ("served labels+proba dict, onnx", serve("onnx")),
            ("native sklearn predict_proba", lambda: model.predict_proba(row64)),
            ("native sklearn predict", lambda: model.predict(row64)),
            ("native served labels+proba dict", serve("native")),
        ]
        print(f"format={result.format} runtime={predictor.runtime} "
              f"parity={result.parity['status']}")
        print(f"{'path':40s} {'median us':>10s} {'p99 us':>10s} {'x bare':>8s}")
        bare = None
        for label, fn in rows:
            seconds = 0.5 if label.startswith("native") else 1.0
            median, p99 = measure(fn, seconds=seconds)
            bare = bare or median
            print(f"{label:40s} {median:10.1f} {p99:10.1f} {median / bare:8.2f}")


if __name__ == "__main__":
    main()
