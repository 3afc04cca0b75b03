"""`mlharbor build --push` refuses what cannot work before building, says what it would push in
--dry-run, and keeps credentials off every command line and out of every output."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlharbor.core.errors import InvalidInputError
from mlharbor.deploy.imagebuild import (
    RegistryAuth,
    check_push,
    is_loopback,
    push_command,
    registry_host,
)
from tests.deploy.conftest import Deployed
from tests.support import cli_env, run_cli

SECRET = "pa55-not-for-logs"


@pytest.mark.parametrize(("tag", "host"), [
    ("registry.example.com/team/churn:3", "registry.example.com"),
    ("127.0.0.1:5000/churn:1", "127.0.0.1:5000"),
    ("localhost/churn:1", "localhost"),
    ("[::1]:5000/churn:1", "[::1]:5000"),
    ("team/churn:3", None),
    ("churn:3", None),
])
def test_registry_host_is_the_first_component_only_when_it_names_a_host(
        tag: str, host: str | None) -> None:
    assert registry_host(tag) == host


@pytest.mark.parametrize(("host", "loopback"), [
    ("localhost:5000", True), ("127.0.0.1:5000", True), ("127.0.0.1", True),
    ("[::1]:5000", True), ("registry.example.com", False), ("10.0.0.1:5000", False),
])
def test_loopback_registries(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_push_command_names_files_never_credentials(tmp_path: Path) -> None:
    auth = tmp_path / "auth.json"
    cmd = push_command("buildah", "reg.example.com/t/churn:1", tls_verify=False,
                       authfile=auth, digestfile=tmp_path / "digest")
    assert cmd == ["buildah", "push", "--tls-verify=false", "--authfile", str(auth),
                   "--digestfile", str(tmp_path / "digest"), "reg.example.com/t/churn:1",
                   "docker://reg.example.com/t/churn:1"]
    assert push_command("podman", "reg.example.com/t/churn:1")[2] == "--tls-verify=true"
    assert push_command("docker", "reg.example.com/t/churn:1") == [
        "docker", "push", "reg.example.com/t/churn:1"]
    with pytest.raises(InvalidInputError, match="Unknown image builder 'kaniko'"):
        push_command("kaniko", "reg.example.com/t/churn:1")


def test_check_push_refuses_what_cannot_work(tmp_path: Path) -> None:
    tag = "reg.example.com/t/churn:1"
    env = {"PW": SECRET}
    assert check_push(tag, "buildah", RegistryAuth(None, "u", "PW"), env) == "reg.example.com"
    cases = [
        ("mlharbor/churn:1", None, RegistryAuth(), "needs a --tag that names the registry"),
        (tag, None, RegistryAuth(tmp_path / "a.json", "u", "PW"), "not both"),
        (tag, None, RegistryAuth(None, "u", None), "go together"),
        (tag, None, RegistryAuth(None, None, "PW"), "go together"),
        (tag, None, RegistryAuth(None, "u", "UNSET_VAR"), "UNSET_VAR"),
        (tag, None, RegistryAuth(tmp_path / "missing.json"), "is not a file"),
    ]
    for image, builder, auth, message in cases:
        with pytest.raises(InvalidInputError, match=message):
            check_push(image, builder, auth, env)
    # docker decides on TLS in its daemon: only loopback registries may skip it.
    with pytest.raises(InvalidInputError, match="insecure-registries"):
        check_push(tag, "docker", RegistryAuth(), env, tls_verify=False)
    assert check_push("127.0.0.1:5000/t:1", "docker", RegistryAuth(), env, tls_verify=False)


def test_build_help_lists_the_push_options() -> None:
    result = run_cli("build", "--help")
    assert result.returncode == 0
    for flag in ("--push", "--tls-verify", "--no-tls-verify", "--authfile", "--registry-user",
                 "--registry-password-env", "--dry-run"):
        assert flag in result.stdout
    assert "--registry-password " not in result.stdout  # no way to give it on the command line


def test_dry_run_says_what_would_be_pushed_and_how(deployed: Deployed, tmp_path: Path) -> None:
    out = tmp_path / "context"
    env = {**cli_env(deployed.settings), "PUSH_PASSWORD": SECRET}
    result = run_cli("build", "churn@champion", "--output", str(out), "--no-bake", "--push",
                     "--tag", "127.0.0.1:5000/team/churn:1", "--no-tls-verify",
                     "--registry-user", "ci", "--registry-password-env", "PUSH_PASSWORD",
                     "--dry-run", env=env)
    assert result.returncode == 0, result.stderr
    assert "  build  image 127.0.0.1:5000/team/churn:1 from " in result.stdout
    assert ("  push   127.0.0.1:5000/team/churn:1 to 127.0.0.1:5000 (TLS not verified, plain "
            "HTTP allowed; credentials of 'ci' with the password from $PUSH_PASSWORD)"
            ) in result.stdout
    assert SECRET not in result.stdout + result.stderr
    assert not out.exists()
    authfile = tmp_path / "auth.json"
    authfile.write_text("{}")
    result = run_cli("build", "churn@champion", "--output", str(out), "--push", "--tag",
                     "reg.example.com/team/churn:1", "--authfile", str(authfile), "--dry-run",
                     env=env)
    assert result.returncode == 0, result.stderr
    assert f"(TLS verified; credentials from the auth file {authfile})" in result.stdout


@pytest.mark.parametrize(("args", "message"), [
    ([], "--push needs a --tag that names the registry; received 'mlharbor/churn:1'"),
    (["--tag", "team/churn:1"], "received 'team/churn:1'"),
    (["--tag", "reg.example.com/t/churn:1", "--registry-user", "ci"], "go together"),
    (["--tag", "reg.example.com/t/churn:1", "--registry-user", "ci",
      "--registry-password-env", "NOT_SET_ANYWHERE"], "NOT_SET_ANYWHERE"),
])
def test_push_is_refused_in_one_line_before_anything_is_written(
        deployed: Deployed, tmp_path: Path, args: list[str], message: str) -> None:
    out = tmp_path / "context"
    result = run_cli("build", "churn@champion", "--output", str(out), "--push", *args,
                     env=cli_env(deployed.settings))
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert not out.exists()
