"""Naive baselines every candidate must beat: majority or stratified guesses, mean or median."""

from __future__ import annotations

from typing import Any

from mlharbor.core.errors import ConfigError

CLASSIFICATION_BASELINES = ("majority", "stratified")
REGRESSION_BASELINES = ("mean", "median")


def baseline_estimator(task: str, strategy: str = "auto", seed: int = 0) -> tuple[str, Any]:
    """``(strategy, unfitted estimator)``; ``auto`` is majority (classes) or mean (numbers)."""
    from sklearn.dummy import DummyClassifier, DummyRegressor

    if task == "classification":
        strategy = "majority" if strategy == "auto" else strategy
        if strategy not in CLASSIFICATION_BASELINES:
            raise ConfigError(
                f"Baseline {strategy!r} does not fit classification; expected one of "
                f"{', '.join(CLASSIFICATION_BASELINES)}.",
                field="metrics.baseline",
            )
        sk = "most_frequent" if strategy == "majority" else "stratified"
        return strategy, DummyClassifier(strategy=sk, random_state=seed)
    strategy = "mean" if strategy == "auto" else strategy
    if strategy not in REGRESSION_BASELINES:
        raise ConfigError(
            f"Baseline {strategy!r} does not fit regression; expected one of "
            f"{', '.join(REGRESSION_BASELINES)}.",
            field="metrics.baseline",
        )
    return strategy, DummyRegressor(strategy=strategy)
