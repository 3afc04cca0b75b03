"""Warnings caught by concurrent threads (the local compute engine fits folds on threads) land
in the sink of the thread that raised them, never escape as errors under the caller's filters,
and the caller's filters are back in force afterwards."""

from __future__ import annotations

import threading
import warnings

import pytest

from mlharbor.core.warning_tally import CaughtWarning, catching


def test_concurrent_blocks_catch_their_own_warnings_and_restore_the_filters() -> None:
    sinks: dict[int, list[CaughtWarning]] = {i: [] for i in range(4)}
    failures: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for _ in range(500):
                with catching(sinks[i], f"thread {i}"):
                    warnings.warn(f"from {i}", UserWarning, stacklevel=1)
        except BaseException as exc:  # an escaped warning fails the test below
            failures.append(exc)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # as pytest's filterwarnings = error
        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert failures == []
        for i, sink in sinks.items():
            assert len(sink) == 500
            assert {(w.message, w.where) for w in sink} == {(f"from {i}", f"thread {i}")}
        with pytest.raises(UserWarning):
            warnings.warn("outside every block", UserWarning, stacklevel=1)
