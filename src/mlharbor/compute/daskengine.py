"""The Dask engine: tasks run on the workers of an existing Dask distributed cluster.

We connect a client to a scheduler someone already runs (``dask scheduler`` + ``dask worker``,
dask-kubernetes, dask-jobqueue); we never start a cluster of our own. Dask reschedules a task
whose worker dies (up to its ``distributed.scheduler.allowed-failures``); a task that raises
re-raises here with its own exception. Functions and items travel with cloudpickle, so the
workers need mlharbor installed (the same version) to import what a task refers to.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from mlharbor.core.errors import InvalidInputError, UnavailableError

T = TypeVar("T")
R = TypeVar("R")

_HINT = "start one with `dask scheduler` or drop --engine dask"


def _distributed() -> Any:
    try:
        import distributed
    except ImportError as exc:
        raise InvalidInputError(
            "the dask engine needs Dask distributed, which is not installed",
            hint="pip install 'mlharbor[dask]'") from exc
    return distributed


class DaskEngine:
    """A client connected to the scheduler at ``address`` for the ``with`` block."""

    name = "dask"

    def __init__(self, address: str, *, connect_timeout: float = 10.0) -> None:
        self.address = address
        self._connect_timeout = connect_timeout
        self._client: Any = None

    def __enter__(self) -> DaskEngine:
        distributed = _distributed()
        self._refused_at_once()
        try:
            self._client = distributed.Client(self.address, timeout=self._connect_timeout,
                                              set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise UnavailableError(
                f"cannot reach the Dask scheduler at {self.address}: {_reason(exc)}; {_HINT}",
                scheduler=self.address) from exc
        try:
            if not self._client.nthreads():
                self._client.wait_for_workers(1, timeout=self._connect_timeout)
        except (OSError, TimeoutError) as exc:
            self._close()
            raise UnavailableError(
                f"the Dask scheduler at {self.address} has no workers (waited "
                f"{self._connect_timeout:g}s)",
                hint=f"Start one with `dask worker {self.address}`.",
                scheduler=self.address) from exc
        return self

    def __exit__(self, *exc: object) -> None:
        self._close()

    def _refused_at_once(self) -> None:
        """A port nobody listens on refuses a TCP connection at once, while Dask's client
        retries until its timeout: say so now rather than after ``connect_timeout``."""
        import socket

        host, _, port = self.address.split("://", 1)[1].rpartition(":")
        try:
            socket.create_connection((host.strip("[]"), int(port)),
                                     timeout=self._connect_timeout).close()
        except ConnectionRefusedError as exc:
            raise UnavailableError(
                f"cannot reach the Dask scheduler at {self.address}: nothing listens there "
                f"(connection refused); {_HINT}", scheduler=self.address) from exc
        except OSError:
            return  # unreachable in another way: the client's own timeout and message apply

    def _close(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):  # a scheduler gone away cannot hear goodbye
                self._client.close(timeout=5)
            self._client = None

    @property
    def client(self) -> Any:
        """The ``distributed.Client`` (inside the ``with`` block only)."""
        if self._client is None:
            raise RuntimeError("the Dask engine is used outside its `with open_engine(...)` block")
        return self._client

    def workers(self) -> int:
        return max(1, int(sum(self.client.nthreads().values())))

    def threads_per_process(self) -> int:
        """The most threads any one worker process runs."""
        return max([1, *(int(n) for n in self.client.nthreads().values())])

    def map_unordered(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[tuple[int, R]]:
        """Submit up to twice the worker slots at a time; yield results as they complete."""
        import cloudpickle

        distributed = _distributed()
        client = self.client
        limit = 2 * self.workers()
        pending: dict[Any, int] = {}
        finished = distributed.as_completed(loop=client.loop)
        # fn travels once, as cloudpickle bytes held by one task, rather than inside every task
        # (Dask pickles tasks with plain pickle first, which refers to functions by module name
        # and ignores cloudpickle's register_pickle_by_value). A task, not client.scatter: the
        # scheduler recomputes a task's result if its worker dies, but scattered data is lost.
        blob = client.submit(_hold, cloudpickle.dumps(fn), pure=False)
        try:
            for index, item in enumerate(items):
                future = client.submit(_call_pickled, blob, item, pure=False)
                pending[future] = index
                finished.add(future)
                while len(pending) >= limit:
                    yield self._take(next(finished), pending)
            while pending:
                yield self._take(next(finished), pending)
        finally:
            with contextlib.suppress(Exception):
                client.cancel([*pending, blob])

    def _take(self, future: Any, pending: dict[Any, int]) -> tuple[int, Any]:
        index = pending.pop(future)
        try:
            return index, future.result()
        except _distributed().KilledWorker as exc:
            raise UnavailableError(
                f"a task was lost with its Dask worker too many times ({_reason(exc)}); the "
                f"cluster at {self.address} is unhealthy",
                hint="Check the workers' logs (memory limits, crashes) and run again.",
                scheduler=self.address) from exc
        except (OSError, TimeoutError) as exc:
            if future.status == "error":
                raise  # the task's own OSError, raised on the worker
            raise UnavailableError(
                f"lost the Dask scheduler at {self.address}: {_reason(exc)}",
                scheduler=self.address) from exc

    @contextlib.contextmanager
    def joblib(self) -> Iterator[None]:
        """joblib loops inside submit to this engine's cluster (``Parallel(n_jobs=None)``)."""
        from joblib import parallel_config

        with parallel_config(backend="dask", n_jobs=-1, client=self.client):
            yield


def _hold(blob: bytes) -> bytes:
    return blob


def _call_pickled(blob: bytes, item: Any) -> Any:
    """On a worker: the task function (unpickled once per worker and blob) applied to ``item``."""
    return _load(blob)(item)


@functools.lru_cache(maxsize=4)
def _load(blob: bytes) -> Callable[[Any], Any]:
    import cloudpickle

    fn: Callable[[Any], Any] = cloudpickle.loads(blob)
    return fn


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
