"""MLflow's ``search_runs`` filter and ``order_by`` grammar, parsed into typed clauses.

The grammar users know from ``mlflow.search_runs``::

    filter   := clause ( AND clause )*
    clause   := identifier comparator value
    identifier := ENTITY "." key          ENTITY: metrics|metric, params|param|parameters,
                                          tags|tag, attributes|attribute|attr|run
    key      := name | `quoted name` | "quoted name"
    comparator := = | != | > | >= | < | <= | LIKE | ILIKE | IN | NOT IN
    value    := number | 'text' | "text" | ( 'text', ... )

    order_by := identifier [ASC|DESC]

Metrics and numeric attributes (``start_time``, ``end_time``) compare with numbers; params,
tags and text attributes (``status``, ``run_name``, ``run_id``, ``user_id``,
``artifact_uri``) with quoted text (``=``, ``!=``, ``LIKE``, ``ILIKE``; ``IN`` for
``run_id``/``status``). ``OR`` is not part of MLflow's grammar and is refused with that said.
A clause on a metric, param or tag matches only runs that have it, as in MLflow.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Literal

from mlharbor.core.errors import InvalidInputError
from mlharbor.tracking import checks

Kind = Literal["metric", "param", "tag", "attribute"]
Value = float | str | tuple[str, ...]

ENTITY_ALIASES: dict[str, Kind] = {
    "metric": "metric", "metrics": "metric",
    "param": "param", "params": "param", "parameter": "param", "parameters": "param",
    "tag": "tag", "tags": "tag",
    "attribute": "attribute", "attributes": "attribute", "attr": "attribute", "run": "attribute",
}
NUMERIC_ATTRIBUTES = frozenset({"start_time", "end_time", "created"})
TEXT_ATTRIBUTES = frozenset({"status", "run_name", "run_id", "user_id", "artifact_uri",
                             "lifecycle_stage"})
IN_ATTRIBUTES = frozenset({"run_id", "status"})
NUMERIC_OPS = ("=", "!=", ">", ">=", "<", "<=")
TEXT_OPS = ("=", "!=", "LIKE", "ILIKE")
MAX_FILTER_CHARS = 10_000
_HELP = ("Example: metrics.rmse < 0.5 and params.model = 'rf' and "
         "attributes.status = 'FINISHED'.")


@dataclasses.dataclass(frozen=True, slots=True)
class Clause:
    """One comparison: ``metrics.rmse < 0.5``."""

    kind: Kind
    key: str
    op: str
    value: Value


@dataclasses.dataclass(frozen=True, slots=True)
class OrderBy:
    kind: Kind
    key: str
    ascending: bool = True


_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<op>!=|>=|<=|=|>|<)
  | (?P<lparen>\()
  | (?P<rparen>\))
  | (?P<comma>,)
  | (?P<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
  | (?P<bq>`[^`]*`)
  | (?P<num>[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?(?![\w.]))
  | (?P<ident>[A-Za-z_]\w*\.(?:`[^`]*`|"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|\w[\w.\-/:]*))
  | (?P<word>[A-Za-z_]\w*)
""", re.VERBOSE)


def _tokens(text: str, starts: list[int] | None = None) -> list[tuple[str, str]]:
    """The tokens of ``text``; ``starts`` (when given) gets each token's position."""
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise _error(f"unexpected character {text[pos]!r} at position {pos}", text)
        pos = match.end()
        kind = match.lastgroup or ""
        if kind != "ws":
            out.append((kind, match.group()))
            if starts is not None:
                starts.append(match.start())
    return out


def _error(what: str, text: str, hint: str = _HELP) -> InvalidInputError:
    shown = text if len(text) <= 200 else text[:200] + "..."
    return InvalidInputError(f"Invalid search filter {shown!r}: {what}.", hint=hint,
                             field="filter")


def _unquote(token: str) -> str:
    """A quoted token's text: ``\\'``, ``\\"`` and ``\\\\`` unescaped; ``\\%`` and ``\\_`` kept, so
    a LIKE pattern can name a literal ``%`` or ``_`` (as on PostgreSQL and in MLflow)."""
    body = token[1:-1]
    return re.sub(r"\\([^%_])", r"\1", body) if token[0] in "'\"" else body


