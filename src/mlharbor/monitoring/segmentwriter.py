"""A log segment written piece by piece: one Parquet row group per piece of a journal file.

Compacting a journal file whole held its rows, its Arrow table and its Parquet bytes in memory
at once: ~200 MB for the ~70 MB of frames five seconds of 64-row requests leave at full load.
Written in pieces, only one piece's table is held (plus the Parquet writer's row group), and
the segment's bytes go to a draft in the store (:func:`~.segments.draft_segment`) that readers
cannot see until it is published under its final name, whose time span is known only once the
last piece is written.

A Parquet file has one schema, fixed by the first piece. A later piece whose columns are a
subset of it, of types that cast without loss, is cast to it; anything else (a new column, a
type that does not fit) raises :class:`SchemaChanged`, and the caller starts the file over
with the schemas joined (:func:`widened`) or, when they do not join, compacts it whole as
before: no file ever fails for being written in pieces.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

    from mlharbor.monitoring.segments import SegmentDraft


# LZ4 and dictionaries only where values repeat: dictionary-encoding columns of measured
# numbers (Arrow's default for every column) is work thrown away, and made compaction cost
# about ten times more CPU than it does with these options.
WRITE_OPTIONS: dict[str, Any] = {"compression": "lz4"}
_UNIQUE_TEXT = frozenset({"request_id"})


class SchemaChanged(Exception):
    """A piece's columns do not fit the schema the segment was started with: ``schema`` is
    the segment's, ``piece`` the piece's (when known), ``endpoint`` set by the caller."""

    def __init__(self, message: str, schema: pa.Schema | None = None,
                 piece: pa.Schema | None = None) -> None:
        super().__init__(message)
        self.schema = schema
        self.piece = piece
        self.endpoint: str | None = None


class SegmentWriter:
    """One endpoint's segment of one journal file, written as its pieces come."""

    def __init__(self, draft: SegmentDraft, schema: pa.Schema) -> None:
        import pyarrow.parquet as pq

        self.draft = draft
        self.schema = schema
        self.first: int | None = None
        self.last: int | None = None
        self._writer = pq.ParquetWriter(draft.sink, schema, **WRITE_OPTIONS,
                                        use_dictionary=dictionary_columns(schema))

    def write(self, table: pa.Table) -> None:
        """Append ``table`` as a row group; :class:`SchemaChanged` when it does not fit."""
        import pyarrow.compute as pc

        if table.schema != self.schema:
            try:
                table = conform(table, self.schema)
            except SchemaChanged as exc:
                raise SchemaChanged(str(exc), self.schema, table.schema) from exc
        span = pc.min_max(table["at"])
        first, last = span["min"].as_py(), span["max"].as_py()
        if first is not None:
            self.first = first if self.first is None else min(self.first, first)
            self.last = last if self.last is None else max(self.last, last)
        self._writer.write_table(table)

    def publish(self, name_of: Callable[[int, int], str]) -> None:
        """Finish the file and make it visible under ``name_of(first_at, last_at)``."""
        self._writer.close()
        self.draft.publish(name_of(self.first or 0, self.last or 0))

    def discard(self) -> None:
        """Drop the draft: nothing of it becomes visible."""
        # The draft is thrown away whatever state the writer is in.
        with contextlib.suppress(Exception):
            self._writer.close()
        self.draft.discard()


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with ``schema``'s columns: missing nullable ones as nulls, others cast
    without loss; :class:`SchemaChanged` when that cannot be done."""
    import pyarrow as pa

    names = set(table.column_names)
    if not names <= set(schema.names):
        raise SchemaChanged(f"new columns {sorted(names - set(schema.names))}")
    arrays = []
    for field in schema:
        if field.name not in names:
            if not field.nullable:
                raise SchemaChanged(f"column {field.name!r} is missing")
            arrays.append(pa.nulls(table.num_rows, field.type))
            continue
        column = table[field.name]
        if column.type != field.type:
            if not _widens(column, field.type):
                raise SchemaChanged(f"column {field.name!r} is {column.type}, "
                                    f"not {field.type}")
            try:
                column = column.cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
                raise SchemaChanged(f"column {field.name!r} is {column.type}, "
                                    f"not {field.type}") from exc
        if not field.nullable and column.null_count:
            raise SchemaChanged(f"column {field.name!r} holds nulls")
        arrays.append(column)
    return pa.Table.from_arrays(arrays, schema=schema)


def widened(schema: pa.Schema, piece: pa.Schema) -> pa.Schema | None:
    """A schema both fit (:func:`conform`): types promoted as Arrow joins tables
    ("permissive"), a column missing from either nullable; None when they do not join."""
    import pyarrow as pa

    try:
        joined = pa.unify_schemas([schema, piece], promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return None
    fields = []
    for field in joined:
        if field.name in schema.names and field.name in piece.names:
            nullable = (schema.field(field.name).nullable
                        or piece.field(field.name).nullable)
        else:
            nullable = True
        fields.append(field.with_nullable(nullable))
    return pa.schema(fields)


def dictionary_columns(schema: pa.Schema) -> list[str]:
    """Text and flag columns (endpoint, model, categories ...), except the unique ids."""
    import pyarrow as pa

    return [f.name for f in schema if f.name not in _UNIQUE_TEXT and (
        pa.types.is_string(f.type) or pa.types.is_large_string(f.type)
        or pa.types.is_boolean(f.type) or pa.types.is_dictionary(f.type))]


#: Integers a float64 holds exactly.
_EXACT_IN_FLOAT64 = 1 << 53


def _widens(column: pa.ChunkedArray, target: pa.DataType) -> bool:
    """Whether ``column`` becomes ``target`` without changing a value: from nulls, between
    integers (Arrow's safe cast refuses an overflow), or integers into a float64 that holds
    them exactly. Anything else (text into numbers, numbers into booleans, floats into
    integers) is left to the whole-file path, which keeps what was logged (as text where
    types mix), so where a piece boundary falls never changes a stored value."""
    import pyarrow as pa
    import pyarrow.compute as pc

    source = column.type
    if pa.types.is_null(source):
        return True
    if pa.types.is_integer(source) and pa.types.is_integer(target):
        return True
    if pa.types.is_integer(source) and pa.types.is_float64(target):
        if column.null_count == len(column):
            return True
        span = pc.min_max(column)
        low, high = span["min"].as_py(), span["max"].as_py()
        return bool(low >= -_EXACT_IN_FLOAT64 and high <= _EXACT_IN_FLOAT64)
    return False

