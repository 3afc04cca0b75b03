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

    def describe(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "train_rows": len(self.train),
            "holdout_rows": len(self.holdout),
            "folds": len(self.folds),
        }


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
) -> SplitPlan:
    """Split positions of ``frame`` into training and holdout, then training into folds."""
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
    positions = np.arange(len(frame))
    y = frame[target].to_numpy()
    try:
        if strategy == "time":
            if not time_column:
                raise InvalidInputError(
                    "The time strategy needs data.time_column to order the rows; none is set."
                )
            order = np.argsort(_time_values(frame[time_column]), kind="stable")
            cut = round(len(order) * (1 - holdout))
            train, test = order[:cut], order[cut:]
            inner = TimeSeriesSplit(n_splits=folds).split(train)
        elif strategy == "group":
            groups = frame[group_column].to_numpy()
            outer = GroupShuffleSplit(n_splits=1, test_size=holdout, random_state=seed)
            train, test = next(outer.split(positions, y, groups))
            inner = GroupKFold(n_splits=folds).split(train, y[train], groups[train])
        else:
            stratify = y if strategy == "stratified" else None
            train, test = train_test_split(
                positions, test_size=holdout, random_state=seed, stratify=stratify
            )
            train, test = np.sort(train), np.sort(test)
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
    return SplitPlan(strategy, np.asarray(train), np.asarray(test), fold_list)


def _time_values(series: pd.Series) -> Any:
    import pandas as pd

    if pd.api.types.is_numeric_dtype(series):
        return series.to_numpy()
    return pd.to_datetime(series, errors="coerce", format="mixed").to_numpy()
