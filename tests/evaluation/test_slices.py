"""Slice filters (grammar, property-based), slice cutting, per-slice metrics and the flag rule,
and the slice form of the gate grammar."""

from __future__ import annotations

import math
import string

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlharbor.core.errors import ConfigError
from mlharbor.evaluation.gates import (
    Evidence,
    SliceEvidence,
    evaluate_gates,
    parse_gate,
    slice_key,
)
from mlharbor.evaluation.metrics import CLASSIFICATION_METRICS, Target
from mlharbor.evaluation.sliceexpr import (
    OPS,
    And,
    Compare,
    Member,
    Missing,
    Not,
    Or,
    parse_filter,
    render,
    select,
)
from mlharbor.evaluation.slices import (
    MIN_ROWS,
    SliceSpec,
    check_slice_gates,
    evaluate_slices,
    parse_slices,
)

BOUNDED = settings(derandomize=True, deadline=None, max_examples=150)

# -- the filter grammar ------------------------------------------------------------------------

columns = st.one_of(
    st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True),
    st.text(string.ascii_letters + " -/", min_size=1, max_size=10).filter(str.strip),
)
literals = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.text(string.ascii_letters + string.digits + " -_.\"", max_size=8),
    st.text(string.ascii_letters + "'", max_size=8),
    st.booleans(),
)
tests_ = st.one_of(
    st.builds(Compare, columns, st.sampled_from(OPS), literals),
    st.builds(Member, columns, st.lists(literals, min_size=1, max_size=3).map(tuple),
              st.booleans()),
    st.builds(Missing, columns, st.booleans()),
)
trees = st.recursive(tests_, lambda inner: st.one_of(
    st.builds(Not, inner),
    st.builds(And, st.lists(inner, min_size=2, max_size=3).map(tuple)),
    st.builds(Or, st.lists(inner, min_size=2, max_size=3).map(tuple)),
), max_leaves=8)


@BOUNDED
@given(trees)
def test_render_then_parse_gives_the_same_tree(tree: object) -> None:
    assert parse_filter(render(tree)) == tree  # type: ignore[arg-type]


@BOUNDED
@given(st.text(string.printable, max_size=60))
def test_any_text_parses_or_fails_with_a_config_error(text: str) -> None:
    try:
        parse_filter(text)
    except ConfigError as exc:
        assert "slice filter" in exc.message
    # any other exception fails the test


def test_deep_nesting_is_refused_not_a_recursion_error() -> None:
    with pytest.raises(ConfigError, match="nests deeper"):
        parse_filter("(" * 500 + "a == 1" + ")" * 500)
    with pytest.raises(ConfigError, match="nests deeper"):
        parse_filter("not " * 100 + "a == 1")


@pytest.mark.parametrize(("text", "expected"), [
    ("a ==", "at the end: expected a value"),
    ("a = 1", "at character 3"),
    ("a < 1e999", "expected a finite number"),
    ("contract is b", "expected 'missing'"),
    ("tenure < 3 and", "expected a column name"),
    ("a in [1, 2", "expected ',' or ']'"),
])
def test_malformed_filters_name_the_position_and_what_was_expected(text: str,
                                                                    expected: str) -> None:
    import re

    with pytest.raises(ConfigError, match=re.escape(expected)):
        parse_filter(text)


FRAME = pd.DataFrame({
    "contract": ["month-to-month", "one-year", None, "month-to-month", "two-year"],
    "tenure": [3.0, 20.0, 5.0, None, 40.0],
    "senior": [0, 1, 0, 1, 0],
    "monthly charges": [10.0, 20.0, 30.0, 40.0, 50.0],
})


@pytest.mark.parametrize(("text", "rows"), [
    ("contract == 'month-to-month'", [0, 3]),
    ("contract != 'month-to-month'", [1, 4]),  # a missing value matches no comparison
    ("contract is missing", [2]),
    ("tenure is not missing and tenure < 10", [0, 2]),
    ("contract in ['one-year', \"two-year\"]", [1, 4]),
    ("contract not in ['one-year']", [0, 3, 4]),
    ("not (tenure >= 10)", [0, 2, 3]),
    ("senior == 1 or `monthly charges` > 45", [1, 3, 4]),
    ("senior == true", [1, 3]),
])
def test_select_matches_the_documented_semantics(text: str, rows: list[int]) -> None:
    assert np.flatnonzero(select(parse_filter(text), FRAME)).tolist() == rows


