"""The model memory budget is kept on what the process really holds (issue 15), in process.

A lazy pool with a budget takes its baseline (trimmed RSS, no version loaded) when it starts,
then keeps the trimmed RSS above it, plus the next load's peak, within the budget. The models
here are numpy arrays of known size (the loader is the seam we own); a load may also need
scratch memory it frees before it returns, as deserialising a bundle does. Each load's peak is
read from the kernel's peak-RSS mark, which the pool resets when the load starts, so what is
checked is the real high-water mark of the process during every load.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from mlharbor.serving.budget import lru_victims, victims_covering
from mlharbor.serving.memory import peak_resident_bytes, trimmed_resident_bytes
from mlharbor.serving.pool import ModelPool, PoolEntry

MiB = 1 << 20
# The pytest process's own allocations between two measurements (a list, a log record, the
# event loop's handles) show in its RSS too: a few hundred KiB, next to budgets of 60-100 MiB.
NOISE = 1 * MiB


def _versions(count: int) -> list[Any]:
    manifest = {"model_format": "test", "default_runtime": "native", "files": []}
    return [SimpleNamespace(name=f"m{i}", version=1, ref=f"m{i}:1", manifest=manifest)
            for i in range(count)]


def _loader(size: int, scratch: int = 0) -> Any:
    """Models of ``size`` bytes (touched), each load first filling ``scratch`` bytes it frees."""
    def load(mv: Any) -> Any:
        weights = np.ones(size // 8)
        if scratch:  # held beside the weights, as a bundle's bytes beside what they become
            work = np.ones(scratch // 8)
            assert work.sum() > 0
            del work
        return SimpleNamespace(runtime="test", weights=weights)

    return load


def _pool(loader: Any, budget: int) -> ModelPool:
    return ModelPool(loader, load_executor=ThreadPoolExecutor(1), memory_budget=budget)


def test_a_load_s_peak_is_reserved_not_only_its_size() -> None:
    """Models of 10 MiB whose loads peak at ~70 MiB, in a budget of 95 MiB: by sizes alone
    nine would fit, but the next load's peak must fit above what is held, so three stay
    loaded, and no load ever takes the process past baseline + budget."""
    budget = 95 * MiB
    pool = _pool(_loader(10 * MiB, scratch=60 * MiB), budget)
    versions = _versions(8)

    async def scenario() -> list[int]:
        await pool.converge(versions)
        highs = []
        for mv in versions:
            entry = await pool.ensure(mv)
            assert entry.state == "ready", entry.reason
            highs.append((peak_resident_bytes() or 0) - (pool.resident.baseline or 0))
        return highs

    highs = asyncio.run(scenario())
    assert pool.resident.baseline is not None
    assert max(highs) <= budget + NOISE, [h // MiB for h in highs]
    loaded = pool.loaded()
    assert len(loaded) == 3, [e.ref for e in loaded]
    assert all((e.peak_bytes or 0) >= 60 * MiB for e in loaded)
    assert loaded[0].status()["load_peak_bytes"] == loaded[0].peak_bytes


def test_memory_outside_the_models_takes_room_from_them(caplog: pytest.LogCaptureFixture
                                                        ) -> None:
    """Memory the process took for something else after start (here 35 MiB the test holds)
    leaves less room for models: fewer stay loaded, and the trimmed RSS stays within
    baseline + budget. When that memory alone passes the budget, the version is still loaded,
    alone, and a warning says why."""
    budget = 60 * MiB
    pool = _pool(_loader(10 * MiB), budget)
    versions = _versions(8)
    outside: list[np.ndarray] = []

    async def load(mvs: list[Any]) -> None:
        for mv in mvs:
            assert (await pool.ensure(mv)).state == "ready"

    async def scenario() -> tuple[int, int, int]:
        await pool.converge(versions)
        await load(versions[:4])
        roomy = len(pool.loaded())
        outside.append(np.ones(35 * MiB // 8))
        await load(versions[4:6])
        crowded = len(pool.loaded())
        held = (trimmed_resident_bytes() or 0) - (pool.resident.baseline or 0)
        outside.append(np.ones(70 * MiB // 8))  # more than the whole budget
        await load(versions[6:7])
        return roomy, crowded, held

    with caplog.at_level(logging.WARNING, logger="mlharbor.serving.pool"):
        roomy, crowded, held = asyncio.run(scenario())
    assert roomy == 4  # 40 MiB of models and one more load fit in 60
    assert crowded == 2 and held <= budget + NOISE, (crowded, held // MiB)
    assert [e.ref for e in pool.loaded()] == ["m6:1"]
    assert any("leaves no room for m6:1" in r.getMessage() for r in caplog.records)


def test_victims_are_the_least_recently_used_never_one_answering_or_the_one_loading() -> None:
    entries = [PoolEntry(f"m{i}", 1, state="ready", memory_bytes=10, last_used=float(i))
               for i in range(5)]
    entries[0].in_flight = 1  # answering: never unloaded
    keep = ("m1", 1)  # the one being loaded
    victims = lru_victims(entries, lambda used, count: used <= 30, keep=keep)
    assert [v.name for v in victims] == ["m2", "m3"]
    assert [v.name for v in victims_covering(entries, 15, keep=keep)] == ["m2", "m3"]
    assert [v.name for v in victims_covering(entries, 1, keep=keep)] == ["m2"]
    assert victims_covering(entries[:2], 5, keep=keep) == []  # nothing may go
