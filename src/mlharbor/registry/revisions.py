"""Revision numbers of the stored specs that change by compare-and-set (endpoints, policies).

A spec's revision goes up by one on every change and is never reused, also after a delete:
the next one is past the last in the spec's history, so a revision read before a delete can
never match the spec created after it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Column, Connection, func, select

from mlharbor.core.errors import ConflictError


def last_revision(conn: Connection, history_revision: Column[Any], history_key: Column[Any],
                  key: str) -> int | None:
    """The highest revision ``key`` ever had in its history table (None: never existed)."""
    last = conn.execute(select(func.max(history_revision)).where(history_key == key)).scalar()
    return None if last is None else int(last)


def next_revision(conn: Connection, history_revision: Column[Any], history_key: Column[Any],
                  key: str) -> int:
    """1 for a new key; after a delete, one past the last revision in its history."""
    last = last_revision(conn, history_revision, history_key, key)
    return 1 if last is None else last + 1


def expect_revision(row: Any, expected: int | None,
                    stale: Callable[[int, int | None], ConflictError]) -> int:
    """The row's revision, refusing the write (``stale(expected, current)``) when the caller
    read another one."""
    revision = int(row.revision)
    if expected is not None and expected != revision:
        raise stale(expected, revision)
    return revision
