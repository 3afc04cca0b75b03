"""A queued request's deadline (``MicroBatcher.submit(..., deadline)``, one timer on its future
instead of a timeout context around the await): past it the request fails with TimeoutError,
its rows are left out of the next batch, the requests around it still answer, and a request
answered in time leaves no timer behind."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from mlharbor.serving.batching import MicroBatcher
from tests.serving.test_limits import WIDTH, GatedRunner, served


def test_a_queued_request_past_its_deadline_times_out_and_is_not_run() -> None:
    gate = threading.Event()
    runner = GatedRunner(gate)
    batches: list[int] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(1, "pool") as pool:
            batcher = MicroBatcher(served(runner), pool, max_batch_size=64, max_wait_s=0,
                                   on_batch=batches.append)
            # The first batch holds the (only) worker thread until the gate opens; the two
            # behind it queue: one with a deadline that passes meanwhile, one without.
            first = asyncio.ensure_future(batcher.submit(np.ones((1, WIDTH)), 1))
            await asyncio.sleep(0)
            late = asyncio.ensure_future(
                batcher.submit(np.full((2, WIDTH), 2.0), 2, loop.time() + 0.05))
            patient = asyncio.ensure_future(
                batcher.submit(np.full((1, WIDTH), 3.0), 1, loop.time() + 60))
            with pytest.raises(TimeoutError):
                await late
            gate.set()
            assert (await first).predictions.tolist() == [WIDTH]
            assert (await patient).predictions.tolist() == [3.0 * WIDTH]
            assert not batcher._queue and batcher.queued_bytes == 0

    asyncio.run(main())
    assert batches == [1, 1]  # the late request's two rows never ran


def test_a_request_answered_in_time_cancels_its_timer() -> None:
    gate = threading.Event()
    gate.set()
    runner = GatedRunner(gate)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(1, "pool") as pool:
            batcher = MicroBatcher(served(runner), pool, max_batch_size=64)
            timers: list[asyncio.TimerHandle] = []
            call_at = loop.call_at

            def recording_call_at(when: float, callback, *args):  # type: ignore[no-untyped-def]
                handle = call_at(when, callback, *args)
                timers.append(handle)
                return handle

            loop.call_at = recording_call_at  # type: ignore[method-assign]
            try:
                out = await asyncio.gather(*(batcher.submit(np.full((1, WIDTH), i), 1,
                                                            loop.time() + 60)
                                             for i in range(3)))
            finally:
                del loop.call_at  # type: ignore[method-assign]
            assert [o.predictions.tolist() for o in out] == [[WIDTH * i] for i in range(3)]
            assert len(timers) == 3 and all(t.cancelled() for t in timers)

    asyncio.run(main())
