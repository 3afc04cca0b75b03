"""Where a piece boundary falls never changes a logged value: a later piece whose column has
another type joins the segment only when no value changes (nulls, integers widening, integers
a float64 holds exactly); otherwise the file is compacted whole, which keeps mixed types as
text, as it always did."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlharbor.core.records import PredictionRecord
from mlharbor.monitoring import predlog
from mlharbor.monitoring.predlog import PredictionLog
from mlharbor.monitoring.segments import LocalSegments


def _logged(tmp_path: Path, values: list[Any]) -> list[Any]:
    log = PredictionLog(tmp_path / "journal", LocalSegments(tmp_path / "seg"))
    for i, value in enumerate(values):
        log.emit(PredictionRecord(f"r{i}", "ep", "m:1", 1, [{"zip": value}],
                                  np.array([0.5]), 0.001, datetime.now(UTC)))
        log.flush()  # a frame each: with a one-byte piece, a piece each
    assert log.compact() == 1
    table = log.scan("ep", columns=["request_id", "in.zip"])
    order = np.argsort([int(r[1:]) for r in table["request_id"].to_pylist()])
    return [table["in.zip"].to_pylist()[i] for i in order]


@pytest.mark.parametrize(("values", "stored"), [
    ([2139, 2139, "02139"], ["2139", "2139", "02139"]),  # the leading zero stays
    ([True, True, 5], ["True", "True", "5"]),  # 5 is not True
    ([1.5, 2.5, 3], [1.5, 2.5, 3.0]),  # an integer into float64, exactly
    ([None, None, 7], [None, None, 7]),  # nulls first
    ([1, 2, 3.5], [1.0, 2.0, 3.5]),  # a float after integers: whole, as float64
])
def test_values_are_stored_as_logged_whatever_the_pieces(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, values: list[Any],
        stored: list[Any]) -> None:
    whole = _logged(tmp_path / "whole", values)
    monkeypatch.setattr(predlog, "PIECE_BYTES", 1)
    assert _logged(tmp_path / "pieces", values) == whole
    assert whole == stored


def test_a_small_journal_bound_lowers_the_pacing_threshold() -> None:
    """Pacing stops at a quarter of a journal bound smaller than the default threshold, so a
    journal configured small still drains flat out before it fills (and drops records)."""
    from mlharbor.monitoring.compactor import PACE_BELOW_BYTES, CompactorProcess, pace_below
    from mlharbor.settings import Settings

    assert pace_below(1 << 30) == PACE_BELOW_BYTES
    assert pace_below(64 << 20) == 16 << 20
    assert pace_below(1) == 1
    small = Settings(monitoring={"buffer_max_bytes": 32 << 20})
    config = CompactorProcess(small, Path("/nonexistent"))._config
    assert b'"below_bytes":8388608' in config
