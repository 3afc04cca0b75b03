"""The demo loop on the embedded default (SQLite + local files)."""

from __future__ import annotations

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


def run_demo(settings: Settings, *, serve: bool = True) -> None:
    import pandas as pd
    from rich.console import Console
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    from mlharbor.bootstrap import open_registry
    from mlharbor.cli.models import _version_rows
    from mlharbor.cli.output import print_kv
    from mlharbor.registry.bundles import register_model

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
    # register_model builds a bundle with a manifest (signature, input example, ONNX parity),
    # which is what serving loads.
    version = register_model(
        registry, MODEL_NAME, model, settings=settings, sample_input=x_train.head(20),
        description="Demo churn model (RandomForest)", metrics=metrics,
        params={"n_estimators": 100, "max_depth": 8},
        lineage={"dataset": "mlharbor/demo/churn.csv", "rows": len(frame)},
    ).version
    registry.set_alias(MODEL_NAME, "champion", version.version, reason="demo")
    version = registry.get_version(f"{MODEL_NAME}@champion")
    print_kv(f"Registered {version.ref}", _version_rows(version))
    key = _print_demo_key(registry, console)
    console.print(f"Home: {settings.home}")
    console.print("Look around: `.venv/bin/mlharbor models list`, "
                  f"`.venv/bin/mlharbor models show {MODEL_NAME}@champion`, "
                  "`.venv/bin/mlharbor server` then http://127.0.0.1:8080/docs")
    if serve:
        _serve_demo(settings, key, x_test.head(1), console)


def _serve_demo(settings: Settings, key: str | None, row: Any, console: Any) -> None:
    """Serve churn@champion until Ctrl-C, after showing how to call it."""
    import json

    from mlharbor.cli.serve import serve_with_monitoring

    host, port = settings.server.host, settings.server.port
    url = f"http://{host}:{port}"
    body = json.dumps(json.loads(row.to_json(orient="records")))
    auth = f'-H "Authorization: Bearer {key}" ' if key else '-H "Authorization: Bearer $KEY" '
    console.print(f"Serving {MODEL_NAME}@champion at {url} (Ctrl-C stops). Try:", markup=False)
    console.print(f"curl -s {auth}-H 'content-type: application/json' "
                  f"{url}/v1/endpoints/{MODEL_NAME}/predict -d '{body}'",
                  markup=False, highlight=False, soft_wrap=True)
    console.print(f"Also: {url}/v2/models/{MODEL_NAME} (Open Inference), {url}/invocations "
                  f"(MLflow), {url}/v1/models/{MODEL_NAME}:predict (KServe), {url}/metrics",
                  markup=False, highlight=False, soft_wrap=True)
    serve_with_monitoring(settings, ref=f"{MODEL_NAME}@champion", json_logs=False)


def _print_demo_key(registry: Any, console: Any) -> str | None:
    """The server needs a key: create a fresh one for the demo admin and show it once."""
    from mlharbor.bootstrap import open_identities

    key = open_identities(registry).demo_admin_key(actor="demo")
    if key is None:
        console.print("An admin already administers this installation; ask them for an API "
                      "key (`mlharbor admin keys create NAME`).")
        return None
    console.print("API key of 'demo-admin' (shown once; earlier demo keys are revoked):")
    console.print(key, markup=False, highlight=False, soft_wrap=True)
    console.print('Send it to `mlharbor server` as a bearer token: curl -H "Authorization: '
                  'Bearer $KEY" http://127.0.0.1:8080/api/v1/models', markup=False)
    return key
