"""The compute seam's contract, run against the local engine and a real Dask cluster (scheduler
and two worker processes on loopback), plus its errors for bad or unreachable engines."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlharbor.compute import Engine, open_engine
from mlharbor.core.errors import InvalidInputError, UnavailableError
from tests.compute import tasks
from tests.support import free_port

pytestmark = pytest.mark.xdist_group("dask")


@pytest.fixture(params=["local", "dask"])
def engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    if request.param == "local":
        with open_engine("local", workers=2) as local:
            yield local
    else:
        address = request.getfixturevalue("dask_scheduler")
        with open_engine("dask", scheduler=address) as remote:
            yield remote


def test_map_unordered_yields_every_index_once(engine: Engine) -> None:
    results = list(engine.map_unordered(tasks.square, range(25)))
    assert sorted(i for i, _ in results) == list(range(25))
    assert all(value == i * i for i, value in results)
    assert engine.workers() == 2


def test_items_are_consumed_lazily_with_bounded_tasks_in_flight(engine: Engine) -> None:
    pulled: list[int] = []

    def source() -> Iterator[int]:
        for i in range(40):
            pulled.append(i)
            yield i

    results = engine.map_unordered(tasks.square, source())
    first = next(results)
    assert first[1] == first[0] ** 2
    # two workers -> at most four in flight: the engine has not read the whole iterator ahead
    assert len(pulled) <= 5
    assert len(list(results)) == 39


def test_a_task_that_raises_reraises_in_the_caller(engine: Engine) -> None:
    with pytest.raises(ValueError, match="task 3 refuses"):
        list(engine.map_unordered(tasks.fail_on_three, range(8)))


def test_an_empty_input_yields_nothing(engine: Engine) -> None:
    assert list(engine.map_unordered(tasks.square, [])) == []


def test_joblib_loops_run_on_the_engine(engine: Engine) -> None:
    """os.getpid is importable everywhere (joblib's dask backend pickles tasks by reference;
    a function the cluster cannot import makes it wait forever, a joblib limitation)."""
    import os

    from joblib import Parallel, delayed

    with engine.joblib():
        places = set(Parallel()(delayed(os.getpid)() for _ in range(6)))
    if engine.name == "dask":
        worker_pids = set(engine.client.run(os.getpid).values())  # type: ignore[attr-defined]
        assert places and places <= worker_pids
    else:
        assert places and os.getpid() not in places  # loky's worker processes


def test_one_local_worker_runs_inline_in_order() -> None:
    with open_engine("local", workers=1) as local:
        assert local.name == "local" and local.workers() == 1
        assert list(local.map_unordered(tasks.square, range(4))) == [(0, 0), (1, 1), (2, 4),
                                                                       (3, 9)]


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"backend": "spark"}, "unknown compute engine 'spark'; known engines are local, dask"),
    ({"backend": "dask"}, "needs the address of a running scheduler"),
    ({"backend": "dask", "scheduler": "127.0.0.1:8786"}, "must look like tcp://HOST:PORT"),
    ({"backend": "dask", "scheduler": "tcp://host:99999"}, "must look like tcp://HOST:PORT"),
    ({"backend": "dask", "scheduler": "http://h:1"}, "must look like tcp://HOST:PORT"),
    ({"backend": "local", "scheduler": "tcp://h:1"}, "only applies to the dask engine"),
    ({"backend": "local", "workers": 0}, "workers must be a positive whole number"),
])
def test_bad_arguments_say_what_is_wrong(kwargs: dict[str, object], words: str) -> None:
    with (pytest.raises(InvalidInputError, match=re.escape(words)),
          open_engine(**kwargs)):  # type: ignore[arg-type]
        pass


def test_an_unreachable_scheduler_is_unavailable_with_a_hint() -> None:
    address = f"tcp://127.0.0.1:{free_port()}"
    with (pytest.raises(UnavailableError) as caught,
          open_engine("dask", scheduler=address, connect_timeout=2)):
        pass
    text = str(caught.value)
    assert text.startswith(f"cannot reach the Dask scheduler at {address}: ")
    assert "start one with `dask scheduler` or drop --engine dask" in text


@pytest.mark.slow
def test_a_killed_worker_has_its_task_rerun_elsewhere(tmp_path: Path) -> None:
    from tests.dask_cluster import dask_cluster

    marks = tmp_path / "marks"
    marks.mkdir()
    with dask_cluster(tmp_path / "cluster", workers=2) as cluster:
        killed = threading.Event()

        def kill_w0_when_busy() -> None:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if any(marks.glob("started-w0-*")):
                    cluster.kill_worker(0)
                    killed.set()
                    return
                time.sleep(0.02)

        killer = threading.Thread(target=kill_w0_when_busy, daemon=True)
        killer.start()
        with open_engine("dask", scheduler=cluster.address) as remote:
            items = [(i, str(marks)) for i in range(6)]
            results = dict(remote.map_unordered(tasks.slow_marked, items))
        killer.join(5)
        assert killed.is_set(), cluster.logs()
        assert results == {i: i * 10 for i in range(6)}
        # the task w0 was running when it died started again on w1
        lost = {p.name.rsplit("-", 1)[1] for p in marks.glob("started-w0-*")}
        rerun = {p.name.rsplit("-", 1)[1] for p in marks.glob("started-w1-*")}
        assert lost & rerun, sorted(p.name for p in marks.iterdir())
