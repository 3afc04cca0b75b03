"""Printing for the CLI: Rich tables for people, JSON for scripts, and the files users ask
for (``--html``, ``--json FILE``, ``--output``, ``--report``).

Every file a command writes goes through :func:`write_output` (or :func:`open_output` for
streams), so a path in a missing folder, a folder given as a file or an unwritable place is
bad input: one line naming the path, exit code 2, never ``unexpected FileNotFoundError``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Any

from mlharbor.core.errors import InvalidInputError


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str, sort_keys=False) + "\n")


def print_table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*("" if cell is None else str(cell) for cell in row))
    Console().print(table)


def print_kv(title: str, pairs: Iterable[tuple[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in pairs:
        table.add_row(key, "" if value is None else str(value))
    Console().print(table)


def check_output(path: Path | str | None, *, what: str = "the output file") -> None:
    """Refuse, before any long work, a path whose folder is missing or that is a folder."""
    if path is None:
        return
    target = Path(path)
    if target.is_dir() or not target.parent.is_dir():
        raise output_error(target, FileNotFoundError(2, "No such file or directory"), what)


def write_output(path: Path | str, data: str | bytes, *, what: str = "the output file") -> None:
    """Write ``data`` to ``path`` (text as UTF-8); OSError becomes one InvalidInputError."""
    target = Path(path)
    try:
        if isinstance(data, bytes):
            target.write_bytes(data)
        else:
            target.write_text(data, encoding="utf-8")
    except OSError as exc:
        raise output_error(target, exc, what) from exc


def open_output(path: Path | str, *, what: str = "the output file") -> IO[str]:
    """``path`` opened for writing text; OSError becomes one InvalidInputError."""
    target = Path(path)
    try:
        return target.open("w", encoding="utf-8")
    except OSError as exc:
        raise output_error(target, exc, what) from exc


def output_error(path: Path, exc: OSError, what: str) -> InvalidInputError:
    """The error for a file a command cannot write: names the path and what to change."""
    folder = path.parent
    if isinstance(exc, IsADirectoryError) or path.is_dir():
        why = "it is a folder; give a file name inside it"
    elif not folder.exists():
        why = f"the folder {str(folder)!r} does not exist; create it first"
    elif not folder.is_dir():
        why = f"{str(folder)!r} is a file, not a folder"
    elif isinstance(exc, PermissionError):
        why = "permission denied; pick a folder you can write to"
    else:
        why = exc.strerror or str(exc)
    return InvalidInputError(f"Cannot write {what} to {str(path)!r}: {why}.", path=str(path))
