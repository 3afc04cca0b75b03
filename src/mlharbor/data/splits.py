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

    def describe(self) -> dict[str, Any]:
        described: dict[str, Any] = {
            "strategy": self.strategy,
            "train_rows": len(self.train),
            "holdout_rows": len(self.holdout),
            "folds": len(self.folds),
        }
        if self.holdout_pool is not None:
            described["holdout_pool_rows"] = self.holdout_pool
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
    the ``group`` strategy a group with any row outside the mask is never held out.
    """
    import numpy as np
    from sklearn.model_selection import (
        GroupKFold,
        GroupShuffleSplit,
        KFold,
        StratifiedKFold,
        TimeSeriesSplit,
        train_test_split,
    )

    strategy = resolve_strategy(strategy, task)
    y = frame[target].to_numpy()
    eligible = np.ones(len(frame), dtype=bool)
    if holdout_from is not None:
        eligible = np.asarray(holdout_from, dtype=bool)
        if eligible.shape != (len(frame),):
            raise InvalidInputError(
                f"The holdout mask has {eligible.size} entries for {len(frame)} rows.")
        if strategy == "group" and group_column:
            kept = frame[group_column].to_numpy()
            eligible &= ~np.isin(kept, kept[~eligible])
    positions = np.flatnonzero(eligible)  # the rows the holdout is drawn from
    fixed = np.flatnonzero(~eligible)  # rows that train whatever the split
    try:
        if strategy == "time":
            if not time_column:
                raise InvalidInputError(
                    "The time strategy needs data.time_column to order the rows; none is set."
                )
            times = _time_values(frame[time_column])
            order = positions[np.argsort(times[positions], kind="stable")]
            cut = round(len(order) * (1 - holdout))
            train, test = order[:cut], order[cut:]
            if len(fixed):  # the past the holdout may not come from: train on it first
                train = np.concatenate([fixed, train])
                train = train[np.argsort(times[train], kind="stable")]
            inner = TimeSeriesSplit(n_splits=folds).split(train)
        elif strategy == "group":
            groups = frame[group_column].to_numpy()
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
    except ValueError as exc:
        raise InvalidInputError(
            f"Cannot make {folds} {strategy} folds with a {holdout:.0%} holdout from "
            f"{len(frame)} rows: {exc}",
            hint="Use fewer folds, a smaller holdout, or more data.",
        ) from exc
    return SplitPlan(strategy, np.asarray(train), np.asarray(test), fold_list,
                     None if holdout_from is None else len(positions))


def _time_values(series: pd.Series) -> Any:
    import pandas as pd

    if pd.api.types.is_numeric_dtype(series):
        return series.to_numpy()
    return pd.to_datetime(series, errors="coerce", format="mixed").to_numpy()
