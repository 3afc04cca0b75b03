"""Each loaded version's memory estimate (issue 14): the growth of the serving process's
resident memory while it loaded, kept on the pool entry and exported as
``mlharbor_model_memory_bytes{model,version}``; forgotten when the version leaves the pool."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import numpy as np

from mlharbor.serving.pool import ModelPool, resident_bytes
from mlharbor.telemetry.metrics import ServingMetrics

SIZE = 96 * 2**20  # a model holding 96 MiB of weights


def _gauge(metrics: ServingMetrics) -> dict[tuple[str, str], float]:
    family = next(m for m in metrics.registry.collect()
                  if m.name == "mlharbor_model_memory_bytes")
    return {(s.labels["model"], s.labels["version"]): s.value for s in family.samples}


def test_a_loaded_version_reports_the_memory_it_took() -> None:
    assert resident_bytes() is not None  # Linux: /proc/self/statm
    metrics = ServingMetrics()
    metrics.set_known(set(), {"big", "small"})

    def loader(mv: Any) -> Any:
        weights = np.ones(SIZE // 8) if mv.name == "big" else np.ones(8)  # touched pages
        return SimpleNamespace(runtime="test", weights=weights)

    pool = ModelPool(loader, metrics=metrics, keep_idle=0)
    versions = [SimpleNamespace(name=n, version=1, ref=f"{n}:1") for n in ("big", "small")]

    async def load() -> list[Any]:
        return [await pool.ensure(mv) for mv in versions]

    big, small = asyncio.run(load())
    assert big.state == small.state == "ready"
    assert big.memory_bytes is not None and 0.8 * SIZE <= big.memory_bytes <= 1.5 * SIZE
    assert small.memory_bytes is not None and small.memory_bytes < 0.1 * SIZE
    assert big.status()["memory_bytes"] == big.memory_bytes
    gauge = _gauge(metrics)
    assert gauge[("big", "1")] == big.memory_bytes
    sample = metrics.resource_sample()
    assert sample["resident_bytes"] >= SIZE and sample["cpu_seconds"] > 0
    assert {"model": "big", "version": 1, "memory_bytes": big.memory_bytes} in sample["models"]
    pool.prune(in_use={("small", 1)})  # big leaves the pool: its gauge goes too
    assert ("big", "1") not in _gauge(metrics) and ("small", "1") in _gauge(metrics)
