"""Once the serving app has started, the collector's youngest generation waits for far more
growth than Python's default: under load what grows is the requests in flight and the records
waiting for the prediction log (freed by reference counting), not cyclic garbage, and a young
collection every few requests walked them for nothing."""

from __future__ import annotations

import gc
from typing import Any

import httpx

from mlharbor.core.heap import GC_YOUNG_THRESHOLD

ROW = {f"f{i}": 0.1 * i for i in range(20)}


def test_startup_raises_the_young_collection_threshold(serve: Any) -> None:
    before = gc.get_threshold()
    gc.set_threshold(700, before[1], before[2])
    try:
        server = serve(ref="churn@champion")
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, before[1], before[2])
        answer = httpx.post(f"{server.url}/v1/endpoints/churn/predict", json=ROW)
        assert answer.status_code == 200, answer.text
    finally:
        gc.set_threshold(*before)


def test_a_higher_threshold_already_set_is_kept(serve: Any) -> None:
    before = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD * 5, before[1], before[2])
    try:
        serve(ref="churn@champion")
        assert gc.get_threshold()[0] == GC_YOUNG_THRESHOLD * 5
    finally:
        gc.set_threshold(*before)
