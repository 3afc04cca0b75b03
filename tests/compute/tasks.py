"""Task functions the compute tests send to engines.

Registered with cloudpickle to travel by value, so the Dask workers (whose working directory is
not this checkout) can run them without importing ``tests``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import cloudpickle


def square(x: int) -> int:
    return x * x


def fail_on_three(x: int) -> int:
    if x == 3:
        raise ValueError(f"task {x} refuses")
    return x


def where(_: int) -> str:
    """The Dask worker's name, or this process's pid outside a worker (loky, threads)."""
    try:
        from distributed import get_worker

        return str(get_worker().name)
    except (ImportError, ValueError):
        return f"pid{os.getpid()}"


def slow_marked(item: tuple[int, str]) -> int:
    """Write ``<dir>/started-<worker>-<index>`` then sleep: lets a test kill a busy worker."""
    index, folder = item
    (Path(folder) / f"started-{where(index)}-{index}").touch()
    time.sleep(1.0)
    return index * 10


cloudpickle.register_pickle_by_value(__import__(__name__, fromlist=["_"]))
