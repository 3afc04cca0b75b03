"""The :class:`Engine` protocol and :func:`open_engine`, which checks its arguments and picks
the implementation (``local`` in :mod:`mlharbor.compute.local`, ``dask`` in
:mod:`mlharbor.compute.daskengine`).

Contract every engine keeps (tests/compute runs it against each one):

- ``map_unordered(fn, items)`` yields ``(index, fn(item))`` as tasks finish, in any order,
  every index exactly once; it keeps a bounded number of tasks in flight, so ``items`` may be a
  long lazy iterator and memory stays flat. A task that raises re-raises its exception in the
  caller (the remaining tasks are cancelled); a task whose worker dies is run again elsewhere.
- ``joblib()`` makes ``joblib.Parallel`` loops inside the block run on the engine.
- ``workers()`` is the number of task slots (threads) available now;
  ``threads_per_process()`` how many of them share one process (and its memory).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol, TypeVar

from mlharbor.core.errors import InvalidInputError

T = TypeVar("T")
R = TypeVar("R")

BACKENDS: tuple[str, ...] = ("local", "dask")

# Dask's own address forms that a client can connect to: scheme://host:port.
_SCHEDULER = re.compile(r"^(?P<scheme>tcp|tls)://(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-_]+)"
                        r":(?P<port>[0-9]{1,5})$")


class Engine(Protocol):
    """Where independent tasks run: this process's threads, or a cluster's workers."""

    @property
    def name(self) -> str:
        """``"local"`` or ``"dask"``."""
        ...

    def workers(self) -> int:
        """Task slots (threads) available now; at least 1."""
        ...

    def threads_per_process(self) -> int:
        """Tasks one process may run at once (what shares one process's memory); at least 1."""
        ...

    def map_unordered(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[tuple[int, R]]:
        """``(index, fn(item))`` for every item, as tasks finish, in any order."""
        ...

    def joblib(self) -> contextlib.AbstractContextManager[None]:
        """A block inside which ``joblib.Parallel`` loops run on this engine."""
        ...


def check_scheduler(scheduler: str) -> str:
    """``scheduler`` stripped, if it is a ``tcp://host:port`` (or ``tls://``) address."""
    text = scheduler.strip()
    match = _SCHEDULER.match(text)
    if match is None or not 0 < int(match["port"]) < 65536:
        raise InvalidInputError(
            f"the Dask scheduler address must look like tcp://HOST:PORT; received "
            f"{scheduler!r}", hint="For example: --scheduler tcp://127.0.0.1:8786.",
            field="scheduler")
    return text


def check_backend(backend: str) -> str:
    """``backend`` lower-cased, if it names a known engine."""
    name = backend.strip().lower() if isinstance(backend, str) else backend
    if name not in BACKENDS:
        raise InvalidInputError(
            f"unknown compute engine {backend!r}; known engines are {', '.join(BACKENDS)}",
            field="backend")
    return str(name)


def check_workers(workers: int | None) -> int | None:
    """``workers`` if it is None or a positive int."""
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                or workers < 1):
        raise InvalidInputError(
            f"workers must be a positive whole number or None (all cores); received "
            f"{workers!r}", field="workers")
    return workers


@contextlib.contextmanager
def open_engine(backend: str = "local", scheduler: str | None = None,
                workers: int | None = None, *, connect_timeout: float = 10.0
                ) -> Iterator[Engine]:
    """An engine for the ``with`` block, closed (client disconnected, threads joined) after it.

    ``backend`` is ``"local"`` (threads of this process, ``workers`` of them, None = all
    cores) or ``"dask"`` (the cluster whose scheduler listens at ``scheduler``, required). A bad
    backend or address raises :class:`InvalidInputError`; a scheduler that cannot be reached
    within ``connect_timeout`` seconds, or that has no worker, raises
    :class:`~mlharbor.core.errors.UnavailableError`.
    """
    name = check_backend(backend)
    check_workers(workers)
    if name == "local":
        if scheduler is not None:
            raise InvalidInputError(
                f"a scheduler address ({scheduler!r}) only applies to the dask engine",
                hint="Add --engine dask (backend='dask') to use it, or drop the scheduler.",
                field="scheduler")
        from mlharbor.compute.local import LocalEngine

        with LocalEngine(workers) as local:
            yield local
        return
    if scheduler is None:
        raise InvalidInputError(
            "the dask engine needs the address of a running scheduler",
            hint="Pass --scheduler tcp://HOST:PORT (start one with `dask scheduler`).",
            field="scheduler")
    address = check_scheduler(scheduler)
    from mlharbor.compute.daskengine import DaskEngine

    with DaskEngine(address, connect_timeout=connect_timeout) as remote:
        yield remote
