"""Which cells of a column are numbers: the one rule behind "a numeric column with bad cells".

A CSV reader gives a column text cells as soon as ONE cell is not a number, so a single ``abc``
among thousands of temperatures would turn the column categorical and the model would refuse
every temperature it did not see in training. Instead, every cell is parsed here:

- a cell is **missing** when it is null or blank (only whitespace), as a CSV reader reads it;
- a cell is a **number** when ``pandas.to_numeric`` reads it as a number that is not NaN
  (``12``, ``-1.5e3``, `` 7 ``, ``inf``); anything else (``abc``, ``n/a``, ``1,5``, ``nan``
  spelled out in a text column) is **bad**;
- a column is **mostly numeric** when at least :data:`MOSTLY_NUMERIC_SHARE` (95%) of its
  non-missing cells are numbers and at least one is.

95% because a real categorical column whose labels happen to be digits almost always has a
level worth more than 5% of rows that is not a number, while typos, ``n/a`` markers and stray
units in a numeric column are rare. Below 20 non-missing cells one bad cell is already more than
5%, so a tiny column with a bad cell stays categorical; declare it (``data.features``) to check
it anyway. A mostly-numeric column is inferred numeric, and its bad cells become a data-check
finding (:mod:`mlharbor.data.checks`) that names the column, the count and the first rows.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import pandas as pd

# What training does with the bad cells of a numeric column: stop (the default) or read them
# as missing values, which the preparation then imputes.
UnparseablePolicy = Literal["fail", "coerce"]

MOSTLY_NUMERIC_SHARE = 0.95
ROWS_SHOWN = 5  # bad rows quoted in a finding; the count says how many there are in all


@dataclasses.dataclass(frozen=True)
class NumberCells:
    """One column parsed cell by cell."""

    values: pd.Series  # float64, same index; NaN where the cell is missing or bad
    present: int  # cells that are not missing
    bad_positions: tuple[int, ...]  # 0-based positions of the bad cells, in order
    bad_texts: tuple[str, ...]  # the first ROWS_SHOWN bad cells as written

    @property
    def bad(self) -> int:
        return len(self.bad_positions)

    @property
    def numbers(self) -> int:
        return self.present - self.bad

    @property
    def mostly_numeric(self) -> bool:
        return self.numbers > 0 and self.numbers >= MOSTLY_NUMERIC_SHARE * self.present


def parse_numbers(series: pd.Series) -> NumberCells:
    """Parse every cell of ``series``; a numeric (non-boolean) dtype has no bad cells."""
    import numpy as np
    import pandas as pd

    if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
        values = series.astype("float64")
        return NumberCells(values, int(series.notna().sum()), (), ())
    as_text = series.astype("string")
    blank = as_text.str.strip().eq("").fillna(False).to_numpy(dtype=bool)
    missing = series.isna().to_numpy(dtype=bool) | blank
    values = pd.to_numeric(series.where(~missing), errors="coerce").astype("float64")
    bad = ~missing & values.isna().to_numpy(dtype=bool)
    positions = tuple(int(p) for p in np.flatnonzero(bad))
    texts = tuple(str(series.iloc[p]) for p in positions[:ROWS_SHOWN])
    return NumberCells(values, int((~missing).sum()), positions, texts)


def bad_cells_text(cells: NumberCells) -> str:
    """``"1 of 400 non-missing cells is not a number: data row 17 ('abc')"`` and the like.

    Rows are the 1-based data rows of the table: the first row after a CSV header is row 1
    (so row ``r`` is line ``r + 1`` of a CSV file with one header line and no multi-line
    cells).
    """
    verb = "is" if cells.bad == 1 else "are"
    shown = ", ".join(f"{p + 1} ({text!r})" for p, text in
                      zip(cells.bad_positions, cells.bad_texts, strict=False))
    more = cells.bad - len(cells.bad_texts)
    rows = "data row" if cells.bad == 1 else "data rows"
    tail = f" and {more} more" if more > 0 else ""
    return (f"{cells.bad} of {cells.present} non-missing cells {verb} not a number: "
            f"{rows} {shown}{tail} (row 1 is the first row after the header)")
