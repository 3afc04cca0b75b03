"""A small, safe filter language for naming a slice of rows, e.g.
``contract == 'month-to-month' and tenure_months < 12``. Parsed here, never ``eval``'d.

Grammar (keywords case-insensitive)::

    expr       := and_expr ("or" and_expr)*
    and_expr   := not_expr ("and" not_expr)*
    not_expr   := "not" not_expr | "(" expr ")" | test
    test       := column OP literal                   tenure_months >= 12
                | column ["not"] "in" "[" literal ("," literal)* "]"
                | column "is" ["not"] "missing"
    OP         := == | != | < | <= | > | >=
    column     := a name [A-Za-z_][A-Za-z0-9_.]* or any text in backticks (`monthly charges`)
    literal    := number | 'text' | "text" | true | false

A test on a missing value is false (``!=`` included): only ``is missing`` selects missing
values. Every parse error is a :class:`ConfigError` naming the position and what was expected.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

from mlharbor.core.errors import ConfigError

MAX_CHARS = 2000
MAX_DEPTH = 32
Literal = float | str | bool

_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<number>[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)
  | (?P<string>'[^']*'|"[^"]*")
  | (?P<quoted>`[^`]+`)
  | (?P<op>==|!=|<=|>=|<|>)
  | (?P<punct>[()\[\],])
  | (?P<word>[A-Za-z_][A-Za-z0-9_.]*)
""", re.VERBOSE)
_KEYWORDS = frozenset({"and", "or", "not", "in", "is", "missing", "true", "false"})
OPS = ("==", "!=", "<", "<=", ">", ">=")


@dataclasses.dataclass(frozen=True)
class Compare:
    column: str
    op: str
    value: Literal


@dataclasses.dataclass(frozen=True)
class Member:
    column: str
    values: tuple[Literal, ...]
    negated: bool = False


@dataclasses.dataclass(frozen=True)
class Missing:
    column: str
    negated: bool = False


@dataclasses.dataclass(frozen=True)
class Not:
    item: Expr


@dataclasses.dataclass(frozen=True)
class And:
    items: tuple[Expr, ...]


@dataclasses.dataclass(frozen=True)
class Or:
    items: tuple[Expr, ...]


Expr = Compare | Member | Missing | Not | And | Or


@dataclasses.dataclass(frozen=True)
class _Token:
    kind: str
    text: str
    at: int


