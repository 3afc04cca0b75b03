"""Holdout and k-fold splits, fixed once so every model is scored on exactly the same rows.

Strategies: ``stratified`` (classification default), ``kfold`` (regression default), ``group``
(no group on both sides of a split) and ``time`` (train on the past, validate on the future).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from mlharbor.core.errors import InvalidInputError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

Split = tuple["np.ndarray[Any, Any]", "np.ndarray[Any, Any]"]


@dataclasses.dataclass(frozen=True)
class SplitPlan:
    strategy: str
    train: np.ndarray[Any, Any]  # positions of the training part in the full frame
    holdout: np.ndarray[Any, Any]
    folds: list[Split]  # positions inside the training part
    holdout_pool: int | None = None  # rows the holdout could come from, when limited
    holdout_note: str | None = None  # why a limit asked for was not applied

    def describe(self) -> dict[str, Any]:
        described: dict[str, Any] = {
            "strategy": self.strategy,
            "train_rows": len(self.train),
            "holdout_rows": len(self.holdout),
            "folds": len(self.folds),
        }
        if self.holdout_pool is not None:
            described["holdout_pool_rows"] = self.holdout_pool
        if self.holdout_note is not None:
            described["holdout_note"] = self.holdout_note
        return described


def resolve_strategy(strategy: str, task: str) -> str:
    if strategy != "auto":
        return strategy
    return "stratified" if task == "classification" else "kfold"


def plan_splits(
    frame: pd.DataFrame,
    target: str,
    *,
    task: str,
    strategy: str,
    holdout: float,
    folds: int,
    seed: int,
    group_column: str | None = None,
    time_column: str | None = None,
    holdout_from: Any = None,
) -> SplitPlan:
    """Split positions of ``frame`` into training and holdout, then training into folds.

    ``holdout_from`` (a boolean mask over the rows) limits the holdout to those rows: it is
    drawn from them with the same strategy and fraction, and every other row trains. With
    the ``group`` strategy a group with any row outside the mask is never held out; with
    ``time`` only rows later than every row outside it are. When those rows cannot make a
    holdout that scores every class (or group), the split is the one without a mask, and
    ``holdout_note`` says why.
    """
    import numpy as np

    strategy = resolve_strategy(strategy, task)
    y = frame[target].to_numpy()
    times = None
    if strategy == "time":
        if not time_column:
            raise InvalidInputError(
                "The time strategy needs data.time_column to order the rows; none is set.")
        times = _time_values(frame[time_column])
    groups = frame[group_column].to_numpy() if strategy == "group" and group_column else None
    every = np.ones(len(frame), dtype=bool)
    note = None
    if holdout_from is not None:
        pool = np.asarray(holdout_from, dtype=bool)
        if pool.shape != (len(frame),):
            raise InvalidInputError(
                f"The holdout mask has {pool.size} entries for {len(frame)} rows.")
        pool = _usable_pool(pool, groups, times)
        problem = _pool_problem(pool, y, strategy, task, groups, holdout)
        if problem is None:
            try:
                plan = _split(y, pool, strategy, holdout, folds, seed, groups, times)
            except ValueError as exc:
                problem = f"they cannot be split ({exc})"
            else:
                missed = set(np.unique(y).tolist()) - set(np.unique(y[plan.holdout]).tolist())
                if task != "classification" or not missed:
                    return dataclasses.replace(plan, holdout_pool=int(pool.sum()))
                problem = (f"the holdout drawn would hold no row of class(es) "
                           f"{', '.join(sorted(map(str, missed)))}")
        note = (f"The holdout was drawn from every row: of the rows it was to come from, "
                f"{problem}.")
    try:
        plan = _split(y, every, strategy, holdout, folds, seed, groups, times)
    except ValueError as exc:
        raise InvalidInputError(
            f"Cannot make {folds} {strategy} folds with a {holdout:.0%} holdout from "
            f"{len(frame)} rows: {exc}",
            hint="Use fewer folds, a smaller holdout, or more data.",
        ) from exc
    return dataclasses.replace(plan, holdout_note=note)


def _usable_pool(pool: Any, groups: Any, times: Any) -> Any:
    """The rows of ``pool`` a holdout may really hold: a group with any row outside the pool
    trains whole (no group on both sides), and with the time strategy only rows later than
    every row outside the pool (a model never trains on its holdout's future)."""
    import numpy as np

    pool = pool.copy()
    if groups is not None:
        pool &= ~np.isin(groups, groups[~pool])
    if times is not None and (~pool).any():
        pool &= times > times[~pool].max()
    return pool


def _pool_problem(pool: Any, y: Any, strategy: str, task: str, groups: Any,
                  holdout: float) -> str | None:
    """Why a holdout from ``pool`` alone would judge badly (None: it would not)."""
    import numpy as np

    size = int(pool.sum())
    if round(size * holdout) < 1:
        return f"{size} can be held out, too few for a {holdout:.0%} holdout"
    if task == "classification":
        classes, counts = np.unique(y[pool], return_counts=True)
        missing = sorted(map(str, set(np.unique(y).tolist()) - set(classes.tolist())))
        if missing:
            return f"none is of class(es) {', '.join(missing)}, which the holdout must score"
        if strategy == "stratified" and counts.min() < 2:
            return "a class has a single row, too few to stratify"
    if groups is not None and len(np.unique(groups[pool])) < 2:
        return "all are of one group"
    return None


def _split(y: Any, pool: Any, strategy: str, holdout: float, folds: int, seed: int,
           groups: Any, times: Any) -> SplitPlan:
    """The split with its holdout drawn from the ``pool`` rows (every other row trains)."""
    import numpy as np
    from sklearn.model_selection import (
        GroupKFold,
        GroupShuffleSplit,
        KFold,
        StratifiedKFold,
        TimeSeriesSplit,
        train_test_split,
    )

    positions = np.flatnonzero(pool)  # the rows the holdout is drawn from
    fixed = np.flatnonzero(~pool)  # rows that train whatever the split
    if strategy == "time":
        order = positions[np.argsort(times[positions], kind="stable")]
        cut = round(len(order) * (1 - holdout))
        train, test = order[:cut], order[cut:]
        if len(fixed):  # all earlier than the pool (see _usable_pool): the oldest training
            train = np.concatenate([fixed[np.argsort(times[fixed], kind="stable")], train])
        inner = TimeSeriesSplit(n_splits=folds).split(train)
    elif strategy == "group":
        outer = GroupShuffleSplit(n_splits=1, test_size=holdout, random_state=seed)
        chosen_train, chosen_test = next(outer.split(positions, y[positions],
                                                     groups[positions]))
        train, test = positions[chosen_train], positions[chosen_test]
        if len(fixed):
            train = np.sort(np.concatenate([fixed, train]))
        inner = GroupKFold(n_splits=folds).split(train, y[train], groups[train])
    else:
        stratify = y[positions] if strategy == "stratified" else None
        train, test = train_test_split(
            positions, test_size=holdout, random_state=seed, stratify=stratify
        )
        train, test = np.sort(np.concatenate([fixed, train])), np.sort(test)
        if strategy == "stratified":
            splitter: Any = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        else:
            splitter = KFold(n_splits=folds, shuffle=True, random_state=seed)
        inner = splitter.split(train, y[train])
    fold_list = [(np.asarray(a), np.asarray(b)) for a, b in inner]
    return SplitPlan(strategy, np.asarray(train), np.asarray(test), fold_list)


def _time_values(series: pd.Series) -> Any:
    import pandas as pd

    if pd.api.types.is_numeric_dtype(series):
        return series.to_numpy()
    return pd.to_datetime(series, errors="coerce", format="mixed").to_numpy()
