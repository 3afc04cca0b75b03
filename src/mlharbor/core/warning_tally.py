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
from typing import Any

MAX_MESSAGE = 160


@dataclasses.dataclass(frozen=True)
class CaughtWarning:
    """One warning, reduced to what a summary needs (plain data: it crosses processes)."""

    category: str
    message: str
    where: str | None = None


class _ThreadSinks:
    """Process-wide warning capture shared by every thread inside :func:`catching`.

    Python's warning filters and ``showwarning`` are global, so nested
    ``warnings.catch_warnings`` blocks in concurrent threads (the local compute engine fits
    folds on threads) restore each other's state out of order and can leave the caller's
    filters ("error" under pytest) in force inside a fit. Here the first block to enter
    installs one "always" filter and one ``showwarning`` that hands each warning to the sink
    of the thread that raised it (or to the original ``showwarning`` for a thread outside any
    block); the last to leave restores both.
    """

    def __init__(self) -> None:
        import threading

        self._lock = threading.Lock()
        self._local = threading.local()
        self._depth = 0
        self._saved: tuple[Any, Any] | None = None

    def _show(self, message: Any, category: Any, filename: Any, lineno: Any, file: Any = None,
              line: Any = None) -> None:
        stack: list[list[Any]] = getattr(self._local, "stack", [])
        if stack:
            stack[-1].append((category, message))
        elif self._saved is not None:
            self._saved[1](message, category, filename, lineno, file, line)

    @contextlib.contextmanager
    def block(self) -> Iterator[list[Any]]:
        records: list[Any] = []
        with self._lock:
            if self._depth == 0:  # as catch_warnings does: a copy of the filter list in force
                self._saved = (warnings.filters, warnings.showwarning)
                _set_filters(list(warnings.filters))
                warnings.simplefilter("always")
                warnings.showwarning = self._show
            self._depth += 1
        stack = self._local.__dict__.setdefault("stack", [])
        stack.append(records)
        try:
            yield records
        finally:
            stack.pop()
            with self._lock:
                self._depth -= 1
                if self._depth == 0 and self._saved is not None:
                    _set_filters(self._saved[0])
                    warnings.showwarning = self._saved[1]
                    self._saved = None


def _set_filters(filters: Any) -> None:
    """Put ``filters`` in force (the C warnings module caches them until told)."""
    setattr(warnings, "filters", filters)  # noqa: B010  (typeshed types it read-only)
    getattr(warnings, "_filters_mutated")()  # noqa: B009


_SINKS = _ThreadSinks()


@contextlib.contextmanager
def catching(sink: list[CaughtWarning], where: str | None = None) -> Iterator[None]:
    """Record every warning raised inside the block, by this thread, into ``sink`` instead of
    printing it. Every occurrence is recorded (the filter is "always"), so the tally can count
    them; the block's caller decides what to print. Safe for concurrent blocks in threads."""
    with _SINKS.block() as records:
        yield
    sink.extend(CaughtWarning(category.__name__, first_line(str(message)), where)
                for category, message in records)


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
