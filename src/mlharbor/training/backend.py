"""Where a training run's cross-validation and search fits run: ``local`` or ``dask``.

Three places can say it, most specific first: the command line (``mlharbor train --backend dask
--scheduler tcp://HOST:PORT``), the recipe (``training: {backend: dask, scheduler: ...}``) and
the settings (``training.backend``/``training.scheduler``, ``MLHARBOR_TRAINING__BACKEND``).
:func:`choose_backend` settles them once; :func:`training_engine` opens the engine through the
:mod:`mlharbor.compute` seam (never Dask directly). ``local`` keeps today's joblib workers in
this process (no engine); ``dask`` schedules every (candidate x search setting x fold) fit on
the cluster.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from mlharbor.core.errors import InvalidInputError

if TYPE_CHECKING:
    from mlharbor.compute import Engine
    from mlharbor.training.recipe import Recipe


def choose_backend(
    recipe: Recipe, backend: str | None = None, scheduler: str | None = None, *,
    default_backend: str = "local", default_scheduler: str | None = None,
) -> tuple[str, str | None]:
    """``(backend, scheduler)`` for a run: the explicit arguments (``--backend``,
    ``--scheduler``) first, then the recipe's ``training`` section, then the defaults (the
    settings). A scheduler given without a backend means dask; the local backend has none."""
    from mlharbor.compute.engine import check_backend, check_scheduler

    spec = recipe.training
    if backend is not None:
        chosen = check_backend(backend)
    elif scheduler is not None:
        chosen = "dask"
    else:
        chosen = (spec.backend if spec else None) or check_backend(default_backend)
    if chosen == "local":
        if scheduler is not None:
            raise InvalidInputError(
                f"a scheduler ({scheduler!r}) is only used with the dask backend",
                hint="Use --backend dask, or drop --scheduler.", field="scheduler")
        return chosen, None
    address = scheduler or (spec.scheduler if spec else None) or default_scheduler
    if address is None:
        raise InvalidInputError(
            "training on dask needs the address of a running Dask scheduler",
            hint="Pass --scheduler tcp://HOST:PORT, or set `training.scheduler` in the recipe "
                 "or the settings (MLHARBOR_TRAINING__SCHEDULER); start one with "
                 "`dask scheduler`.", field="scheduler")
    return chosen, check_scheduler(address)


@contextlib.contextmanager
def training_engine(
    backend: str, scheduler: str | None, note: Callable[[str], None] | None = None
) -> Iterator[Engine | None]:
    """The engine for the run's fits: None for ``local`` (joblib workers in this process), a
    connected Dask engine for ``dask`` (closed after the block). An unreachable scheduler raises
    :class:`~mlharbor.core.errors.UnavailableError` here, before any data is read."""
    if backend == "local":
        yield None
        return
    from mlharbor.compute import open_engine

    with open_engine(backend, scheduler) as engine:
        if note is not None:
            note(f"Fitting on the Dask cluster at {scheduler} ({engine.workers()} worker "
                 "thread(s)).")
        yield engine