class _Parser:
    def __init__(self, text: str, hint: str = _HELP) -> None:
        self.text = text
        self.hint = hint
        self.starts: list[int] = []
        self.toks = _tokens(text, self.starts)
        self.i = 0

    def fail(self, what: str, *, at_end: bool = False) -> InvalidInputError:
        """The error for the token just taken, naming its position (or the end)."""
        at = (f"at position {self.starts[self.i - 1]}" if not at_end and 0 < self.i
              <= len(self.starts) else f"at position {len(self.text)}, the end")
        return _error(f"{what} ({at})", self.text, self.hint)

    def peek(self) -> tuple[str, str] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, expected: str) -> tuple[str, str]:
        tok = self.peek()
        if tok is None:
            raise self.fail(f"it ends where {expected} was expected", at_end=True)
        self.i += 1
        return tok

    def identifier(self) -> tuple[Kind, str]:
        kind, tok = self.take("an identifier such as metrics.rmse")
        if kind != "ident":
            raise self.fail(f"expected an identifier such as metrics.rmse, found {tok!r}")
        entity, _, key = tok.partition(".")
        if entity.lower() not in ENTITY_ALIASES:
            raise self.fail(f"{entity!r} is not metrics, params, tags or attributes "
                            "(write e.g. metrics.rmse)")
        if key[:1] in ("`", "'", '"'):
            key = _unquote(key)
        if not key:
            raise self.fail(f"the key after {entity}. is empty")
        return ENTITY_ALIASES[entity.lower()], key

    def and_follows(self) -> bool:
        """Whether another clause follows (after AND): False at the end; OR and anything
        else refused."""
        nxt = self.peek()
        if nxt is None:
            return False
        self.i += 1
        if nxt[0] == "word" and nxt[1].upper() == "OR":
            raise self.fail("OR is not supported (MLflow's grammar joins clauses with AND "
                            "only); run two searches instead")
        if nxt[0] != "word" or nxt[1].upper() != "AND":
            raise self.fail(f"expected AND between clauses, found {nxt[1]!r}")
        return True

    def comparator(self) -> str:
        kind, tok = self.take("a comparator (=, !=, <, <=, >, >=, LIKE, ILIKE, IN)")
        if kind == "op":
            return tok
        upper = tok.upper()
        if kind == "word" and upper in ("LIKE", "ILIKE", "IN"):
            return upper
        if kind == "word" and upper == "NOT" and (nxt := self.peek()) is not None \
                and nxt[1].upper() == "IN":
            self.i += 1
            return "NOT IN"
        raise self.fail("expected a comparator (=, !=, <, <=, >, >=, LIKE, ILIKE, IN), "
                        f"found {tok!r}")

    def value(self, op: str) -> Value:
        if op in ("IN", "NOT IN"):
            if self.take("'(' after IN")[0] != "lparen":
                raise self.fail("IN takes a list in parentheses: ('a', 'b')")
            items: list[str] = []
            while True:
                kind, tok = self.take("a quoted value")
                if kind != "str":
                    raise self.fail(f"IN lists quoted values, found {tok!r}")
                items.append(_unquote(tok))
                sep = self.take("',' or ')'")[0]
                if sep == "rparen":
                    return tuple(items)
                if sep != "comma":
                    raise self.fail("IN values are separated by ',' and closed by ')'")
        kind, tok = self.take("a value")
        if kind == "num":
            return float(tok)
        if kind == "str":
            return _unquote(tok)
        raise self.fail(f"expected a number or a quoted value, found {tok!r}")


def parse_filter(text: str | None) -> list[Clause]:
    """The clauses of ``text`` (empty for no filter), or InvalidInputError saying what is
    wrong and where."""
    if text is None or not text.strip():
        return []
    if not isinstance(text, str) or len(text) > MAX_FILTER_CHARS:
        raise InvalidInputError(f"The search filter must be text of at most "
                                f"{MAX_FILTER_CHARS} characters.", field="filter")
    parser = _Parser(text)
    clauses: list[Clause] = []
    while True:
        kind, key = parser.identifier()
        op = parser.comparator()
        clauses.append(_check(Clause(kind, key, op, parser.value(op)), text))
        if not parser.and_follows():
            return clauses


@dataclasses.dataclass(frozen=True, slots=True)
class FieldClause:
    """One comparison of a listed record's own field, ``name LIKE 'churn%'``, or of one of
    its tags (``field`` "tags", ``key`` the tag's): what MLflow's clients send to search
    experiments, logged models, registered models and versions."""

    field: str
    op: str
    value: str
    key: str = ""

    def matches(self, text: str | None) -> bool:
        """Whether a record whose field (or tag) is ``text`` matches; None, a tag the record
        does not have, matches nothing (not even ``!=``, as in MLflow's search)."""
        if text is None:
            return False
        if self.op == "=":
            return text == self.value
        if self.op == "!=":
            return text != self.value
        return like_match(self.value, text, ignore_case=self.op == "ILIKE")


