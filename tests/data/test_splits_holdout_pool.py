"""The holdout limited to some rows (``plan_splits(holdout_from=...)``): a retraining job
draws it from the rows the champion never trained on, so these properties are what keeps the
champion comparison honest."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlharbor.core.errors import InvalidInputError
from mlharbor.data.splits import SplitPlan, plan_splits

STRATEGIES = ["stratified", "kfold", "group", "time"]


def _frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"y": rng.integers(0, 2, n), "g": rng.integers(0, max(n // 6, 4), n),
                         "t": rng.permutation(n)})


def _plan(frame: pd.DataFrame, strategy: str, mask: object = None) -> SplitPlan:
    return plan_splits(frame, "y", task="classification", strategy=strategy, holdout=0.25,
                       folds=3, seed=7, group_column="g", time_column="t", holdout_from=mask)


@settings(derandomize=True, max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(40, 240), seed=st.integers(0, 10_000),
       share=st.floats(0.2, 1.0), strategy=st.sampled_from(STRATEGIES))
def test_the_holdout_comes_only_from_the_allowed_rows(n: int, seed: int, share: float,
                                                      strategy: str) -> None:
    frame = _frame(n, seed)
    mask = np.random.default_rng(seed + 1).random(n) < share
    plan = _plan(frame, strategy, mask)
    train, holdout = set(plan.train.tolist()), set(plan.holdout.tolist())
    assert train.isdisjoint(holdout)
    assert train | holdout == set(range(n))  # every row is used, once
    if plan.holdout_note is None:
        assert plan.holdout_pool is not None
        assert holdout <= set(np.flatnonzero(mask).tolist())
        assert set(np.flatnonzero(~mask).tolist()) <= train  # the rest always trains
        assert set(frame.y.iloc[sorted(holdout)]) == set(frame.y)  # every class is scored
    else:  # the allowed rows could not make a holdout: the split without a mask, said why
        assert plan.holdout_pool is None and "drawn from every row" in plan.holdout_note
        unlimited = _plan(frame, strategy)
        np.testing.assert_array_equal(plan.holdout, unlimited.holdout)
    if strategy == "group":
        assert set(frame.g.iloc[sorted(train)]).isdisjoint(frame.g.iloc[sorted(holdout)])
    if strategy == "time":  # never trained on its holdout's future
        assert frame.t.iloc[sorted(train)].max() < frame.t.iloc[sorted(holdout)].min()
    for inner_train, inner_test in plan.folds:
        assert set(inner_train.tolist()).isdisjoint(inner_test.tolist())
        assert max(inner_train.max(), inner_test.max()) < len(plan.train)


def test_new_rows_missing_a_class_or_all_before_the_champions_leave_the_holdout_unlimited(
        ) -> None:
    """A holdout of the new rows alone that could not score every class, or (time) that
    would come before rows the model trains on, is not used: the plain split is, with the
    reason recorded in the report."""
    frame = _frame(300, 5)
    one_class = (frame.y == 1).to_numpy()  # the new rows are all of class 1
    plan = _plan(frame, "stratified", one_class)
    assert plan.holdout_pool is None and "class(es) 0" in str(plan.holdout_note)
    assert "holdout_note" in plan.describe()
    np.testing.assert_array_equal(plan.holdout, _plan(frame, "stratified").holdout)
    single = one_class.copy()
    single[np.flatnonzero(frame.y == 0)[0]] = True  # class 0 once: cannot stratify
    assert "single row" in str(_plan(frame, "stratified", single).holdout_note)
    early = (frame.t < 100).to_numpy()  # the new rows all precede the champion's
    assert "too few" in str(_plan(frame, "time", early).holdout_note)
    late = (frame.t >= 200).to_numpy()
    timed = _plan(frame, "time", late)
    assert timed.holdout_pool == 100 and set(frame.t.iloc[timed.holdout]) >= {299}


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_row_allowed_splits_exactly_as_without_a_mask(strategy: str) -> None:
    """Versions trained before the mask existed reproduce: no mask and an all-true mask give
    the same split, fold for fold."""
    frame = _frame(300, 3)
    plain, masked = _plan(frame, strategy), _plan(frame, strategy, np.ones(300, dtype=bool))
    np.testing.assert_array_equal(plain.train, masked.train)
    np.testing.assert_array_equal(plain.holdout, masked.holdout)
    for (a, b), (c, d) in zip(plain.folds, masked.folds, strict=True):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, d)
    assert "holdout_pool_rows" not in plain.describe()
    assert masked.describe()["holdout_pool_rows"] == 300


def test_a_mask_of_the_wrong_length_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="3 entries for 300 rows"):
        _plan(_frame(300, 1), "stratified", np.ones(3, dtype=bool))
