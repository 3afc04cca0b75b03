"""Library warnings caught during long work and summarised in one line per kind.

scikit-learn, LightGBM and friends warn freely, often in ten-line messages, and once per fold:
a recipe with one badly scaled candidate prints the same ``ConvergenceWarning`` fifteen times.
Training catches them instead (:func:`catching`, also inside worker processes, whose stderr a
user cannot tell apart from ours) and a :class:`WarningTally` says each kind once::

    ConvergenceWarning x15: lbfgs failed to converge after 3 iteration(s) (status=1) (first
    in candidate logistic, fold 2)

Warnings are grouped by category and the first line of their message; the place of the first
one is kept because it says where to look.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Iterable, Iterator

MAX_MESSAGE = 160


@dataclasses.dataclass(frozen=True)
class CaughtWarning:
    """One warning, reduced to what a summary needs (plain data: it crosses processes)."""

    category: str
    message: str
    where: str | None = None


@contextlib.contextmanager
def catching(sink: list[CaughtWarning], where: str | None = None) -> Iterator[None]:
    """Record every warning raised inside the block into ``sink`` instead of printing it.

    Every occurrence is recorded (the filter is "always"), so the tally can count them; the
    block's caller decides what to print. Not for threads sharing a process: Python's warning
    filters are process-wide.
    """
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        yield
    sink.extend(CaughtWarning(r.category.__name__, first_line(str(r.message)), where)
                for r in records)


def first_line(message: str) -> str:
    """The first non-empty line of ``message``, without a trailing colon, cut to a length."""
    line = next((part.strip() for part in message.splitlines() if part.strip()), "")
    line = line.rstrip(":").strip()
    return line if len(line) <= MAX_MESSAGE else line[: MAX_MESSAGE - 3] + "..."


class WarningTally:
    """Counts caught warnings by (category, first line) and keeps where the first came from."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str], int] = {}
        self._first: dict[tuple[str, str], str | None] = {}

    def add(self, caught: Iterable[CaughtWarning], where: str | None = None) -> None:
        """Count ``caught``; ``where`` names the place for warnings that do not say it."""
        for item in caught:
            key = (item.category, item.message)
            self._counts[key] = self._counts.get(key, 0) + 1
            self._first.setdefault(key, item.where or where)

    def __len__(self) -> int:
        return sum(self._counts.values())

    def lines(self) -> list[str]:
        """One line per kind, most frequent first: ``Category xN: message (first in ...)``."""
        out = []
        for key, count in sorted(self._counts.items(), key=lambda kv: -kv[1]):
            category, message = key
            where = self._first[key]
            place = f" (first in {where})" if where else ""
            out.append(f"{category} x{count}: {message}{place}")
        return out
