"""Which home a command uses: a config file found in the working folder's parents or the
user's config folder is honoured, and a command that would start a new, empty home says so."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.support import run_cli


def _clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The environment of a user with no MLHARBOR_* variables and an empty config folder."""
    for name in [n for n in os.environ if n.startswith("MLHARBOR_")]:
        monkeypatch.delenv(name)  # run_cli starts from os.environ
    return {"XDG_CONFIG_HOME": str(tmp_path / "xdg"), "HOME": str(tmp_path / "user")}


def test_a_config_file_in_a_parent_folder_is_honoured(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = _clean_env(tmp_path, monkeypatch)
    project = tmp_path / "project"
    (project / "src" / "deep").mkdir(parents=True)
    (project / "mlharbor.yaml").write_text("home: state\n")
    shown = run_cli("config", "show", env=env, cwd=project / "src" / "deep")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["home"] == str(project / "state")
    # The first run creates that home and says so; later runs, from anywhere in the project,
    # use it quietly.
    first = run_cli("models", "list", "--json", env=env, cwd=project / "src")
    assert first.returncode == 0, first.stderr
    assert f"new, empty home at {project / 'state'}" in first.stderr
    assert str(project / "mlharbor.yaml") in first.stderr
    assert (project / "state" / "mlharbor.db").exists()
    again = run_cli("models", "list", "--json", env=env, cwd=project / "src" / "deep")
    assert again.returncode == 0 and again.stderr == "", again.stderr
    assert not (project / "src" / ".mlharbor").exists()


def test_the_user_config_folder_is_the_fallback(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = _clean_env(tmp_path, monkeypatch)
    (tmp_path / "xdg" / "mlharbor").mkdir(parents=True)
    (tmp_path / "xdg" / "mlharbor" / "config.yaml").write_text(
        f"home: {tmp_path / 'mine'}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shown = run_cli("config", "show", env=env, cwd=elsewhere)
    assert json.loads(shown.stdout)["home"] == str(tmp_path / "mine")
    # A project file is nearer than the user's, and an explicit one wins over both.
    (elsewhere / "mlharbor.toml").write_text('home = "here"\n')
    assert json.loads(run_cli("config", "show", env=env, cwd=elsewhere).stdout)["home"] == str(
        elsewhere / "here")
    explicit = tmp_path / "explicit.yaml"
    explicit.write_text(f"home: {tmp_path / 'named'}\n")
    named = run_cli("--config", str(explicit), "config", "show", env=env, cwd=elsewhere)
    assert json.loads(named.stdout)["home"] == str(tmp_path / "named")


def test_a_new_default_home_is_announced_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = _clean_env(tmp_path, monkeypatch)
    folder = tmp_path / "somewhere"
    folder.mkdir()
    first = run_cli("models", "list", "--json", env=env, cwd=folder)
    assert first.returncode == 0, first.stderr
    lines = first.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("note: using a new, empty home at "
                                                   f"{folder / '.mlharbor'}"), lines
    assert "MLHARBOR_HOME" in lines[0]
    assert json.loads(first.stdout)["items"] == []
    assert run_cli("models", "list", "--json", env=env, cwd=folder).stderr == ""


def test_a_broken_discovered_config_is_one_clear_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = _clean_env(tmp_path, monkeypatch)
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "mlharbor.yaml").write_text("home: [unclosed\n")
    broken = run_cli("models", "list", env=env, cwd=tmp_path / "p")
    assert broken.returncode != 0 and "Traceback" not in broken.stderr
    assert str(tmp_path / "p" / "mlharbor.yaml") in broken.stderr
    assert len(broken.stderr.strip().splitlines()) == 1, broken.stderr