@pytest.mark.parametrize(("text", "message"), [
    ("region == 'north'", "column 'region', which the data does not have"),
    ("tenure == 'long'", "holds numbers; compare it with a number"),
    ("contract < 3", "holds text; it can only be compared with == != or in"),
])
def test_filters_on_the_wrong_column_or_type_say_so(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        select(parse_filter(text), FRAME)


@BOUNDED
@given(st.lists(st.floats(-50, 50, allow_nan=False), min_size=1, max_size=30),
       st.sampled_from(OPS), st.floats(-50, 50, allow_nan=False))
def test_numeric_comparisons_agree_with_python(values: list[float], op: str,
                                               bound: float) -> None:
    import operator

    fn = {"==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le,
          ">": operator.gt, ">=": operator.ge}[op]
    mask = select(Compare("x", op, bound), pd.DataFrame({"x": values}))
    assert mask.tolist() == [fn(v, bound) for v in values]


# -- cutting rows into slices ------------------------------------------------------------------

def test_columns_bins_and_filters_give_stable_keys() -> None:
    specs = parse_slices([{"column": "contract"}, {"column": "tenure", "bins": [10, 30]},
                          {"name": "short", "where": "tenure < 10"}])
    keys = [(k, int(m.sum())) for s in specs for k, m in s.groups(FRAME)]
    assert keys == [
        ("contract=month-to-month", 2), ("contract=one-year", 1), ("contract=two-year", 1),
        ("contract=missing", 1),
        ("tenure=(-inf, 10)", 2), ("tenure=[10, 30)", 1), ("tenure=[30, inf)", 1),
        ("tenure=missing", 1),
        ("short", 2),
    ]
    assert SliceSpec(column="senior").groups(FRAME)[1][0] == "senior=1"
    with pytest.raises(ConfigError, match="holds text, so it cannot be cut into bins"):
        SliceSpec(column="contract", bins=(1.0,)).groups(FRAME)
    with pytest.raises(ConfigError, match="slice column 'region' is not in the data"):
        SliceSpec(column="region").groups(FRAME)



def test_a_column_with_many_values_keeps_the_largest_and_says_so() -> None:
    """Evaluation and live slices share this cut (SliceSpec.capped_groups)."""
    from mlharbor.evaluation.slices import MAX_LEVELS

    ids = [f"c{i:03d}" for i in range(MAX_LEVELS + 10) for _ in range(1 + (i == 7) * 5)]
    frame = pd.DataFrame({"customer": ids})
    groups, note = SliceSpec(column="customer").capped_groups(frame)
    assert len(groups) == MAX_LEVELS and groups[0][0] == "customer=c007"
    assert note == f"customer has {MAX_LEVELS + 10} values; the {MAX_LEVELS} largest are reported"
    few, none = SliceSpec(column="customer").capped_groups(frame.head(5))
    assert [k for k, _m in few] == ["customer=c000", "customer=c001", "customer=c002",
                                    "customer=c003", "customer=c004"] and none is None

def _binary_case(rows: int = 600, seed: int = 1) -> tuple[pd.DataFrame, np.ndarray,
                                                        np.ndarray, np.ndarray]:
    """Segment a (4/5 of rows) predicted well, segment b no better than chance, and a tiny
    segment c (below MIN_ROWS) predicted all wrong."""
    rng = np.random.default_rng(seed)
    segment = rng.choice(["a", "b"], size=rows, p=[0.8, 0.2]).astype(object)
    segment[:MIN_ROWS - 5] = "c"
    y = rng.integers(0, 2, size=rows)
    y_pred = y.copy()
    flip = rng.random(rows) < 0.05
    y_pred[flip] = 1 - y_pred[flip]
    b = segment == "b"
    y_pred[b] = rng.integers(0, 2, size=int(b.sum()))
    y_pred[segment == "c"] = 1 - y[segment == "c"]
    proba = np.column_stack([1.0 - y_pred * 0.8 - 0.1, y_pred * 0.8 + 0.1])
    return pd.DataFrame({"segment": segment}), y, y_pred, proba


def test_every_metric_per_slice_with_its_ci_and_n_and_the_bad_slice_flagged() -> None:
    from mlharbor.evaluation.metrics import compute_metrics

    frame, y, y_pred, proba = _binary_case()
    target = Target("classification", (0, 1), 1)
    overall = compute_metrics(y, y_pred, proba, target)
    report = evaluate_slices([SliceSpec(column="segment")], frame, y, y_pred, proba, target,
                             "f1", overall, resamples=200, seed=0)
    by_key = {r.key: r for r in report.results}
    assert set(by_key) == {"segment=a", "segment=b", "segment=c"}
    a, b, c = by_key["segment=a"], by_key["segment=b"], by_key["segment=c"]
    assert a.rows + b.rows + c.rows == len(y)
    for result in (a, b):
        assert set(result.metrics) == set(CLASSIFICATION_METRICS)
        low, high = result.ci["f1"]
        assert low <= result.metrics["f1"] <= high
    mask = (frame["segment"] == "b").to_numpy()
    assert b.metrics == pytest.approx(compute_metrics(y[mask], y_pred[mask], proba[mask],
                                                      target))
    assert b.flagged and not a.flagged
    assert c.rows < MIN_ROWS and not c.judged and not c.flagged  # too few rows to judge
    assert report.to_dict()["flagged"] == ["segment=b"]
    assert "at least 30 rows" in report.to_dict()["rule"]



def test_a_one_class_slice_the_model_gets_right_is_not_flagged_nor_scored_zero() -> None:
    """Every row of segment 'low' is negative and predicted negative: recall, precision and
    F1 have no value there (scikit-learn answers 0.0), so they are left out rather than
    flagging, or failing the gates of, a slice the model gets entirely right."""
    from mlharbor.evaluation.gates import Evidence, evaluate_gates, parse_gate
    from mlharbor.evaluation.metrics import compute_metrics

    rng = np.random.default_rng(7)
    y = np.concatenate([rng.integers(0, 2, size=400), np.zeros(100, dtype=int)])
    y_pred = np.where(rng.random(500) < 0.1, 1 - y, y)
    y_pred[400:] = 0
    segment = np.array(["mixed"] * 400 + ["low"] * 100, dtype=object)
    proba = np.column_stack([1.0 - y_pred * 0.8 - 0.1, y_pred * 0.8 + 0.1])
    target = Target("classification", (0, 1), 1)
    overall = compute_metrics(y, y_pred, proba, target)
    report = evaluate_slices([SliceSpec(column="segment")], pd.DataFrame({"segment": segment}),
                             y, y_pred, proba, target, "f1", overall, resamples=100)
    low = {r.key: r for r in report.results}["segment=low"]
    assert low.metrics["accuracy"] == 1.0 and not low.flagged and not report.flagged
    assert not {"f1", "recall", "precision", "roc_auc", "f1_macro"} & set(low.metrics)
    assert set(low.ci) <= set(low.metrics)
    evidence = Evidence(primary="f1", holdout=overall, cv_mean={}, baseline_holdout={},
                        baseline_test={}, slices=report.evidence())
    [verdict] = evaluate_gates([parse_gate("f1[segment=low] >= 0.6", "classification")],
                               evidence)
    assert not verdict.passed and "not defined on slice segment=low" in verdict.detail

def test_a_slice_worse_by_less_than_the_margin_or_within_noise_is_not_flagged() -> None:
    from mlharbor.evaluation.metrics import compute_metrics

    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, size=800)
    y_pred = np.where(rng.random(800) < 0.1, 1 - y, y)
    segment = np.where(np.arange(800) % 2 == 0, "even", "odd")
    target = Target("classification", (0, 1), 1)
    overall = compute_metrics(y, y_pred, None, target)
    report = evaluate_slices([SliceSpec(column="segment")], pd.DataFrame({"segment": segment}),
                             y, y_pred, None, target, "accuracy", overall, resamples=100)
    assert not report.flagged
    assert all(r.judged for r in report.results)


