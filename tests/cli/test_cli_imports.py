"""What a cheap ``mlharbor`` command imports: its own stage, nothing heavy it does not use.

Each command runs as a user runs it, under ``python -X importtime`` (every module the process
imports goes to stderr), against a home whose database is up to date (a new one is migrated
first, which loads Alembic). ``--help`` must not even open the registry's
database layer; commands that read the registry may load SQLAlchemy, but none of them loads the
libraries of training, data frames, serving, web frameworks or migrations. These are what a CLI
process would otherwise spend most of its start-up on, in every script and every test that
calls it (the point of subcommands importing their stage lazily: DESIGN.md, cli/).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from mlharbor.settings import Settings
from tests.serving.test_serve_imports import imported
from tests.support import VENV_BIN, cli_env

# Never imported by a command that neither trains, serves, converts nor reads data files.
HEAVY = ("pandas", "numpy", "sklearn", "scipy", "pyarrow", "onnx", "onnxruntime", "skops",
         "fastapi", "starlette", "uvicorn", "strawberry", "httpx", "jinja2", "alembic",
         "mlharbor.training", "mlharbor.evaluation", "mlharbor.data", "mlharbor.formats",
         "mlharbor.serving", "mlharbor.monitoring", "mlharbor.api", "mlharbor.deploy",
         "mlharbor.explain", "mlharbor.compute", "mlharbor.ui")
# Help is text: not even the database layer, the settings tree or Rich.
NOT_FOR_HELP = (*HEAVY, "sqlalchemy", "pydantic_settings", "rich", "mlharbor.registry",
                "mlharbor.settings", "mlharbor.bootstrap", "mlharbor.security")

HELP = [["--help"], ["models", "--help"], ["train", "--help"], ["serve", "--help"],
        ["build", "--help"], ["deploy", "--help"], ["monitor", "--help"], ["keys", "--help"]]
READS_REGISTRY = [["models", "list", "--json"], ["endpoints", "list", "--json"],
                  ["runs", "list", "--json"], ["jobs", "list", "--json"],
                  ["policies", "list", "--json"], ["audit", "head"]]


def heavy_imports(args: list[str], settings: Settings, banned: tuple[str, ...]) -> list[str]:
    """Run ``mlharbor ARGS`` under -X importtime; the banned packages (or their submodules)
    it imported."""
    result = subprocess.run([sys.executable, "-X", "importtime", str(VENV_BIN / "mlharbor"),
                             *args], capture_output=True, text=True, timeout=120,
                            env={**cli_env(settings), "PATH": str(VENV_BIN)}, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    modules = imported(result.stderr)
    assert "mlharbor.cli.main" in modules  # the trace is there
    return sorted(m for m in modules if any(m == b or m.startswith(b + ".") for b in banned))


@pytest.mark.parametrize("args", HELP, ids=" ".join)
def test_help_imports_no_database_layer_or_heavy_library(args: list[str],
                                                         settings: Settings) -> None:
    assert heavy_imports(args, settings, NOT_FOR_HELP) == []


@pytest.mark.parametrize("args", READS_REGISTRY, ids=" ".join)
def test_registry_reads_import_no_training_serving_or_data_frames(
        args: list[str], settings: Settings) -> None:
    from mlharbor.bootstrap import open_registry

    open_registry(settings).close()  # an existing, migrated home: the usual case
    assert heavy_imports(args, settings, HEAVY) == []
