"""Byte limits between a request and the disk: the micro-batcher's queue, the sink's buffer and
the prediction log's pending records hold at most their limit; past it requests are shed (503)
or records dropped and counted, and memory does not grow."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlharbor.core.clock import utcnow
from mlharbor.core.records import PredictionRecord
from mlharbor.core.signature import ColumnSpec, Signature
from mlharbor.formats.predictor import Outputs
from mlharbor.serving.batching import MicroBatcher
from mlharbor.serving.http import OverloadedError
from mlharbor.serving.model import NumericRows, ServedModel
from mlharbor.serving.sink import SinkDispatcher
from mlharbor.settings import Settings

WIDTH = 4


class GatedRunner:
    """A runner of ours (the seam the batcher drives): answers each row's sum once ``gate``
    is open, and records where each batch ran (a worker thread or the event loop's)."""

    runtime = "test"

    def __init__(self, gate: threading.Event) -> None:
        self.gate = gate
        self.threads: list[str] = []

    def prepare(self, validator: Any, data: Any) -> Any:
        return validator.matrix(data, np.float64)

    def rows(self, x: Any) -> int:
        return int(x.shape[0])

    def concat(self, xs: Sequence[Any]) -> Any:
        return np.concatenate(list(xs))

    def run(self, x: Any) -> Outputs:
        assert self.gate.wait(30), "the test never opened the gate"
        self.threads.append(threading.current_thread().name)
        return Outputs(x.sum(axis=1), None)


def served(runner: GatedRunner) -> ServedModel:
    signature = Signature(tuple(ColumnSpec(f"c{i}", "float64") for i in range(WIDTH)))
    return ServedModel("m", 1, signature, runner, task="regression", classes=None)


def test_batcher_queue_holds_at_most_its_bytes_and_sheds_the_rest() -> None:
    gate = threading.Event()
    model = served(GatedRunner(gate))
    row = np.ones((16, WIDTH))  # 512 bytes a request
    limit = 4 * row.nbytes

    async def main() -> tuple[list[Any], int, int]:
        with ThreadPoolExecutor(1) as pool:
            batcher = MicroBatcher(model, pool, max_batch_size=16, max_queue_bytes=limit)
            tasks = [asyncio.ensure_future(batcher.submit(row * i, 16)) for i in range(12)]
            await asyncio.sleep(0.05)
            most = batcher.queued_bytes
            gate.set()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            return results, most, batcher.queued_bytes

    results, most, left = asyncio.run(main())
    shed = [r for r in results if isinstance(r, OverloadedError)]
    answered = [(i, r) for i, r in enumerate(results) if isinstance(r, Outputs)]
    assert most <= limit and left == 0
    # All twelve arrive before the worker takes any: four fit the limit, eight are shed.
    assert [i for i, _ in answered] == [0, 1, 2, 3] and len(shed) == 8
    assert "max_queue_bytes" in str(shed[0]) and shed[0].code == "overloaded"
    for i, outputs in answered:
        np.testing.assert_allclose(outputs.predictions, np.full(16, WIDTH * i))


def test_a_cheap_model_runs_on_the_event_loop_a_slow_one_in_the_pool() -> None:
    gate = threading.Event()
    gate.set()
    runner = GatedRunner(gate)
    model = served(runner)
    row = np.ones((1, WIDTH))

    async def main(inline_max_s: float) -> None:
        with ThreadPoolExecutor(1, "pool") as pool:
            batcher = MicroBatcher(model, pool, inline_max_s=inline_max_s)
            for _ in range(5):
                out = await batcher.submit(row, 1)
                assert out.predictions.tolist() == [WIDTH]

    asyncio.run(main(inline_max_s=1.0))
    # The first batch's speed is unknown: it runs in the pool; the next ones on the loop.
    assert runner.threads[0].startswith("pool")
    assert runner.threads[1:] == [threading.main_thread().name] * 4
    runner.threads.clear()
    asyncio.run(main(inline_max_s=0.0))  # 0 = always the pool
    assert all(t.startswith("pool") for t in runner.threads) and len(runner.threads) == 5


def record(rows: int) -> PredictionRecord:
    matrix = np.ones((rows, WIDTH))
    return PredictionRecord(
        request_id="r", endpoint="e", model_ref="m:1", served_version=1,
        inputs=NumericRows(matrix, ("a", "b", "c", "d")), matrix=matrix,
        columns=("a", "b", "c", "d"), outputs=Outputs(np.zeros(rows), None), latency_s=0.001,
        at=utcnow())


def test_record_size_counts_arrays_once_and_estimates_parsed_json() -> None:
    one = record(64)
    assert one.nbytes() == 512 + 64 * WIDTH * 8 + 64 * 8  # matrix once, predictions
    parsed = PredictionRecord(
        request_id="r", endpoint="e", model_ref="m:1", served_version=1,
        inputs=[{"a": 1.0, "b": 2.0}] * 10, outputs=None, latency_s=0.0, at=utcnow())
    assert parsed.nbytes() == 512 + 80 * 2 * 10


class StuckSink:
    def __init__(self) -> None:
        self.records: list[PredictionRecord] = []

    def write(self, records: Sequence[PredictionRecord]) -> None:
        self.records.extend(records)


def test_sink_buffer_holds_at_most_its_bytes_and_counts_drops() -> None:
    sink = StuckSink()
    size = record(64).nbytes()
    drops: list[int] = []
    dispatcher = SinkDispatcher(sink, max_bytes=10 * size, on_drop=drops.append)
    for _ in range(25):  # the drain thread is not started: the sink is "stuck"
        dispatcher.offer(record(64))
        assert dispatcher.buffered_bytes <= 10 * size
    assert dispatcher.dropped == 15 and sum(drops) == 15
    dispatcher.flush()
    assert len(sink.records) == 10 and dispatcher.buffered_bytes == 0
    dispatcher.offer(record(64))  # room again once drained
    assert dispatcher.buffered_bytes == size


@pytest.mark.xdist_group("prediction-log")
def test_prediction_log_pending_records_are_bounded_in_bytes(tmp_path: Path) -> None:
    from mlharbor.monitoring.service import open_prediction_log

    size = record(64).nbytes()
    settings = Settings(home=tmp_path, monitoring={"pending_max_bytes": 8 * size,
                                                   "compaction": "thread"})
    log = open_prediction_log(settings)  # not started: no flusher drains meanwhile
    try:
        for _ in range(20):
            log.emit(record(64))
            assert log.pending_bytes <= 8 * size
        assert log.drops["buffer_full"] == 12
        assert log.flush() == 8 and log.pending_bytes == 0
        log.emit(record(64))
        assert log.drops["buffer_full"] == 12 and log.pending_bytes == size
    finally:
        log.close()
