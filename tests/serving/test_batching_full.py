"""A request that fills a batch by itself, for a model cheap enough to run on the event loop,
runs at once when nothing is queued (no company could join it); smaller requests still wait
for company and run together, and a full one arriving behind queued ones keeps its turn."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from mlharbor.serving.batching import MicroBatcher
from mlharbor.serving.model import Outputs
from tests.serving.test_limits import WIDTH, GatedRunner, served


def without_waiting(step: object) -> Outputs:
    """The result of a coroutine that finishes without suspending once (else it waited)."""
    try:
        step.send(None)  # type: ignore[attr-defined]
    except StopIteration as done:
        result: Outputs = done.value
        return result
    step.close()  # type: ignore[attr-defined]
    raise AssertionError("the request waited for the event loop")


def test_full_requests_run_at_once_and_small_ones_still_batch() -> None:
    gate = threading.Event()
    gate.set()
    runner = GatedRunner(gate)
    batches: list[int] = []

    async def main() -> None:
        with ThreadPoolExecutor(1, "pool") as pool:
            batcher = MicroBatcher(served(runner), pool, max_batch_size=8, inline_max_s=1.0,
                                   on_batch=batches.append)
            await batcher.submit(np.ones((1, WIDTH)), 1)  # speed unknown: the pool
            full = np.arange(8 * WIDTH, dtype=np.float64).reshape(8, WIDTH)
            for i in range(3):
                out = without_waiting(batcher.submit(full + i, 8))
                np.testing.assert_allclose(out.predictions, (full + i).sum(axis=1))
            assert batcher._worker is None and not batcher._queue  # no drain task ran them
            small = await asyncio.gather(*(batcher.submit(np.full((1, WIDTH), i), 1)
                                           for i in range(4)))
            assert [o.predictions.tolist() for o in small] == [[WIDTH * i] for i in range(4)]

    asyncio.run(main())
    assert batches == [1, 8, 8, 8, 4]  # the four small ones ran as one batch
    assert runner.threads[1:] == [threading.main_thread().name] * 4


def test_a_full_request_behind_queued_ones_waits_its_turn() -> None:
    gate = threading.Event()
    gate.set()
    runner = GatedRunner(gate)
    order: list[int] = []

    async def main() -> None:
        with ThreadPoolExecutor(1, "pool") as pool:
            batcher = MicroBatcher(served(runner), pool, max_batch_size=4, inline_max_s=1.0,
                                   on_batch=order.append)
            await batcher.submit(np.ones((1, WIDTH)), 1)
            small = asyncio.ensure_future(batcher.submit(np.ones((2, WIDTH)), 2))
            await asyncio.sleep(0)  # the small one is queued, its drain task not yet run
            assert batcher._queue
            full = await batcher.submit(np.ones((4, WIDTH)), 4)
            assert full.predictions.tolist() == [WIDTH] * 4
            await small

    asyncio.run(main())
    assert order == [1, 2, 4]


def test_run_now_answers_only_what_could_not_wait_for_company() -> None:
    gate = threading.Event()
    gate.set()
    runner = GatedRunner(gate)

    async def main() -> None:
        with ThreadPoolExecutor(1, "pool") as pool:
            batcher = MicroBatcher(served(runner), pool, max_batch_size=4, inline_max_s=1.0)
            full = np.ones((4, WIDTH))
            assert batcher.run_now(full, 4) is None  # speed not known yet
            await batcher.submit(full, 4)  # measured (in the pool)
            assert batcher.run_now(np.ones((3, WIDTH)), 3) is None  # company may join it
            out = batcher.run_now(full, 4)
            assert out is not None and out.predictions.tolist() == [WIDTH] * 4
            off = MicroBatcher(served(runner), pool, max_batch_size=4, enabled=False)
            assert off.run_now(full, 4) is None  # batching off: the pool, always

    asyncio.run(main())
