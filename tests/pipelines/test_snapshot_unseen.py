"""Which snapshot rows the champion never trained on (the rows its comparison is judged on)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mlharbor.core.records import DatasetPart
from mlharbor.pipelines.snapshot import MIN_UNSEEN_HOLDOUT_ROWS, unseen_by_champion


def _parts(*sizes: tuple[str, int]) -> list[DatasetPart]:
    return [DatasetPart(kind, f"uri:{kind}", "sha256:x", rows) for kind, rows in sizes]


def _frame(rows: int, start: int = 0) -> pd.DataFrame:
    values = np.arange(start, start + rows)
    return pd.DataFrame({"a": values * 1.5, "b": values % 7, "y": values % 2,
                         "id": [f"c{v}" for v in values]})


def test_added_rows_are_unseen_except_those_repeating_the_champions_data() -> None:
    champion, served = _frame(500), _frame(400, start=300)  # 200 served rows repeat it
    served["id"] = None  # identifiers are unknown for served rows: not compared
    frame = pd.concat([champion, served], ignore_index=True)
    mask = unseen_by_champion(frame, _parts(("champion_data", 500), ("production", 400)),
                              columns=["a", "b", "y"], holdout=0.2)
    assert mask is not None and mask.dtype == bool and len(mask) == 900
    assert not mask[:500].any()  # the champion's own rows
    assert not mask[500:700].any() and mask[700:].all()  # repeats of them, then new rows


def test_nothing_to_limit_or_too_few_new_rows_means_no_limit() -> None:
    frame = _frame(600)
    columns, holdout = ["a", "b", "y"], 0.2
    assert unseen_by_champion(frame, _parts(("champion_data", 600)), columns=columns,
                              holdout=holdout) is None
    assert unseen_by_champion(frame, _parts(("dataset_uri", 400), ("production", 200)),
                              columns=columns, holdout=holdout) is None
    few = int(MIN_UNSEEN_HOLDOUT_ROWS / holdout) - 1  # a holdout of them would be too small
    assert unseen_by_champion(frame, _parts(("champion_data", 600 - few), ("production", few)),
                              columns=columns, holdout=holdout) is None
    enough = few + 1
    mask = unseen_by_champion(frame, _parts(("champion_data", 600 - enough),
                                            ("production", enough)),
                              columns=columns, holdout=holdout)
    assert mask is not None and int(mask.sum()) == enough
    # parts that do not add up to the frame (never written so): no guess
    assert unseen_by_champion(frame, _parts(("champion_data", 100), ("production", 100)),
                              columns=columns, holdout=holdout) is None