def like_match(pattern: str, text: str, *, ignore_case: bool = False) -> bool:
    """Whether ``text`` matches SQL ``LIKE`` ``pattern`` (``%`` any text, ``_`` one
    character, ``\\`` escaping the next), in time at most the text's length times the
    pattern's: each piece between ``%`` is fixed-length and found leftmost, never backtracked
    (a regular expression with ``.*`` per ``%`` takes exponential time on some patterns)."""
    if ignore_case:  # folded once: a case-blind regex loses its fast literal search
        pattern, text = pattern.lower(), text.lower()
    pieces = _like_pieces(pattern, re.DOTALL)
    if len(pieces) == 1:
        return pieces[0][0].fullmatch(text) is not None
    (first, _), *middle, (last, last_len) = pieces
    found = first.match(text)
    if found is None:
        return False
    pos, end = found.end(), len(text) - last_len
    for piece, _length in middle:
        found = piece.search(text, pos, max(end, pos))
        if found is None:
            return False
        pos = found.end()
    return pos <= end and last.fullmatch(text, end) is not None


@functools.lru_cache(maxsize=256)
def _like_pieces(pattern: str, flags: int) -> list[tuple[re.Pattern[str], int]]:
    """The fixed-length pieces of ``pattern`` between its unescaped ``%``: each a regular
    expression without repetition, and its length."""
    pieces: list[tuple[re.Pattern[str], int]] = []
    body: list[str] = []
    chars = iter(pattern)
    for ch in chars:
        if ch == "%":
            pieces.append((re.compile("".join(body), flags), len(body)))
            body = []
        elif ch == "\\":
            body.append(re.escape(next(chars, "\\")))
        else:
            body.append("." if ch == "_" else re.escape(ch))
    pieces.append((re.compile("".join(body), flags), len(body)))
    return pieces


#: The longest LIKE pattern taken: matching costs up to the text's length times a piece's.
MAX_LIKE_CHARS = 250


def check_like_pattern(value: str, text: str) -> None:
    """Refuses a LIKE pattern ending in a lone escape (PostgreSQL errors on it), or longer
    than :data:`MAX_LIKE_CHARS`."""
    if len(value) > MAX_LIKE_CHARS:
        raise _error(f"a LIKE pattern may hold at most {MAX_LIKE_CHARS} characters; this one "
                     f"holds {len(value)}", text)
    if (len(value) - len(value.rstrip("\\"))) % 2:
        raise _error(f"the LIKE pattern {value[:60]!r} ends with a lone backslash; write "
                     "\\\\ for a backslash", text)


def parse_field_filter(text: str | None, fields: dict[str, tuple[str, ...]], *, what: str
                       ) -> list[FieldClause]:
    """The clauses of a filter over ``fields`` (each with the comparators it takes), such
    as ``name LIKE 'churn%' AND run_id = '...'`` (an ``attributes.`` prefix is allowed), or
    InvalidInputError saying what is wrong and where. ``what`` names the records listed."""
    if text is None or not text.strip():
        return []
    if not isinstance(text, str) or len(text) > MAX_FILTER_CHARS:
        raise InvalidInputError(f"The search filter must be text of at most "
                                f"{MAX_FILTER_CHARS} characters.", field="filter")
    names = ", ".join(fields)
    example = next(iter(fields))
    parser = _Parser(text, hint=f"{what} are filtered by {names}; for example "
                                f"{example} {fields[example][-1]} 'x'.")
    clauses: list[FieldClause] = []
    while True:
        kind, tok = parser.take(f"a field ({names})")
        name, key = tok.lower(), ""
        if kind == "ident":
            entity, _, rest = tok.partition(".")
            entity = entity.lower()
            if entity in ("attribute", "attributes", "attr"):
                name = rest.lower()
            elif ENTITY_ALIASES.get(entity) == "tag" and (rest[1:-1] if rest[:1] in "`'\""
                                                          else rest):
                name, key = "tags", _unquote(rest) if rest[:1] in "`'\"" else rest
            else:
                name = ""
        elif kind != "word":
            name = ""
        if name == "tags" and not key:  # a tag is named: tags.<key>
            name = ""
        if name not in fields:
            raise parser.fail(f"{what} are filtered by {names}, not {tok!r}")
        op = parser.comparator()
        if op not in fields[name]:
            raise parser.fail(f"{name} compares with {', '.join(fields[name])}, not {op}")
        value = parser.value(op)
        if not isinstance(value, str):
            raise parser.fail(f"{name} compares with a quoted value such as 'x', not "
                              f"{value!r}")
        if op in ("LIKE", "ILIKE"):
            check_like_pattern(value, text)
        if key:
            checks.check_key(key, field="filter")
        clauses.append(FieldClause(name, op, value, key))
        if not parser.and_follows():
            return clauses


