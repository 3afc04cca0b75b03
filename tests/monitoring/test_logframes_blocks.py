"""A journal file holding several binary frames (one per flush) compacts into one table whose
input, prediction and score columns are chunked over the frames' payloads (no joined copy):
the rows are those the JSON entries of the same records give, and the segment's row groups
are what a joined table would give."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from mlharbor.core.records import PredictionRecord
from mlharbor.monitoring.journal import Journal
from mlharbor.monitoring.logframes import blocks_table, decode, encode
from mlharbor.monitoring.predlog import PredictionLog
from mlharbor.monitoring.segments import LocalSegments
from tests.monitoring.test_logframes import OUTPUTS, assert_same, record, rows


def logged_in_flushes(tmp_path: Path, name: str, batches: list[list[PredictionRecord]]) -> Any:
    log = PredictionLog(tmp_path / name / "journal", LocalSegments(tmp_path / name / "seg"))
    for batch in batches:
        for r in batch:
            log.emit(r)
        log.flush()  # one frame per flush, all in the same journal file
    assert len(log.journal.sealed()) == 0  # nothing rotated yet: one file holds every frame
    log.compact()
    names = log.segment_names("churn")
    assert len(names) == 1
    table = log.scan("churn")
    return names, table.sort_by([("request_id", "ascending"), ("row", "ascending")])


@pytest.mark.parametrize("outputs", ["binary", "regression", "bools", "string labels"])
def test_several_frames_in_one_file_give_the_rows_json_entries_give(
        tmp_path: Path, outputs: str) -> None:
    sizes = [[64, 1, 3], [2], [17, 64], [1, 1, 5]]
    batches, i = [], 0
    for group in sizes:
        batch = []
        for n in group:
            batch.append(record(rows(n, i) if n > 1 else rows(1, i)[0], OUTPUTS[outputs](n), i))
            i += 1
        batches.append(batch)
    plain = [[dataclasses.replace(r, matrix=None, columns=None) for r in b] for b in batches]
    _names, binary = logged_in_flushes(tmp_path, "bin", batches)
    _names, json = logged_in_flushes(tmp_path, "json", plain)
    assert binary.num_rows == sum(map(sum, sizes))
    assert_same(binary, json)


def test_chunked_blocks_write_the_segment_a_joined_table_writes(tmp_path: Path) -> None:
    records = [record(rows(n, i), OUTPUTS["binary"](n), i) for i, n in enumerate([5, 64, 9])]
    journal = Journal(tmp_path / "journal", max_bytes=1 << 30)
    for r in records:  # one frame per record: three blocks
        assert journal.append_frames([(encode([r]), 1)])
    journal.rotate()
    (path,) = journal.sealed()
    items = journal.contents(path).rows
    assert len(items) == 3
    table = blocks_table(items)
    assert table is not None
    assert table.column("in.a").num_chunks == 3  # the payloads' numbers, not a joined copy
    joined = table.combine_chunks()
    written = {}
    for label, t in (("chunked", table), ("joined", joined)):
        sink = io.BytesIO()
        pq.write_table(t, sink, compression="lz4")
        meta = pq.ParquetFile(io.BytesIO(sink.getvalue())).metadata
        written[label] = (meta.num_row_groups, pq.read_table(io.BytesIO(sink.getvalue())))
    assert written["chunked"][0] == written["joined"][0] == 1
    assert written["chunked"][1].equals(written["joined"][1])
    expected = np.concatenate([r.matrix[:, 0] for r in records])
    assert np.array_equal(joined.column("in.a").to_numpy(), expected)


def test_decode_reads_a_payload_in_place_from_a_memoryview() -> None:
    records = [record(rows(4, 0), OUTPUTS["binary"](4), 0)]
    payload = encode(records)
    data = b"xx" + payload
    (item,) = decode(memoryview(data)[2:])
    block = item["block"]
    assert np.array_equal(block["m"].T, records[0].matrix)
    assert not block["m"].flags.owndata  # a view over ``data``
