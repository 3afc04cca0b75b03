"""The demo loop on the embedded default (SQLite + local files)."""

from __future__ import annotations

import tempfile
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlharbor.settings import Settings

MODEL_NAME = "churn"
TARGET = "churn"
NUMERIC = ["tenure_months", "monthly_charges", "total_charges", "support_calls", "senior"]
CATEGORICAL = ["contract", "internet", "payment_method"]


def dataset_path() -> Path:
    return Path(str(resources.files("mlharbor.demo").joinpath("churn.csv")))


def run_demo(settings: Settings) -> None:
    import pandas as pd
    import skops.io as sio
    from rich.console import Console
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    from mlharbor.cli.models import _version_rows
    from mlharbor.cli.output import print_kv
    from mlharbor.bootstrap import open_registry

    console = Console()
    frame = pd.read_csv(dataset_path())
    features = frame[NUMERIC + CATEGORICAL]
    x_train, x_test, y_train, y_test = train_test_split(
        features, frame[TARGET], test_size=0.2, random_state=7, stratify=frame[TARGET]
    )
    model = Pipeline([
        ("prepare", ColumnTransformer([
            ("num", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), NUMERIC),
            ("cat", OneHotEncoder(handle_unknown="ignore"), CATEGORICAL),
        ])),
        ("model", RandomForestClassifier(n_estimators=100, max_depth=8, random_state=7,
                                         n_jobs=2)),
    ])
    with console.status("Training the demo model ..."):
        model.fit(x_train, y_train)
    predicted = model.predict(x_test)
    metrics = {"accuracy": float(accuracy_score(y_test, predicted)),
               "f1": float(f1_score(y_test, predicted))}
    registry = open_registry(settings)
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(tmp)
        sio.dump(model, bundle / "model.skops")
        version = registry.register_version(
            MODEL_NAME, bundle, description="Demo churn model (RandomForest)",
            metrics=metrics, params={"n_estimators": 100, "max_depth": 8},
            lineage={"dataset": "mlharbor/demo/churn.csv", "rows": len(frame)},
        )
    registry.set_alias(MODEL_NAME, "champion", version.version, reason="demo")
    version = registry.get_version(f"{MODEL_NAME}@champion")
    print_kv(f"Registered {version.ref}", _version_rows(version))
    _print_demo_key(registry, console)
    console.print(f"Home: {settings.home}")
    console.print("Look around: `.venv/bin/mlharbor models list`, "
                  f"`.venv/bin/mlharbor models show {MODEL_NAME}@champion`, "
                  "`.venv/bin/mlharbor server` then http://127.0.0.1:8080/docs")


def _print_demo_key(registry: Any, console: Any) -> None:
    """The server needs a key: create a fresh one for the demo admin and show it once."""
    from mlharbor.bootstrap import open_identities

    key = open_identities(registry).demo_admin_key(actor="demo")
    if key is None:
        console.print("An admin already administers this installation; ask them for an API "
                      "key (`mlharbor admin keys create NAME`).")
        return
    console.print("API key of 'demo-admin' (shown once; earlier demo keys are revoked):")
    console.print(key, markup=False, highlight=False, soft_wrap=True)
    console.print(f"Try: curl -H 'Authorization: Bearer {key[:14]}...' "
                  "http://127.0.0.1:8080/api/v1/models")
