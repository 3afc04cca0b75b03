"""Live performance by slice: the labelled predictions of each window cut the way evaluation
cuts the holdout (:mod:`mlharbor.evaluation.slices`, one parser and one set of slice keys).

A slice is given as text (``mlharbor monitor performance --slice``, ``?slice=`` on the
performance route; repeat it for several)::

    contract                     one slice per logged value of the input column ``contract``
    tenure_months:12,36          the column cut at the edges: (-inf, 12), [12, 36), [36, inf)
    where:contract == 'month-to-month' and tenure_months < 6
                                 the rows a filter selects (the grammar of evaluation.sliceexpr)
    recipe                       the slices the served version's recipe names, keyed as its
                                 evaluation report keys them (so they are compared with it)
    `monthly charges`            a column whose name has spaces or is a keyword, in backticks

Columns are the logged inputs (``in.<column>``): what clients sent, after redaction (a redacted
column is sliced by its hashes). A column named in ``--slice`` that no logged row has is
refused, naming the columns that are logged; a recipe slice on a column clients do not send
is skipped with a note, because the recipe was written for the training data.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from mlharbor.core.errors import InvalidInputError, MlharborError

if TYPE_CHECKING:
    import pandas as pd

    from mlharbor.evaluation.slices import SliceSpec

MAX_SLICES = 10
MAX_CHARS = 2000
MAX_EDGES = 50
RECIPE = "recipe"
WHERE = "where:"
_COLUMN = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
_SYNTAX = ("a column (contract), a column cut at edges (tenure_months:12,36), a filter "
           "(where:contract == 'month-to-month') or `recipe`")


@dataclasses.dataclass(frozen=True)
class LiveSlices:
    """What to cut the labelled rows by: explicit specs, and/or the served recipe's slices."""

    specs: tuple[SliceSpec, ...] = ()
    recipe: bool = False

    def columns(self) -> set[str]:
        return set().union(*(spec.columns() for spec in self.specs))


def parse_live_slices(items: str | Sequence[str]) -> LiveSlices:
    """The slices of ``--slice``/``?slice=`` texts; InvalidInputError (field ``slice``) names
    the text, the character position and what was expected there."""
    texts = [items] if isinstance(items, str) else list(items)
    if not texts:
        raise InvalidInputError(f"No slice given; expected {_SYNTAX}.", field="slice")
    if len(texts) > MAX_SLICES:
        raise InvalidInputError(f"At most {MAX_SLICES} slices per request; received "
                                f"{len(texts)}.", field="slice", received=len(texts))
    specs: list[SliceSpec] = []
    recipe = False
    for text in texts:
        if not isinstance(text, str):
            raise InvalidInputError(f"A slice is text; received {type(text).__name__}.",
                                    field="slice")
        if text.strip() == RECIPE:
            recipe = True
            continue
        spec = parse_slice_text(text)
        if spec not in specs:
            specs.append(spec)
    return LiveSlices(tuple(specs), recipe)


def parse_slice_text(text: str) -> SliceSpec:
    """One slice spec from its text (see the module docstring)."""
    from mlharbor.evaluation.sliceexpr import parse_filter
    from mlharbor.evaluation.slices import SliceSpec

    if len(text) > MAX_CHARS:
        raise InvalidInputError(f"A slice may be at most {MAX_CHARS} characters; received "
                                f"{len(text)}.", field="slice")
    body = text.strip()
    if not body:
        raise InvalidInputError(f"An empty slice; expected {_SYNTAX}.", field="slice",
                                received=text)
    if body.lower().startswith(WHERE):
        where = body[len(WHERE):].strip()
        try:
            expr = parse_filter(where)
        except MlharborError as exc:  # names the character within the filter
            raise InvalidInputError(f"The slice {text!r}: {exc.message}", hint=exc.hint,
                                    field="slice", received=text) from exc
        return SliceSpec(name=WHERE + where, where=expr)  # its key: the text as given
    offset = len(text) - len(text.lstrip())
    column, at = _column(text, offset)
    rest = text[at:].rstrip()
    if not rest:
        return SliceSpec(column=column)
    if rest[0] != ":":
        _fail(text, at, "':' and the bin edges (tenure:12,36), or the end of the slice")
    return SliceSpec(column=column, bins=_edges(text, at + 1))


def _column(text: str, at: int) -> tuple[str, int]:
    """The column name at ``text[at:]`` (plain or in backticks) and where it ends."""
    if text.startswith("`", at):
        end = text.find("`", at + 1)
        if end <= at + 1:
            _fail(text, at, "a column name closed by a backtick (`monthly charges`)")
        return text[at + 1:end], end + 1
    match = _COLUMN.match(text, at)
    if match is None:
        _fail(text, at, _SYNTAX)
        raise AssertionError  # unreachable: _fail raises
    return match.group(), match.end()


def _edges(text: str, at: int) -> tuple[float, ...]:
    edges: list[float] = []
    for piece in text[at:].split(","):
        start = at + len(piece) - len(piece.lstrip())
        try:
            edge = float(piece.strip())
        except ValueError:
            edge = math.nan
        if not math.isfinite(edge):
            _fail(text, start, "a finite number (a bin edge)")
        if edges and edge <= edges[-1]:
            _fail(text, start, f"an edge greater than {edges[-1]:g} (edges increase)")
        edges.append(edge)
        at += len(piece) + 1
    if len(edges) > MAX_EDGES:
        raise InvalidInputError(f"The slice {text!r} has {len(edges)} bin edges; at most "
                                f"{MAX_EDGES}.", field="slice", received=text)
    return tuple(edges)