def parse_filter(text: str) -> Expr:
    """The expression tree of ``text``; ConfigError (naming the position) when malformed."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError("A slice filter must be a non-empty expression such as "
                          "\"contract == 'month-to-month'\".", field="where")
    if len(text) > MAX_CHARS:
        raise ConfigError(f"A slice filter may be at most {MAX_CHARS} characters; received "
                          f"{len(text)}.", field="where")
    parser = _Parser(text, _tokenize(text))
    expr = parser.expr(0)
    if parser.peek() is not None:
        parser.fail("'and', 'or' or the end of the expression")
    return expr


def _tokenize(text: str) -> list[_Token]:
    tokens, at = [], 0
    while at < len(text):
        match = _TOKEN.match(text, at)
        if match is None:
            raise ConfigError(f"Cannot read the slice filter {text!r} at character {at + 1} "
                              f"({text[at:at + 10]!r}); see the filter grammar: columns, "
                              "== != < <= > >=, in [..], is missing, and/or/not, parentheses.",
                              field="where")
        kind = match.lastgroup or ""
        if kind != "space":
            tokens.append(_Token(kind, match.group(), at))
        at = match.end()
    return tokens


class _Parser:
    def __init__(self, text: str, tokens: list[_Token]) -> None:
        self.text, self.tokens, self.i = text, tokens, 0

    def peek(self) -> _Token | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def word(self, *words: str) -> bool:
        token = self.peek()
        if token is not None and token.kind == "word" and token.text.lower() in words:
            self.i += 1
            return True
        return False

    def punct(self, mark: str) -> bool:
        token = self.peek()
        if token is not None and token.kind == "punct" and token.text == mark:
            self.i += 1
            return True
        return False

    def fail(self, expected: str) -> None:
        token = self.peek()
        where = (f"at character {token.at + 1} ({token.text!r})" if token
                 else "at the end")
        raise ConfigError(f"Cannot read the slice filter {self.text!r} {where}: expected "
                          f"{expected}.", field="where")

    def expr(self, depth: int) -> Expr:
        if depth > MAX_DEPTH:
            raise ConfigError(f"The slice filter {self.text[:60]!r} nests deeper than "
                              f"{MAX_DEPTH} levels; simplify it.", field="where")
        items = [self.conjunction(depth)]
        while self.word("or"):
            items.append(self.conjunction(depth))
        return items[0] if len(items) == 1 else Or(tuple(items))

    def conjunction(self, depth: int) -> Expr:
        items = [self.negation(depth)]
        while self.word("and"):
            items.append(self.negation(depth))
        return items[0] if len(items) == 1 else And(tuple(items))

    def negation(self, depth: int) -> Expr:
        if depth > MAX_DEPTH:
            self.expr(depth)  # raises the nesting error
        if self.word("not"):
            return Not(self.negation(depth + 1))
        if self.punct("("):
            inner = self.expr(depth + 1)
            if not self.punct(")"):
                self.fail("')'")
            return inner
        return self.test()

    def test(self) -> Expr:
        column = self.column()
        token = self.peek()
        if token is not None and token.kind == "op":
            self.i += 1
            return Compare(column, token.text, self.literal())
        if self.word("is"):
            negated = self.word("not")
            if not self.word("missing"):
                self.fail("'missing' (as in 'column is missing')")
            return Missing(column, negated)
        negated = self.word("not")
        if not self.word("in"):
            self.fail("a comparison (== != < <= > >=), 'in [...]' or 'is missing'")
        if not self.punct("["):
            self.fail("'[' to open the list of values")
        values = [self.literal()]
        while self.punct(","):
            values.append(self.literal())
        if not self.punct("]"):
            self.fail("',' or ']'")
        return Member(column, tuple(values), negated)

    def column(self) -> str:
        token = self.peek()
        if token is not None and token.kind == "quoted":
            self.i += 1
            return token.text[1:-1]
        if token is not None and token.kind == "word" and token.text.lower() not in _KEYWORDS:
            self.i += 1
            return token.text
        self.fail("a column name (backticks around one with spaces or keywords)")
        raise AssertionError  # unreachable: fail raises

    def literal(self) -> Literal:
        token = self.peek()
        if token is None:
            self.fail("a value: a number, 'text', true or false")
            raise AssertionError
        self.i += 1
        if token.kind == "number":
            number = float(token.text)
            if math.isfinite(number):
                return number
            self.i -= 1
            self.fail("a finite number")
        if token.kind == "string":
            return token.text[1:-1]
        if token.kind == "word" and token.text.lower() in ("true", "false"):
            return token.text.lower() == "true"
        self.i -= 1
        self.fail("a value: a number, 'text', true or false")
        raise AssertionError


def render(expr: Expr) -> str:
    """Canonical text of ``expr``; ``parse_filter(render(e)) == e`` for every tree."""
    if isinstance(expr, Compare):
        return f"{_column_text(expr.column)} {expr.op} {_literal_text(expr.value)}"
    if isinstance(expr, Member):
        values = ", ".join(_literal_text(v) for v in expr.values)
        return f"{_column_text(expr.column)} {'not in' if expr.negated else 'in'} [{values}]"
    if isinstance(expr, Missing):
        return f"{_column_text(expr.column)} is {'not ' if expr.negated else ''}missing"
    if isinstance(expr, Not):
        return f"not ({render(expr.item)})"
    joiner = " and " if isinstance(expr, And) else " or "
    return joiner.join(f"({render(item)})" for item in expr.items)


def columns_of(expr: Expr) -> set[str]:
    if isinstance(expr, Compare | Member | Missing):
        return {expr.column}
    if isinstance(expr, Not):
        return columns_of(expr.item)
    return set().union(*(columns_of(item) for item in expr.items))


def _column_text(column: str) -> str:
    plain = re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", column)
    return column if plain and column.lower() not in _KEYWORDS else f"`{column}`"


def _literal_text(value: Literal) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return f'"{value}"' if "'" in value else f"'{value}'"


def select(expr: Expr, frame: Any) -> Any:
    """Boolean NumPy mask of the rows of ``frame`` (a DataFrame) that ``expr`` selects."""
    import numpy as np

    if isinstance(expr, Not):
        return ~select(expr.item, frame)
    if isinstance(expr, And):
        return np.logical_and.reduce([select(item, frame) for item in expr.items])
    if isinstance(expr, Or):
        return np.logical_or.reduce([select(item, frame) for item in expr.items])
    series = _column(frame, expr.column)
    present = series.notna().to_numpy()
    if isinstance(expr, Missing):
        return present if expr.negated else ~present
    if isinstance(expr, Member):
        hits = np.zeros(len(series), dtype=bool)
        for value in expr.values:
            hits |= _compare(series, "==", value, expr.column)
        return present & (~hits if expr.negated else hits)
    return present & _compare(series, expr.op, expr.value, expr.column)


def _column(frame: Any, name: str) -> Any:
    if name not in frame.columns:
        known = ", ".join(map(str, frame.columns[:30]))
        raise ConfigError(f"The slice filter names the column {name!r}, which the data does "
                          f"not have; columns: {known}.", field="where")
    return frame[name]


def _compare(series: Any, op: str, value: Literal, column: str) -> Any:
    import numpy as np
    import pandas as pd

    numeric = pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series)
    if numeric and isinstance(value, str):
        raise ConfigError(f"The column {column!r} holds numbers; compare it with a number, not "
                          f"the text {value!r}.", field="where")
    if not numeric and op not in ("==", "!="):
        raise ConfigError(f"The column {column!r} holds text; it can only be compared with "
                          f"== != or in [...], not {op}.", field="where")
    target: float | str
    if numeric:
        values = series.to_numpy(dtype=float, na_value=np.nan)
        target = float(value)
    else:  # text as pandas writes it: True for a Python boolean, 3 for the number 3.0
        values = series.astype(str).to_numpy()
        target = _number_text(value) if isinstance(value, float) and not isinstance(
            value, bool) else str(value)
    with np.errstate(invalid="ignore"):
        result = {"==": np.equal, "!=": np.not_equal, "<": np.less, "<=": np.less_equal,
                  ">": np.greater, ">=": np.greater_equal}[op](values, target)
    return np.asarray(result, dtype=bool)


def _number_text(value: float) -> str:
    return str(int(value)) if value.is_integer() else repr(value)
