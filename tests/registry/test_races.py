"""Concurrent changes to one model from many threads, on SQLite and PostgreSQL."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mlharbor.core.errors import ConflictError, MlharborError
from mlharbor.registry.service import Registry
from mlharbor.settings import Settings


def _race(n: int, action: Callable[[int], Any]) -> list[Any]:
    """Run ``action(i)`` in ``n`` threads released at once; results or raised errors."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = action(i)
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


@pytest.fixture
def registry(db_settings: Settings) -> Registry:
    reg = Registry.from_settings(db_settings)
    yield reg
    reg.close()


def _bundle(tmp_path: Path) -> Path:
    folder = tmp_path / "bundle"
    folder.mkdir(exist_ok=True)
    (folder / "model.bin").write_bytes(b"weights")
    return folder


def test_concurrent_creates_give_one_model_and_clean_conflicts(registry: Registry) -> None:
    for round_ in range(5):
        results = _race(4, lambda i, r=round_: registry.create_model(f"m{r}"))
        errors = [r for r in results if isinstance(r, Exception)]
        assert len(errors) == 3, results
        assert all(isinstance(e, ConflictError) for e in errors), errors


def test_concurrent_alias_moves_keep_an_exact_history(registry: Registry, tmp_path: Path
                                                     ) -> None:
    bundle = _bundle(tmp_path)
    for _ in range(6):
        registry.register_version("m", bundle)
    results = _race(6, lambda i: registry.set_alias("m", "champion", i + 1))
    assert not [r for r in results if isinstance(r, Exception)], results
    history = registry.alias_history("m", "champion")
    assert history[0].from_version is None
    for before, after in itertools.pairwise(history):
        assert after.from_version == before.to_version  # each move starts where the last ended
    assert registry.get_version("m@champion").version == history[-1].to_version


def test_archive_racing_an_alias_never_leaves_both(registry: Registry, tmp_path: Path) -> None:
    bundle = _bundle(tmp_path)
    for round_ in range(8):
        number = registry.register_version("m", bundle).version
        actions = [lambda n=number: registry.archive_version(f"m:{n}"),
                   lambda n=number, r=round_: registry.set_alias("m", f"a{r}", n)]
        results = _race(2, lambda i, acts=actions: acts[i]())
        assert sum(isinstance(r, MlharborError) for r in results) == 1, results
        mv = registry.get_version(f"m:{number}")
        assert not (mv.archived and mv.aliases), mv


def test_concurrent_downloads_share_one_good_copy(registry: Registry, tmp_path: Path) -> None:
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(20):
        (folder / f"f{i}.bin").write_bytes(bytes([i]) * 50_000)
    registry.register_version("m", folder)

    def fetch_and_read(_: int) -> int:
        path = registry.download("m:1")
        return sum(len((path / f"f{i}.bin").read_bytes()) for i in range(20))

    for _ in range(5):
        registry.cache_dir = tmp_path / f"cache-{_}"  # a cold cache each round
        results = _race(4, fetch_and_read)
        assert results == [1_000_000] * 4, results


def test_a_version_finished_twice_conflicts(registry: Registry, tmp_path: Path) -> None:
    from datetime import timedelta

    from mlharbor.core.records import VersionStatus

    version_id, number = registry.store.begin_version(
        "m", actor="a", description="", tags={}, metrics={}, params={}, lineage={})
    assert registry.sweep_stale_registrations(timedelta(0)) == [f"m:{number}"]
    with pytest.raises(ConflictError, match="not registering"):
        registry.store.finish_version(version_id, status=VersionStatus.READY,
                                      status_reason=None, files=[], manifest=None, actor="a")
    assert registry.get_version(f"m:{number}").status is VersionStatus.FAILED