def _fail(text: str, at: int, expected: str) -> None:
    shown = repr(text[at:at + 10]) if at < len(text) else "the end"
    raise InvalidInputError(
        f"Cannot read the slice {text!r} at character {at + 1} ({shown}): expected "
        f"{expected}.", field="slice", received=text)


def recipe_specs(recipe: Mapping[str, Any] | None) -> list[SliceSpec]:
    """The slices a stored recipe (``lineage["recipe"]``) names; [] when it names none."""
    from mlharbor.evaluation.slices import parse_slices

    entries = (recipe or {}).get("slices") or []
    return parse_slices([{k: v for k, v in dict(e).items() if v is not None}
                         for e in entries if isinstance(e, Mapping)])


def logged_inputs(logged: Any, keep: Sequence[str], slices: LiveSlices, endpoint: str) -> Any:
    """The columns ``keep`` and the flat ``in.<column>`` inputs of the log table ``logged``
    (nested values cannot be sliced, nor carried through the label join); InvalidInputError
    for a named slice column that no logged row has, naming the columns that are logged."""
    import pyarrow as pa

    from mlharbor.monitoring.logrows import INPUT_PREFIX

    inputs = [f.name for f in logged.schema if f.name.startswith(INPUT_PREFIX)
              and not pa.types.is_nested(f.type)]
    names = [c.removeprefix(INPUT_PREFIX) for c in inputs]
    missing = sorted(slices.columns() - set(names))
    if missing and logged.num_rows:
        shown = ", ".join(sorted(names)[:40]) or "none"
        raise InvalidInputError(
            f"The slice names the column {missing[0]!r}, which the logged inputs of endpoint "
            f"{endpoint!r} do not have; logged input columns: {shown}.",
            hint="Slice by a column the clients send (names are case-sensitive).",
            field="slice", received=missing[0])
    return logged.select([c for c in keep if c in logged.column_names] + inputs)


def add_slices(row: dict[str, Any], part: Any, slices: LiveSlices,
               recipe_slices: Callable[[int], Sequence[SliceSpec]] | None,
               score: Callable[[Any], Any]) -> None:
    """``row["slices"]`` from the rows ``part`` of its window and version, and
    ``row["slice_notes"]`` for recipe slices that could not be cut or were not found."""
    found, notes = slice_rows(part, slices.specs, score, strict=True)
    if slices.recipe:
        version = row["version"]
        specs = recipe_slices(version) if recipe_slices is not None and version else []
        if not specs:
            notes.append(f"version {version} has no recipe slices stored"
                         if version else "no version was logged, so no recipe is known")
        more, skipped = slice_rows(part, specs, score, strict=False)
        keys = {item["key"] for item in found}
        found += [item for item in more if item["key"] not in keys]
        notes += skipped
    row["slices"] = found
    if notes:
        row["slice_notes"] = notes


def slice_rows(part: pd.DataFrame, specs: Sequence[SliceSpec], score: Callable[[Any], Any],
               *, strict: bool) -> tuple[list[dict[str, Any]], list[str]]:
    """Per slice of ``specs``: its key, the number of labelled rows and ``score`` on them.

    ``part`` holds the joined rows of one window and version (``in.<column>`` inputs, label,
    prediction, score). ``strict`` (slices the caller named) turns a slice that cannot be cut
    on these rows into InvalidInputError; otherwise (the recipe's) it becomes a note.
    """
    from mlharbor.monitoring.logrows import INPUT_PREFIX

    inputs = part[[c for c in part.columns if str(c).startswith(INPUT_PREFIX)]]
    frame = inputs.rename(columns=lambda c: str(c).removeprefix(INPUT_PREFIX))
    frame = frame.reset_index(drop=True)
    rows, notes = [], []
    for spec in specs:
        label = spec_text(spec)
        absent = sorted(spec.columns() - set(frame.columns))
        if absent:  # only the recipe's: named ones were checked against the whole window
            notes.append(f"recipe slice {label!r} skipped: the column {absent[0]!r} is "
                         "not among the logged inputs")
            continue
        try:
            groups, note = spec.capped_groups(frame)
        except MlharborError as exc:  # e.g. bins on a text column, text compared with numbers
            if strict:
                raise InvalidInputError(f"The slice {label!r} cannot be cut on the "
                                        f"logged inputs: {exc.message}", field="slice") from exc
            notes.append(f"recipe slice {label!r} skipped: {exc.message}")
            continue
        notes += [note] if note else []
        for key, mask in groups:
            n = int(mask.sum())
            rows.append({"spec": label, "key": key, "labelled_rows": n,
                         "metrics": score(part[mask]) if n else {}})
    return rows, notes


def spec_text(spec: SliceSpec) -> str:
    """How a slice is named in answers: a filter given as ``where:...`` by that text, any
    other as evaluation labels it (``contract``, ``tenure (bins)``, ``name: filter``)."""
    if spec.where is not None and spec.name is not None and spec.name.startswith(WHERE):
        return spec.name
    return spec.label


def validation_slices(evaluation: Mapping[str, Any] | None) -> dict[str, dict[str, float]]:
    """Slice key -> holdout metrics from a stored evaluation report (``{}`` without slices)."""
    from mlharbor.evaluation.gates import slice_key

    block = (evaluation or {}).get("slices") or {}
    out = {}
    for item in block.get("slices") or [] if isinstance(block, Mapping) else []:
        if isinstance(item, Mapping) and item.get("metrics"):
            out[slice_key(str(item.get("key")))] = {
                str(k): float(v) for k, v in item["metrics"].items()
                if isinstance(v, int | float) and not isinstance(v, bool)}
    return out
