"""Memory that outlived what it belonged to (issue 15: ~100 MiB above the baseline was in no
loaded model).

Two causes, each pinned here: an ONNX Runtime answer is a view on a tensor the session
allocated, so with the session's own memory arena every kept answer held the whole arena of a
session long unloaded; and a server without monitoring offered every prediction record to a
buffer that nothing drained. Measured on the C heap's bytes in use (glibc's ``mallinfo2``),
which counts what is allocated whatever pages it sits in.
"""

from __future__ import annotations

import gc
import weakref
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from mlharbor.core.records import PredictionRecord
from mlharbor.formats.bundle import ModelBytes
from mlharbor.formats.onnx import make_session
from mlharbor.serving.memory import heap_bytes, release_free_memory
from mlharbor.serving.sink import MemorySink, NullSink, SinkDispatcher

SESSIONS = 10


def _forest_onnx(path: Path) -> ModelBytes:
    from skl2onnx import to_onnx
    from sklearn.ensemble import RandomForestClassifier

    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 20)).astype(np.float32)
    model = RandomForestClassifier(n_estimators=20, max_depth=6, random_state=0)
    model.fit(x, (x[:, 0] > 0).astype(int))
    data = to_onnx(model, x[:1], options={"zipmap": False}).SerializeToString()
    path.write_bytes(data)
    return ModelBytes.of(path, data)


def test_answers_kept_after_their_session_is_gone_hold_only_their_own_bytes(
        tmp_path: Path) -> None:
    """Ten sessions each answer three rows and are dropped; their answers are kept. With a
    per-session arena the answers held ~1 MiB per dropped session (10.3 MiB measured); now
    they hold their own few bytes."""
    blob = _forest_onnx(tmp_path / "forest.onnx")
    x = np.zeros((3, 20), dtype=np.float32)
    session = make_session(blob)  # the runtime's one-time set-up, outside the measure
    session.run(None, {"X": x})
    del session
    gc.collect()
    release_free_memory()
    before = heap_bytes()
    assert before is not None  # glibc: the serving images and CI run on it
    kept = []
    for _ in range(SESSIONS):
        session = make_session(blob)
        kept.append(session.run(None, {"X": x}))
        del session
    release_free_memory()
    held = (heap_bytes() or 0) - before
    assert len(kept) == SESSIONS and all(len(answer[0]) == 3 for answer in kept)
    assert held < 2 << 20, f"{SESSIONS} dropped sessions' answers hold {held} bytes"


def _record(outputs: np.ndarray) -> PredictionRecord:
    return PredictionRecord(request_id="r", endpoint="e", model_ref="m:1", served_version=1,
                            inputs=[{"a": 1.0}], outputs=outputs, latency_s=0.001,
                            at=datetime.now(UTC))


def test_a_dispatcher_over_a_null_sink_keeps_no_record() -> None:
    """Nothing drains a NullSink (monitoring off): its records are let go at once, counted as
    neither buffered nor dropped. A real sink still gets every record."""
    dispatcher = SinkDispatcher(NullSink())
    dispatcher.start()
    answer = np.arange(3)
    alive = weakref.ref(answer)
    dispatcher.offer(_record(answer))
    del answer
    assert alive() is None
    assert dispatcher.buffered_bytes == 0 and dispatcher.dropped == 0

    sink = MemorySink()
    real = SinkDispatcher(sink)
    real.offer(_record(np.arange(3)))
    real.flush()
    assert len(sink.records) == 1 and real.dropped == 0