def test_regression_errors_are_flagged_when_higher() -> None:
    y = np.linspace(0, 10, 400)
    y_pred = y + np.where(np.arange(400) < 100, 3.0, 0.1)
    target = Target("regression")
    frame = pd.DataFrame({"part": np.where(np.arange(400) < 100, "bad", "good")})
    from mlharbor.evaluation.metrics import compute_metrics

    overall = compute_metrics(y, y_pred, None, target)
    report = evaluate_slices([SliceSpec(column="part")], frame, y, y_pred, None, target,
                             "rmse", overall, resamples=100)
    assert [r.key for r in report.flagged] == ["part=bad"]


# -- slice gates -------------------------------------------------------------------------------

slice_keys = st.text(string.ascii_letters + string.digits + "=-_.,()[] '", min_size=1,
                     max_size=25).filter(lambda s: s.strip() and "]" not in s.strip()[-1:])


@BOUNDED
@given(st.sampled_from(CLASSIFICATION_METRICS), slice_keys,
       st.sampled_from([">=", ">", "<=", "<", "=="]),
       st.floats(0, 1, allow_nan=False).map(lambda v: round(v, 4)))
def test_slice_gate_grammar_round_trips(metric: str, key: str, op: str, value: float) -> None:
    gate = parse_gate(f"{metric}[{key}] {op} {value}", "classification")
    assert (gate.kind, gate.metric, gate.op, gate.value) == ("threshold", metric, op, value)
    assert gate.slice is not None and slice_key(gate.slice) == slice_key(key)


