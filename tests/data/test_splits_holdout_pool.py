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
    try:
        plan = _plan(frame, strategy, mask)
    except InvalidInputError:  # too few allowed rows (or groups) for the split: said clearly
        assert strategy == "group" or mask.sum() < 20
        return
    train, holdout = set(plan.train.tolist()), set(plan.holdout.tolist())
    assert train.isdisjoint(holdout)
    assert train | holdout == set(range(n))  # every row is used, once
    assert holdout <= set(np.flatnonzero(mask).tolist())
    assert set(np.flatnonzero(~mask).tolist()) <= train  # the rest always trains
    if strategy == "group":
        assert set(frame.g.iloc[sorted(train)]).isdisjoint(frame.g.iloc[sorted(holdout)])
    for inner_train, inner_test in plan.folds:
        assert set(inner_train.tolist()).isdisjoint(inner_test.tolist())
        assert max(inner_train.max(), inner_test.max()) < len(plan.train)


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
