"""The BentoML peer: a plain ``@bentoml.service`` calling ``predict_proba`` on the model.

Written the way the BentoML docs show it (the model from BentoML's model store, a typed JSON
API); run.py serves it from the peer venv with

    BENTOML_HOME=... BENCH_BENTO_MODEL=bench_rf:latest \
        taskset -c 0 bentoml serve bento_service:RandomForest --host 127.0.0.1 --port PORT

Request: ``POST /predict`` with ``{"rows": [{"f0": ..., ..., "f19": ...}, ...]}``.
"""

from __future__ import annotations

import os
from typing import Any

import bentoml
import pandas as pd

COLUMNS = [f"f{i}" for i in range(20)]


@bentoml.service(workers=1)
class RandomForest:
    def __init__(self) -> None:
        self.model = bentoml.sklearn.load_model(os.environ.get("BENCH_BENTO_MODEL",
                                                               "bench_rf:latest"))

    @bentoml.api  # type: ignore[untyped-decorator, unused-ignore]
    def predict(self, rows: list[dict[str, float]]) -> dict[str, Any]:
        x = pd.DataFrame(rows, columns=COLUMNS)
        p = self.model.predict_proba(x)
        return {"predictions": p.argmax(axis=1).tolist(), "probabilities": p.tolist()}
