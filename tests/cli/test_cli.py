"""The CLI as a user runs it: a subprocess of the installed `mlharbor` command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mlharbor.settings import Settings
from tests.support import cli_env, run_cli

HEAVY = ("pandas", "sklearn", "onnxruntime", "sqlalchemy", "fastapi", "starlette", "uvicorn",
         "numpy", "skops", "torch")


def test_import_mlharbor_is_cheap() -> None:
    code = (f"import sys, mlharbor; heavy = {HEAVY!r}; "
            "print([m for m in heavy if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_help_loads_no_heavy_library() -> None:
    code = ("import sys\nfrom mlharbor.cli.main import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            f"heavy = {HEAVY!r}\nprint('HEAVY', [m for m in heavy if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert "HEAVY []" in out and "models" in out


def test_register_list_alias_history(settings: Settings, tmp_path: Path) -> None:
    env = cli_env(settings)
    model = tmp_path / "model.bin"
    model.write_bytes(b"weights")
    first = run_cli("models", "register", "churn", str(model), "--raw", "--tag", "team=risk",
                    env=env)
    assert first.returncode == 0, first.stderr
    assert "Registered churn:1" in first.stdout
    run_cli("models", "register", "churn", str(model), "--raw", env=env)
    assert run_cli("models", "alias", "set", "churn", "champion", "1", "--reason", "first",
                   env=env).returncode == 0
    shown = json.loads(run_cli("models", "show", "churn@champion", "--json", env=env).stdout)
    assert shown["version"] == 1 and shown["aliases"] == ["champion"]
    listed = json.loads(run_cli("models", "list", "--json", env=env).stdout)
    assert listed["items"][0]["aliases"] == {"champion": 1}
    versions = json.loads(run_cli("models", "versions", "churn", "--json", env=env).stdout)
    assert [v["version"] for v in versions["items"]] == [2, 1]
    history = json.loads(run_cli("models", "alias", "history", "churn", "--json",
                                 env=env).stdout)
    assert history[0]["reason"] == "first"
    table = run_cli("models", "versions", "churn", env=env).stdout
    assert "@champion" in table


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["models", "show", "nope"], 3, "does not exist"),
        (["models", "show", "../x"], 2, "not allowed"),
        (["models", "show", "churn:zero"], 2, "positive whole number"),
        (["models", "register", "churn", "/no/such/file"], 2, "neither a file nor a folder"),
        (["models", "alias", "set", "churn", "latest", "1"], 2, "reserved"),
        (["models", "delete", "churn:1", "--yes"], 3, "does not exist"),
        (["models", "nosuchcommand"], 2, "No such command"),
    ],
)
def test_errors_are_one_line_and_non_zero(settings: Settings, args: list[str], code: int,
                                          needle: str) -> None:
    result = run_cli(*args, env=cli_env(settings))
    assert result.returncode == code, (result.stdout, result.stderr)
    assert needle in result.stderr
    assert "Traceback" not in result.stderr
    if code != 2 or "No such command" not in needle:
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_debug_shows_the_traceback(settings: Settings) -> None:
    result = run_cli("--debug", "models", "show", "nope", env=cli_env(settings))
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_aliased_version_delete_names_the_alias(settings: Settings, tmp_path: Path) -> None:
    env = cli_env(settings)
    model = tmp_path / "model.bin"
    model.write_bytes(b"weights")
    run_cli("models", "register", "churn", str(model), "--raw", env=env)
    run_cli("models", "alias", "set", "churn", "champion", "1", env=env)
    for args in (["models", "delete", "churn:1", "--yes"], ["models", "archive", "churn:1"]):
        result = run_cli(*args, env=env)
        assert result.returncode == 4
        assert "alias @champion points to it" in result.stderr


def test_config_show_masks_secrets(tmp_path: Path) -> None:
    env = {"MLHARBOR_HOME": str(tmp_path / "home"),
           "MLHARBOR_DATABASE_URL": "postgresql://app:hunter2-secret@db.internal/mlh",
           "MLHARBOR_SECURITY__MASTER_KEY": "bWFzdGVyLWtleS1zZWNyZXQ="}
    result = run_cli("config", "show", env=env)
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert "hunter2-secret" not in result.stdout and "bWFzdGVyLWtleS1zZWNyZXQ=" not in \
        result.stdout
    assert shown["database_url"] == "postgresql://app:***@db.internal/mlh"
    assert shown["security"]["master_key"] == "***"


def test_config_file_and_env_precedence(tmp_path: Path) -> None:
    config = tmp_path / "mlharbor.yaml"
    config.write_text("server:\n  port: 9001\n  host: 0.0.0.0\n")
    env = {"MLHARBOR_HOME": str(tmp_path / "home"), "MLHARBOR_SERVER__PORT": "9002"}
    shown = json.loads(run_cli("--config", str(config), "config", "show", env=env).stdout)
    assert shown["server"] == {**shown["server"], "port": 9002, "host": "0.0.0.0"}
    bad = tmp_path / "bad.yaml"
    bad.write_text("server:\n  port: not-a-port\n")
    result = run_cli("--config", str(bad), "config", "show", env=env | {
        "MLHARBOR_SERVER__PORT": ""})
    assert result.returncode == 2 and "server.port" in result.stderr
    missing = run_cli("--config", str(tmp_path / "nope.yaml"), "config", "show", env=env)
    assert missing.returncode == 2 and "Cannot read the config file" in missing.stderr
