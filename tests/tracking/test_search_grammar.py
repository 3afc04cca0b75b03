"""The search filter parser: what it renders it reads back equal (property-based), any text
gives clauses or an InvalidInputError naming the problem (never another exception), and the
mistakes users make get messages that say how to fix them."""

from __future__ import annotations

import sqlite3

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlharbor.core.errors import InvalidInputError
from mlharbor.tracking.checks import check_key
from mlharbor.tracking.search import (
    NUMERIC_ATTRIBUTES,
    Clause,
    FieldClause,
    like_match,
    parse_field_filter,
    parse_filter,
    parse_order_by,
    render,
)

keys = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1,
               max_size=20)
texts = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=20)
numbers = st.floats(allow_nan=False, allow_infinity=False)
metric = st.builds(Clause, st.just("metric"), keys, st.sampled_from(["=", "!=", ">", ">=",
                                                                      "<", "<="]), numbers)
textual = st.builds(Clause, st.sampled_from(["param", "tag"]), keys,
                    st.sampled_from(["=", "!=", "LIKE", "ILIKE"]), texts)
attribute = st.one_of(
    st.builds(Clause, st.just("attribute"), st.sampled_from(sorted(NUMERIC_ATTRIBUTES)),
              st.sampled_from(["=", ">", "<="]), numbers),
    st.builds(Clause, st.just("attribute"), st.sampled_from(["status", "run_name"]),
              st.sampled_from(["=", "!=", "LIKE"]), texts),
    st.builds(Clause, st.just("attribute"), st.sampled_from(["run_id", "status"]),
              st.sampled_from(["IN", "NOT IN"]),
              st.lists(texts, min_size=1, max_size=3).map(tuple)))


@settings(derandomize=True, deadline=None, max_examples=300)
@given(st.lists(st.one_of(metric, textual, attribute), min_size=1, max_size=4))
def test_rendered_filters_parse_back_equal(clauses: list[Clause]) -> None:
    assert parse_filter(render(clauses)) == clauses


@settings(derandomize=True, deadline=None, max_examples=300)
@given(st.text(max_size=80))
def test_any_text_parses_or_is_refused_clearly(text: str) -> None:
    try:
        parse_filter(text)
    except InvalidInputError as exc:
        assert exc.details.get("field") == "filter" or "filter" in str(exc)


def test_mlflow_spellings() -> None:
    clauses = parse_filter("metrics.`val loss` <= 0.2 AND params.model = \"rf\" and "
                           "tag.team != 'a' and attributes.status IN ('FINISHED', 'FAILED')")
    assert clauses == [Clause("metric", "val loss", "<=", 0.2),
                       Clause("param", "model", "=", "rf"), Clause("tag", "team", "!=", "a"),
                       Clause("attribute", "status", "IN", ("FINISHED", "FAILED"))]
    assert parse_filter("metrics.val.loss > 1e-3")[0].key == "val.loss"
    assert parse_filter("") == [] and parse_filter(None) == []


@pytest.mark.parametrize(("text", "says"), [
    ("metrics.x > 1 or metrics.y < 2", "OR is not supported"),
    ("metrics.x = 'high'", "compares with a number"),
    ("params.lr > 0.1", "compares with =, !=, LIKE, ILIKE"),
    ("loss < 1", "expected an identifier"),
    ("foo.x = 1", "is not metrics, params, tags or attributes"),
    ("attributes.colour = 'red'", "unknown attribute 'colour'"),
    ("metrics.x >", "ends where a value was expected"),
    ("metrics.x > 1 metrics.y > 2", "expected AND"),
    ("tags.t IN ('a')", "IN works on attributes.run_id and attributes.status only"),
])
def test_mistakes_are_named(text: str, says: str) -> None:
    with pytest.raises(InvalidInputError, match=says):
        parse_filter(text)


def test_order_by() -> None:
    assert [(o.kind, o.key, o.ascending) for o in parse_order_by(
        ["metrics.rmse DESC", "params.lr", "attributes.start_time asc"])] == [
        ("metric", "rmse", False), ("param", "lr", True), ("attribute", "start_time", True)]
    for bad in (["metrics.rmse DOWN"], ["rmse"], [""], ["attributes.colour"]):
        with pytest.raises(InvalidInputError):
            parse_order_by(bad)


# -- filters over a listing's own fields (experiments, logged models, registry searches) -----

FIELDS = {"name": ("=", "!=", "LIKE", "ILIKE"), "run_id": ("=",), "tags": ("=", "!=", "LIKE")}


def _valid_key(key: str) -> bool:
    try:
        check_key(key, field="k")
    except InvalidInputError:
        return False
    return True


