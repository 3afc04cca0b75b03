"""The local engine: tasks run on a pool of threads in this process.

Threads, not processes, because the work we hand it (ONNX Runtime, NumPy, pyarrow, scikit-learn
trees) releases the GIL, and threads need no pickling and no second copy of a loaded model.
``joblib()`` uses joblib's own process pool (loky) with the same number of jobs, which is what
scikit-learn's loops expect locally.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


class LocalEngine:
    """``workers`` threads (None: one per core); at most twice that many tasks in flight."""

    name = "local"

    def __init__(self, workers: int | None = None) -> None:
        self._workers = workers or os.cpu_count() or 1
        self._pool: ThreadPoolExecutor | None = None

    def __enter__(self) -> LocalEngine:
        if self._workers > 1:
            self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="mlharbor-compute")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def workers(self) -> int:
        return self._workers

    def threads_per_process(self) -> int:
        return self._workers

    def map_unordered(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[tuple[int, R]]:
        """Run ``fn`` over ``items``; one worker runs inline, in order, in this thread."""
        if self._pool is None:
            for index, item in enumerate(items):
                yield index, fn(item)
            return
        yield from _bounded(self._pool, fn, items, limit=2 * self._workers)

    @contextlib.contextmanager
    def joblib(self) -> Iterator[None]:
        """joblib loops inside use loky with ``workers`` jobs (``Parallel(n_jobs=None)``)."""
        from joblib import parallel_config

        with parallel_config(backend="loky", n_jobs=self._workers):
            yield


def _bounded(pool: ThreadPoolExecutor, fn: Callable[[T], R], items: Iterable[T], limit: int
             ) -> Iterator[tuple[int, R]]:
    """Keep up to ``limit`` tasks submitted; yield each as it finishes; on an error or when the
    caller stops early, cancel what has not started."""
    pending: dict[Future[R], int] = {}
    source = enumerate(items)
    try:
        for index, item in source:
            pending[pool.submit(fn, item)] = index
            if len(pending) >= limit:
                yield from _drain(pending, until=limit - 1)
        yield from _drain(pending, until=0)
    finally:
        for future in pending:
            future.cancel()


def _drain(pending: dict[Future[R], int], until: int) -> Iterator[tuple[int, R]]:
    while len(pending) > until:
        done, _ = wait(pending, return_when=FIRST_COMPLETED)
        for future in done:
            index = pending.pop(future)
            yield index, future.result()
