"""The pieces of the build context that need no image build: baking and the entrypoint."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from mlharbor.core.errors import ConflictError, InvalidInputError
from mlharbor.deploy.bake import bake_version, open_baked
from mlharbor.deploy.base import resolve_source
from mlharbor.deploy.container import ContextOptions, requirement_for, write_build_context
from mlharbor.deploy.rendering import template_text
from mlharbor.registry.bundles import load_predictor
from tests.deploy.conftest import Deployed


def test_baking_keeps_the_version_number_aliases_and_answers(deployed: Deployed,
                                                             tmp_path: Path) -> None:
    registry = deployed.registry
    folder = registry.download(deployed.version)
    for _ in range(3):
        registry.register_version("fraud", folder, manifest=deployed.version.manifest,
                                  tags={"team": "risk"}, metrics={"auc": 0.9})
    registry.set_alias("fraud", "prod", 3)
    mv = registry.get_version("fraud@prod")
    baked = bake_version(registry, mv, tmp_path / "model", actor="test")
    assert (baked.version, baked.aliases) == (3, ("prod",))
    assert baked.tags["team"] == "risk" and baked.metrics == {"auc": 0.9}
    assert [f.sha256 for f in baked.files] == [f.sha256 for f in mv.files]
    assert not list((tmp_path / "model").glob("mlharbor.db-*"))  # no WAL side files
    modes = {p.stat().st_mode & 0o777 for p in (tmp_path / "model").rglob("*") if p.is_file()}
    assert modes == {0o644}  # readable by the image's non-root user
    inside = open_baked(tmp_path / "model")
    try:
        assert [v.version for v in inside.list_versions("fraud").items] == [3]
        predictor = load_predictor(inside, "fraud@prod", deployed.settings)
        assert predictor.predict(deployed.rows).tolist() == deployed.expected
    finally:
        inside.close()
    with pytest.raises(ConflictError, match="already exists"):
        bake_version(registry, mv, tmp_path / "model", actor="test")


def test_context_refuses_a_non_empty_folder_and_unknown_extras(deployed: Deployed,
                                                               tmp_path: Path) -> None:
    source = resolve_source(deployed.registry, "churn@champion")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(ConflictError, match="not empty"):
        write_build_context(deployed.registry, source, tmp_path / "out", ContextOptions(),
                            actor="test")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    with pytest.raises(InvalidInputError, match="Unknown mlharbor extra"):
        requirement_for(source, ("no-such-extra",))
    assert requirement_for(source) == "mlharbor==0.1.0"
    assert requirement_for(source, ("aws-lambda",)) == "mlharbor[aws-lambda]==0.1.0"


@pytest.fixture
def entrypoint(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """The image's entrypoint, with a stand-in `mlharbor` on PATH that prints its arguments."""
    script = tmp_path / "entrypoint.sh"
    script.write_text(template_text("container/entrypoint.sh"))
    script.chmod(0o755)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub = bin_dir / "mlharbor"
    stub.write_text('#!/bin/sh\necho "$@"\n')
    stub.chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "MLHARBOR_HOME": str(tmp_path / "home"),
           "MLHARBOR_MODEL_REF": "churn@champion", "MLHARBOR_DATABASE_URL": "sqlite://"}
    return script, env


@pytest.mark.parametrize(("args", "extra", "port"), [
    ([], {}, "8080"),                                          # Kubernetes, plain docker run
    (["serve"], {}, "8080"),                                   # SageMaker runs `IMAGE serve`
    ([], {"PORT": "9000"}, "9000"),                            # Cloud Run / Knative
    (["serve"], {"PORT": "9000", "AIP_HTTP_PORT": "7080"}, "7080"),  # Vertex AI
])
def test_entrypoint_honours_each_platform_contract(entrypoint: tuple[Path, dict[str, str]],
                                                   args: list[str], extra: dict[str, str],
                                                   port: str) -> None:
    script, env = entrypoint
    out = subprocess.run([str(script), *args], env={**env, **extra}, capture_output=True,
                         text=True, check=True)
    assert out.stdout.split() == ["serve", "churn@champion", "--host", "0.0.0.0",
                                  "--port", port]


def test_entrypoint_runs_other_commands(entrypoint: tuple[Path, dict[str, str]]) -> None:
    script, env = entrypoint
    out = subprocess.run([str(script), "mlharbor", "--version"], env=env, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "--version"
