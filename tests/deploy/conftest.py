"""A registry holding one small real model (churn@champion) for every deploy test."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mlharbor.settings import Settings

MODEL = "churn"


def churn_rows(n: int, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "tenure": rng.integers(0, 72, n).astype(np.int64),
        "charges": rng.normal(70.0, 20.0, n),
        "plan": rng.choice(["basic", "plus", "pro"], n),
    })


@dataclass
class Deployed:
    settings: Settings
    registry: Any
    version: Any
    rows: list[dict[str, Any]]
    expected: list[Any]
    expected_proba: list[list[float]]


def _register(home: Path) -> Deployed:
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    from mlharbor.bootstrap import open_registry
    from mlharbor.registry.bundles import load_predictor, register_model

    settings = Settings(home=home)
    train = churn_rows(300)
    labels = ((train["tenure"] < 20) & (train["plan"] != "pro")).astype(int)
    model = Pipeline([
        ("pre", ColumnTransformer([("num", StandardScaler(), ["tenure", "charges"]),
                                   ("cat", OneHotEncoder(handle_unknown="ignore"), ["plan"])])),
        ("clf", LogisticRegression(max_iter=500)),
    ]).fit(train, labels)
    registry = open_registry(settings)
    result = register_model(registry, MODEL, model, settings=settings, sample_input=train[:5],
                            training_data=train, metrics={"accuracy": 0.9})
    registry.set_alias(MODEL, "champion", result.version.version)
    version = registry.get_version(f"{MODEL}@champion")
    test = churn_rows(5, seed=11)
    rows = [{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()}
            for r in test.to_dict(orient="records")]
    predictor = load_predictor(registry, f"{MODEL}@champion", settings)
    return Deployed(settings, registry, version, rows,
                    predictor.predict(rows).tolist(), predictor.predict_proba(rows).tolist())


@pytest.fixture(scope="session")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    """churn@champion registered once per session in a temporary home."""
    found = _register(tmp_path_factory.mktemp("deploy-registry") / "home")
    try:
        yield found
    finally:
        found.registry.close()
