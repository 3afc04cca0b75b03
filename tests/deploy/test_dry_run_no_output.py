"""``--dry-run`` needs no folder, and ``build --build`` checks for a builder before any work.

A dry run prints the plan (file paths inside the folder a real run would fill) and writes
nothing anywhere, so it needs no ``--output``; a real run without one is one clear line. With
``--build`` (dry run or not) the image builder is looked for first: on a machine without one
the command fails in one line naming the builders looked for and how to get one, before the
build context (hundreds of MB of wheels) is written.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mlharbor.core.errors import InvalidInputError, UnavailableError
from mlharbor.deploy.imagebuild import BUILDERS, find_builder
from tests.deploy.conftest import Deployed
from tests.deploy.test_targets import FILE_TARGETS
from tests.support import cli_env, run_cli


def _files_under(folder: Path) -> list[Path]:
    """Every file under ``folder``, but SQLite's write-ahead log and its index (``-wal``,
    ``-shm``): they live as long as some connection to the database is open, here or in the
    session's registry (open or not depending on what ran before), and are not output."""
    return sorted(p for p in folder.rglob("*") if not p.name.endswith(("-wal", "-shm")))


@pytest.fixture
def cwd(tmp_path: Path) -> Path:
    """An empty working folder: a dry run must leave it empty."""
    folder = tmp_path / "cwd"
    folder.mkdir()
    return folder


def test_build_dry_run_needs_no_output(deployed: Deployed, cwd: Path) -> None:
    env = cli_env(deployed.settings)
    home_before = _files_under(deployed.settings.home)
    result = run_cli("build", "churn@champion", "--dry-run", env=env, cwd=cwd)
    assert result.returncode == 0, result.stderr
    assert "  write  Dockerfile" in result.stdout
    assert "  write  model/ (a registry holding only churn:1)" in result.stdout
    assert "--output folder of a real run" in result.stdout
    assert "dry run: nothing was written or built" in result.stdout
    assert _files_under(cwd) == []
    assert _files_under(deployed.settings.home) == home_before


@pytest.mark.parametrize("target", sorted(FILE_TARGETS))
def test_deploy_dry_run_needs_no_output(deployed: Deployed, cwd: Path, target: str) -> None:
    result = run_cli("deploy", target, "churn@champion", "--dry-run",
                     *FILE_TARGETS[target], env=cli_env(deployed.settings), cwd=cwd)
    assert result.returncode == 0, result.stderr
    writes = [line for line in result.stdout.splitlines() if line.startswith("  write  ")]
    assert writes, result.stdout
    assert all(not line.split()[1].startswith("/") for line in writes)  # paths in the folder
    assert "dry run: nothing was written or created" in result.stdout
    assert _files_under(cwd) == []


def test_kubernetes_dry_run_lists_the_manifests(deployed: Deployed, cwd: Path) -> None:
    result = run_cli("deploy", "kubernetes", "churn@champion", "--dry-run",
                     env=cli_env(deployed.settings), cwd=cwd)
    assert result.returncode == 0, result.stderr
    assert "  write  deployment.yaml" in result.stdout
    assert _files_under(cwd) == []


@pytest.mark.parametrize("command", [["build"], ["deploy", "kubernetes"]])
def test_a_real_run_without_output_is_one_line(deployed: Deployed, cwd: Path,
                                               command: list[str]) -> None:
    result = run_cli(*command, "churn@champion", env=cli_env(deployed.settings), cwd=cwd)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--output" in lines[0] and "--dry-run" in lines[0], lines
    assert "Traceback" not in result.stderr
    assert _files_under(cwd) == []


@pytest.mark.parametrize("extra", [[], ["--dry-run"], ["--push", "--tag",
                                                        "127.0.0.1:5000/team/churn:1"]])
def test_build_without_any_builder_fails_first_in_one_line(
        deployed: Deployed, tmp_path: Path, extra: list[str]) -> None:
    empty = tmp_path / "no-builders"  # PATH holds only this empty folder
    empty.mkdir()
    out = tmp_path / "context"
    env = {**cli_env(deployed.settings), "PATH": str(empty)}
    result = run_cli("build", "churn@champion", "--output", str(out), "--build", *extra,
                     env=env)
    assert result.returncode == 8, result.stderr  # UnavailableError
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    for builder in BUILDERS:
        assert f"{builder} is not on PATH" in lines[0]
    assert "apt-get install buildah" in lines[0]
    assert "will build" not in result.stdout and "  build  " not in result.stdout
    assert not out.exists()


def test_a_chosen_builder_that_is_missing_is_named(deployed: Deployed, tmp_path: Path) -> None:
    empty = tmp_path / "no-builders"
    empty.mkdir()
    out = tmp_path / "context"
    env = {**cli_env(deployed.settings), "PATH": str(empty)}
    result = run_cli("build", "churn@champion", "--output", str(out), "--build", "--builder",
                     "podman", env=env)
    assert result.returncode == 8
    assert "podman (--builder) is not usable: is not on PATH" in result.stderr
    assert not out.exists()
    unknown = run_cli("build", "churn@champion", "--output", str(out), "--build", "--builder",
                      "kaniko", env=env)
    assert unknown.returncode == 2 and "known: docker, buildah, podman" in unknown.stderr
    assert not out.exists()


def test_find_builder_checks_the_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(UnavailableError) as err:
        find_builder()
    assert err.value.details["looked_for"] == list(BUILDERS)
    with pytest.raises(InvalidInputError):
        find_builder("kaniko")


def test_dry_run_names_the_builder_it_found(deployed: Deployed, cwd: Path) -> None:
    """With a real buildah on PATH (and no docker), the dry run says it will use buildah."""
    found = shutil.which("buildah")
    if found is None:
        pytest.skip("buildah is not installed (apt-get install buildah)")
    env = {**cli_env(deployed.settings), "PATH": str(Path(found).parent)}
    if shutil.which("docker", path=env["PATH"]):
        pytest.skip("docker lives next to buildah here; the dry run might choose it")
    result = run_cli("build", "churn@champion", "--dry-run", "--build", env=env, cwd=cwd)
    assert result.returncode == 0, result.stderr
    assert " with buildah" in result.stdout
    assert _files_under(cwd) == []


def test_python_api_plans_from_the_version_object(deployed: Deployed) -> None:
    """resolve_source takes the ModelVersion the registry handed out; a plan needs no folder
    and lists the files by their paths inside it."""
    from mlharbor.deploy.base import resolve_source
    from mlharbor.deploy.catalog import get_target
    from mlharbor.deploy.environment import replica_environment
    from mlharbor.deploy.kubernetes import KubernetesOptions

    source = resolve_source(deployed.registry, deployed.version)
    assert source.ref == "churn:1" and source.version.ref == "churn:1"
    options = KubernetesOptions(replica_environment(deployed.settings, "baked"))
    result = get_target("kubernetes").deploy(source, options, output=None,
                                             registry=deployed.registry, actor="t",
                                             dry_run=True)
    assert "  write  deployment.yaml" in result.plan.describe()
    with pytest.raises(InvalidInputError, match="--output"):
        get_target("kubernetes").deploy(source, options, output=None,
                                        registry=deployed.registry, actor="t")