field_clauses = st.one_of(
    st.builds(FieldClause, st.just("name"), st.sampled_from(FIELDS["name"]), texts),
    st.builds(FieldClause, st.just("run_id"), st.just("="), texts),
    st.builds(FieldClause, st.just("tags"), st.sampled_from(FIELDS["tags"]), texts,
              st.text(st.sampled_from("abXY09_-. :/"), min_size=1, max_size=20).filter(
                  _valid_key)))


def _render_field(c: FieldClause) -> str:
    value = "'" + c.value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return f"{'tags.`' + c.key + '`' if c.field == 'tags' else c.field} {c.op} {value}"


@settings(derandomize=True, deadline=None, max_examples=300)
@given(st.lists(field_clauses, min_size=1, max_size=4))
def test_field_filters_parse_back_equal(clauses: list[FieldClause]) -> None:
    text = " AND ".join(_render_field(c) for c in clauses)
    assert parse_field_filter(text, FIELDS, what="Things") == clauses


@settings(derandomize=True, deadline=None, max_examples=300)
@given(st.text(max_size=80))
def test_any_field_filter_text_parses_or_is_refused_clearly(text: str) -> None:
    try:
        parse_field_filter(text, FIELDS, what="Things")
    except InvalidInputError as exc:
        assert exc.details.get("field") == "filter"


like_text = st.text(st.sampled_from("abAB%_.x\\"), max_size=10)


@settings(derandomize=True, deadline=None, max_examples=600)
@given(like_text, like_text)
def test_like_matches_as_sqlite_does(pattern: str, text: str) -> None:
    """SQLite (case-sensitive LIKE on, ``\\`` as the escape, as mlharbor's SQL runs it) is
    the reference; a pattern ending in a lone escape is refused before it gets here."""
    if (len(pattern) - len(pattern.rstrip("\\"))) % 2:
        return
    db = sqlite3.connect(":memory:")
    db.execute("PRAGMA case_sensitive_like = ON")
    (expected,) = db.execute("SELECT ? LIKE ? ESCAPE '\\'", (text, pattern)).fetchone()
    (folded,) = db.execute("SELECT lower(?) LIKE lower(?) ESCAPE '\\'",
                           (text, pattern)).fetchone()
    db.close()
    assert FieldClause("name", "LIKE", pattern).matches(text) == bool(expected)
    assert FieldClause("name", "ILIKE", pattern).matches(text) == bool(folded)


def test_like_patterns_that_backtrack_a_regular_expression_are_answered() -> None:
    # ``.*`` per % in a backtracking regex takes exponential time on these (minutes at 12 %);
    # the pytest timeout would catch a return of that.
    assert not like_match("%" * 40 + "x", "churn-classifier-production-v2" * 8)
    assert not like_match("%a" * 30 + "%b", "a" * 5000)
    assert like_match("%a" * 30 + "%b", "a" * 5000 + "b")
    assert like_match("my\\_exp", "my_exp") and not like_match("my\\_exp", "myXexp")
    assert like_match("100\\%", "100%") and not like_match("100\\%", "1000")


def test_field_filter_spellings_and_tags() -> None:
    got = parse_field_filter("attributes.name LIKE 'churn%' and tag.`mlflow.prompt.is_prompt` "
                             "!= 'true' AND run_id = \"r1\"", FIELDS, what="Things")
    assert got == [FieldClause("name", "LIKE", "churn%"),
                   FieldClause("tags", "!=", "true", "mlflow.prompt.is_prompt"),
                   FieldClause("run_id", "=", "r1")]
    # a tag the record lacks matches nothing, != included (as MLflow's search)
    assert not got[1].matches(None) and not FieldClause("tags", "=", "x", "k").matches(None)
    # \\% and \\_ stay escaped for LIKE; \\' and \\\\ are unescaped
    (clause,) = parse_field_filter("name LIKE 'it\\'s\\_100\\%\\\\\\\\'", FIELDS, what="Things")
    assert clause.value == "it's\\_100\\%\\\\"
    assert parse_field_filter("  ", FIELDS, what="Things") == []


@pytest.mark.parametrize(("text", "says"), [
    ("colour = 'red'", "Things are filtered by name, run_id, tags, not 'colour'"),
    ("run_id LIKE 'r%'", "run_id compares with =, not LIKE"),
    ("name = 'a' or name = 'b'", "OR is not supported"),
    ("name = 3", "compares with a quoted value"),
    ("metrics.x = 'a'", "not 'metrics.x'"),
    ("name =", "ends where a value was expected"),
    ("tags = 'x'", "not 'tags'"),
    ("attributes.tags = 'x'", "not 'attributes.tags'"),
    ("name LIKE 'a\\\\'", "ends with a lone backslash"),
    ("name LIKE '" + "a" * 251 + "'", "at most 250 characters"),
    ("tags.`k\"` = 'x'", "is not a valid key"),
])
def test_field_filter_mistakes_are_named(text: str, says: str) -> None:
    with pytest.raises(InvalidInputError, match=says):
        parse_field_filter(text, FIELDS, what="Things")