def test_slice_gates_keep_the_value_case_and_refuse_cv_and_unknown_metrics() -> None:
    gate = parse_gate("F1[Contract = Month-to-month] >= 0.6", "classification")
    assert gate.slice == "Contract = Month-to-month" and gate.metric == "f1"
    with pytest.raises(ConfigError, match=r"drop 'cv\.'"):
        parse_gate("cv.f1[a=b] >= 0.5", "classification")
    with pytest.raises(ConfigError, match="Unknown classification metric 'rmse'"):
        parse_gate("rmse[a=b] < 3", "classification")
    with pytest.raises(ConfigError, match=r"f1\[contract=month-to-month\] >= 0\.6"):
        parse_gate("f1[a=b] >= ", "classification")  # the error lists the slice form


def test_slice_gates_are_judged_on_the_named_slice_only() -> None:
    evidence = Evidence(
        primary="f1", holdout={"f1": 0.8}, cv_mean={}, baseline_holdout={}, baseline_test={},
        slices={"contract=month-to-month": SliceEvidence("contract=month-to-month", 120,
                                                         {"f1": 0.55}),
                "contract=two-year": SliceEvidence("contract=two-year", 40, {})})
    gates = [parse_gate(t, "classification") for t in (
        "f1 >= 0.6", "f1[CONTRACT=Month-To-Month] >= 0.6", "f1[contract=month-to-month] >= 0.5",
        "f1[contract=one-year] >= 0.1", "f1[contract=two-year] >= 0.1")]
    verdicts = evaluate_gates(gates, evidence)
    assert [v.passed for v in verdicts] == [True, False, True, False, False]
    assert "slice contract=month-to-month (n = 120) = 0.5500" in verdicts[1].detail
    assert "no slice 'contract=one-year'" in verdicts[3].detail
    assert "contract=two-year" in verdicts[3].detail  # lists the known slices
    assert "not defined on slice contract=two-year (n = 40)" in verdicts[4].detail


def test_a_slice_gate_must_name_a_slice_the_recipe_defines() -> None:
    specs = parse_slices([{"column": "contract"}, {"name": "new", "where": "tenure < 3"}])
    ok = [parse_gate(t, "classification") for t in
          ("f1[contract=anything] >= 0.1", "f1[NEW] >= 0.1", "f1 >= 0.2")]
    check_slice_gates(ok, specs)
    with pytest.raises(ConfigError, match=r"names the slice 'region=north'.*defined: "
                                          r"contract=\.\.\., new"):
        check_slice_gates([parse_gate("f1[region=north] >= 0.1", "classification")], specs)
    assert math.isclose(ok[0].value, 0.1)
