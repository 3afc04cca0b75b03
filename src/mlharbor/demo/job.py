"""The demo loop on the embedded default (SQLite + local files)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlharbor.settings import Settings

MODEL_NAME = "churn"


def dataset_path() -> Path:
    return Path(str(resources.files("mlharbor.demo").joinpath("churn.csv")))


def recipe_path() -> Path:
    return Path(str(resources.files("mlharbor.demo").joinpath("recipe.yaml")))


def run_demo(settings: Settings, *, serve: bool = True) -> None:
    """Train the demo recipe, register the winner, print a key, then serve it."""
    import pandas as pd
    from rich.console import Console

    from mlharbor.bootstrap import open_registry
    from mlharbor.cli.models import _version_rows
    from mlharbor.cli.output import print_kv
    from mlharbor.cli.train import _print_train_result, _RichProgress
    from mlharbor.core.errors import ConflictError
    from mlharbor.pipelines.train_job import train

    console = Console()
    registry = open_registry(settings)
    try:
        with _RichProgress() as progress:
            result = train(recipe_path(), registry=registry, settings=settings,
                           progress=progress, actor="demo")
        _print_train_result(result)
        if not result.passed:
            raise ConflictError(
                f"The demo model {result.version.ref} failed its gates; nothing to serve.")
        version = registry.get_version(f"{MODEL_NAME}@champion")
        print_kv(f"Serving {version.ref}", _version_rows(version))
        key = _print_demo_key(registry, console)
    finally:
        registry.close()
    console.print(f"Home: {settings.home}   Reports: {settings.home / 'reports'}")
    console.print("Look around: `.venv/bin/mlharbor models list`, "
                  f"`.venv/bin/mlharbor models show {MODEL_NAME}@champion`, "
                  "`.venv/bin/mlharbor server` (control plane, /docs, /ui).")
    if serve:
        row = pd.read_csv(dataset_path()).drop(columns=["churn", "customer_id"]).head(1)
        _serve_demo(settings, key, row, console)


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