def _check(clause: Clause, text: str) -> Clause:
    kind, key, op, value = clause.kind, clause.key, clause.op, clause.value
    numeric = kind == "metric" or (kind == "attribute" and key in NUMERIC_ATTRIBUTES)
    if kind == "attribute" and key not in NUMERIC_ATTRIBUTES | TEXT_ATTRIBUTES:
        known = ", ".join(sorted(NUMERIC_ATTRIBUTES | TEXT_ATTRIBUTES))
        raise _error(f"unknown attribute {key!r}; known: {known}", text)
    if op in ("IN", "NOT IN"):
        if kind != "attribute" or key not in IN_ATTRIBUTES:
            raise _error(f"{op} works on attributes.run_id and attributes.status only", text)
        return clause
    if numeric:
        if op not in NUMERIC_OPS:
            raise _error(f"{_name(kind, key)} compares with {', '.join(NUMERIC_OPS)}, not "
                         f"{op}", text)
        if not isinstance(value, float):
            raise _error(f"{_name(kind, key)} compares with a number, not {value!r}", text)
        return clause
    if op not in TEXT_OPS:
        raise _error(f"{_name(kind, key)} compares with {', '.join(TEXT_OPS)}, not {op}",
                     text)
    if not isinstance(value, str):
        raise _error(f"{_name(kind, key)} compares with a quoted value such as 'x', not "
                     f"{value!r}", text)
    if op in ("LIKE", "ILIKE"):
        check_like_pattern(value, text)
    return clause


def _name(kind: Kind, key: str) -> str:
    plural = {"metric": "metrics", "param": "params", "tag": "tags", "attribute": "attributes"}
    return f"{plural[kind]}.{key}"


def parse_order_by(items: list[str] | None) -> list[OrderBy]:
    """``["metrics.rmse DESC", "params.lr"]`` as typed clauses (ascending by default)."""
    out: list[OrderBy] = []
    for item in items or []:
        if not isinstance(item, str) or not item.strip():
            raise InvalidInputError(f"order_by entries are text such as 'metrics.rmse DESC'; "
                                    f"received {item!r}.", field="order_by")
        parser = _Parser(item)
        kind, key = parser.identifier()
        ascending = True
        nxt = parser.peek()
        if nxt is not None:
            parser.i += 1
            if nxt[0] != "word" or nxt[1].upper() not in ("ASC", "DESC"):
                raise InvalidInputError(
                    f"Invalid order_by {item!r}: expected ASC or DESC after the identifier, "
                    f"found {nxt[1]!r}.", field="order_by")
            ascending = nxt[1].upper() == "ASC"
        if parser.peek() is not None:
            raise InvalidInputError(f"Invalid order_by {item!r}: one identifier and an "
                                    "optional ASC/DESC.", field="order_by")
        if kind == "attribute" and key not in NUMERIC_ATTRIBUTES | TEXT_ATTRIBUTES:
            raise InvalidInputError(f"Invalid order_by {item!r}: unknown attribute {key!r}.",
                                    field="order_by")
        out.append(OrderBy(kind, key, ascending))
    return out


def render(clauses: list[Clause]) -> str:
    """The filter text of ``clauses``: what :func:`parse_filter` reads back as equal."""
    parts = []
    for c in clauses:
        key = f"`{c.key}`" if "`" not in c.key else _quote(c.key, '"')
        if isinstance(c.value, tuple):
            value = "(" + ", ".join(_quote(v) for v in c.value) + ")"
        elif isinstance(c.value, float):
            value = repr(c.value)
        else:
            value = _quote(c.value)
        parts.append(f"{_name(c.kind, '')}{key} {c.op} {value}")
    return " and ".join(parts)


def _quote(text: str, mark: str = "'") -> str:
    return mark + text.replace("\\", "\\\\").replace(mark, "\\" + mark) + mark
