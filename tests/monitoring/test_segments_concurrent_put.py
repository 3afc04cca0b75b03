"""Two readers promoting the same feedback inbox at once write the same segment: each write
must land whole, and neither may fail (a shared temporary file name made one rename fail,
which the dashboard hit by reading live and estimated accuracy at the same moment)."""

from __future__ import annotations

import threading
from pathlib import Path

from mlharbor.monitoring.segments import LocalSegments


def test_concurrent_puts_of_one_segment_all_succeed(tmp_path: Path) -> None:
    store = LocalSegments(tmp_path)
    data = b"x" * 2_000_000
    start = threading.Barrier(8)
    errors: list[BaseException] = []

    def put() -> None:
        start.wait()
        try:
            for _ in range(5):
                store.put("endpoint=churn/1-abc.parquet", data)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=put) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.names() == ["endpoint=churn/1-abc.parquet"]  # no temporary file is listed
    assert store.get("endpoint=churn/1-abc.parquet") == data
    assert list(tmp_path.rglob("*.tmp")) == []
