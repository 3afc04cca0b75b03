"""The garbage collector after start-up: what a long-running server process keeps for life is
moved out of its view, so a full collection does not walk it on every request's time.

Used by both server processes: ``mlharbor serve`` (its app's start-up, after the models are
loaded) and ``mlharbor server`` (the control plane's, after its services started). On the
control plane the pauses were as visible: a ``runs/search`` answer of 900 runs took 20-27 ms,
and every sixth or seventh took 76-107 ms, a full collection walking the few hundred thousand
objects of FastAPI, SQLAlchemy and pydantic (measured on the real server, 35 searches).
"""

from __future__ import annotations

import gc

GC_YOUNG_THRESHOLD = 10_000  # see freeze_startup_objects


def freeze_startup_objects() -> None:
    """Move everything alive after start-up (libraries, loaded models) out of the garbage
    collector's view. A full collection walks every tracked object, a few hundred thousand
    once ONNX Runtime, scikit-learn and pandas are loaded, which stalled every request in
    flight for tens of milliseconds several times a minute under load: the p99 latency.
    Once per process (the app is built once); the price is that objects of that moment which
    later become cyclic garbage (a version swapped out by a rollout) are never collected.

    No collection first: imports and loading leave almost no cyclic garbage by then (46
    unreachable objects of 85,000 measured for an ONNX-served model), and a full collection
    there cost 40-200 ms before the first answer (issue 18's launch time).

    The youngest generation's threshold is raised too (:data:`GC_YOUNG_THRESHOLD`). Young
    collections start when the count of container objects alive grows by the threshold, and
    what grows under load is not garbage: the requests in flight and the records waiting for
    the prediction log's flusher (about 70 objects per request, freed by reference counting a
    moment later; a collection finds almost no cycles among them). At Python's 700 that was a
    young collection every ten or so requests, walking live objects for nothing: ~30 us of
    CPU per 64-row request, and a stream of pauses."""
    gc.freeze()
    young, older, oldest = gc.get_threshold()
    gc.set_threshold(max(young, GC_YOUNG_THRESHOLD), older, oldest)
