"""The OCI build context of a model server image: the unit every deploy target ships.

``write_build_context`` writes, into an empty folder::

    Dockerfile       ``BASE_IMAGE`` build arg, wheels bind-mounted, non-root, HEALTHCHECK
    .dockerignore
    entrypoint.sh    maps platform contracts (SageMaker ``serve``, PORT, AIP_HTTP_PORT) to
                     ``mlharbor serve``
    wheels/          every dependency's wheel, so the build needs no network
    wheels-mlharbor/ mlharbor's own wheel
    requirements.txt            every dependency wheel, ``name==version --hash=sha256:...``
    requirements-mlharbor.txt   mlharbor's own wheel, the same way
    model/           the baked one-version registry (absent with ``bake=False``: the image then
                     fetches the version from the registry its settings name, at start)
    build.json       what was built from what (ref, version, digests, base image)

Dependencies are pinned to the versions installed where the context is built, so the image
answers exactly like the Python API here. Wheels are kept in a cache folder between builds.

The two requirements files are the cache keys of the image's two install layers (a builder does
not hash a bind-mounted folder, it hashes a copied file): rebuilding for another model version,
or with another mlharbor, reuses the dependency layer as long as every dependency wheel is
byte-for-byte the same.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata as metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlharbor.core.errors import ConflictError, InvalidInputError, UnavailableError
from mlharbor.deploy.bake import bake_version
from mlharbor.deploy.environment import PORT
from mlharbor.deploy.rendering import render, template_text

if TYPE_CHECKING:
    from mlharbor.deploy.base import DeploymentSource
    from mlharbor.registry.service import Registry

PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
DEFAULT_BASE_IMAGE = f"python:{PYTHON}-slim-bookworm"
# Model formats whose runtime is an optional extra of mlharbor.
FORMAT_EXTRAS = {"xgboost": "xgboost", "lightgbm": "lightgbm", "torch": "torch"}
Progress = Callable[[str], None]


@dataclasses.dataclass(frozen=True, slots=True)
class ContextOptions:
    bake: bool = True
    base_image: str = DEFAULT_BASE_IMAGE
    wheel_cache: Path | None = None
    extras: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class BuildContext:
    path: Path
    requirement: str
    wheels: int
    bake: bool


def dockerfile(source: DeploymentSource, *, requirement: str, bake: bool,
               base_image: str = DEFAULT_BASE_IMAGE) -> str:
    return render("container/Dockerfile.j2", ref=source.ref, version_ref=source.version.ref,
                  name=source.slug, model=source.model, version=source.number, bake=bake,
                  requirement=requirement, base_image=base_image, port=PORT, python=PYTHON)


def requirement_for(source: DeploymentSource, extras: tuple[str, ...] = ()) -> str:
    """``mlharbor[extras]==VERSION``: the format's runtime extra plus the ones asked for."""
    manifest = source.version.manifest or {}
    wanted = set(extras)
    fmt_extra = FORMAT_EXTRAS.get(str(manifest.get("model_format", "")))
    if fmt_extra:
        wanted.add(fmt_extra)
    known = set(metadata.metadata("mlharbor").get_all("Provides-Extra") or [])
    unknown = sorted(wanted - known)
    if unknown:
        raise InvalidInputError(
            f"Unknown mlharbor extra(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}.",
            expected=sorted(known), received=unknown)
    version = metadata.version("mlharbor")
    return f"mlharbor[{','.join(sorted(wanted))}]=={version}" if wanted \
        else f"mlharbor=={version}"


def write_build_context(
    registry: Registry, source: DeploymentSource, output: Path, options: ContextOptions, *,
    actor: str, progress: Progress = lambda _step: None,
) -> BuildContext:
    """Write the build context of ``source`` into ``output`` (new or empty), all or nothing."""
    if output.exists() and any(output.iterdir()):
        raise ConflictError(
            f"The output folder {str(output)!r} is not empty.",
            hint="Give a new folder; a build context is written whole or not at all.")
    output.parent.mkdir(parents=True, exist_ok=True)
    requirement = requirement_for(source, options.extras)
    staging = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}-"))
    staging.chmod(0o755)
    try:
        progress("building wheels (mlharbor and its dependencies)")
        wheels = collect_wheels(staging / "wheels", requirement, options.wheel_cache)
        write_requirements(staging / "wheels", staging)
        # mlharbor's own wheel in a folder of its own: the dependency install mounts only
        # wheels/, so a builder that keys a layer on its bind mounts (BuildKit, newer buildah)
        # still reuses it when mlharbor alone changes.
        own = staging / OWN_WHEELS
        own.mkdir()
        for wheel in (staging / "wheels").glob("mlharbor-*.whl"):
            wheel.rename(own / wheel.name)
        if options.bake:
            progress(f"baking {source.version.ref} into the image")
            bake_version(registry, source.version, staging / "model", actor=actor)
        progress("writing the Dockerfile")
        (staging / "Dockerfile").write_text(
            dockerfile(source, requirement=requirement, bake=options.bake,
                       base_image=options.base_image), encoding="utf-8")
        (staging / ".dockerignore").write_text(template_text("container/dockerignore"),
                                               encoding="utf-8")
        entry = staging / "entrypoint.sh"
        entry.write_text(template_text("container/entrypoint.sh"), encoding="utf-8")
        entry.chmod(0o755)
        (staging / "build.json").write_text(json.dumps(_build_info(source, requirement,
                                                                   options), indent=2) + "\n")
        if output.exists():
            output.rmdir()
        staging.replace(output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return BuildContext(output, requirement, wheels, options.bake)


def _build_info(source: DeploymentSource, requirement: str, options: ContextOptions
                ) -> dict[str, Any]:
    return {
        "ref": source.ref, "model": source.model, "version": source.number,
        "files": {f.path: f.sha256 for f in source.version.files},
        "requirement": requirement, "python": PYTHON, "base_image": options.base_image,
        "baked": options.bake, "image": source.image,
    }


def collect_wheels(dest: Path, requirement: str, cache: Path | None) -> int:
    """Put mlharbor's wheel and every dependency's wheel (pinned to this environment) in dest."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mlharbor-wheels-") as tmp:
        work = Path(tmp)
        own = _own_wheel(work / "own")
        constraints = work / "constraints.txt"
        constraints.write_text(_pins(), encoding="utf-8")
        spec = f"{own}[{requirement.split('[')[1].split(']')[0]}]" if "[" in requirement \
            else str(own)
        cache_dir = cache or work / "cache"
        cache_dir.mkdir(parents=True, exist_ok=True)
        offline = ["--no-index", "--find-links", str(cache_dir)]
        _forget_own_wheels(cache_dir)
        if _pip_wheel(spec, dest, constraints, offline).returncode != 0:
            # Something is missing from the cache: fetch it from the package index, once.
            online = _pip_wheel(spec, cache_dir, constraints, ["--find-links", str(cache_dir)])
            # The cache keeps dependencies only: an older mlharbor wheel of the same version
            # would contradict the one just built.
            _forget_own_wheels(cache_dir)
            if online.returncode != 0:
                raise UnavailableError(
                    f"Downloading the wheels for {requirement} failed: "
                    f"{_last_line(online.stderr)}",
                    hint="The package index must be reachable once; later builds reuse the "
                    "wheel cache.")
            result = _pip_wheel(spec, dest, constraints, offline)
            if result.returncode != 0:
                raise UnavailableError(f"Collecting wheels failed: {_last_line(result.stderr)}")
        shutil.copy2(own, dest / own.name)
    return len(list(dest.glob("*.whl")))


OWN_REQUIREMENTS = "requirements-mlharbor.txt"
DEPENDENCY_REQUIREMENTS = "requirements.txt"
OWN_WHEELS = "wheels-mlharbor"  # the build context's folder of mlharbor's own wheel


def write_requirements(wheels: Path, folder: Path) -> None:
    """Write ``requirements.txt`` (the dependencies) and ``requirements-mlharbor.txt``
    (mlharbor's own wheel) into ``folder``: one ``name==version --hash=sha256:...`` line per
    wheel in ``wheels``, sorted, so the same wheels always give the same bytes."""
    own: list[str] = []
    deps: list[str] = []
    for wheel in sorted(wheels.glob("*.whl")):
        name, version = wheel.name.split("-")[:2]  # PEP 427: name-version(-build)?-py-abi-plat
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        line = f"{name}=={version} --hash=sha256:{digest}\n"
        (own if name.lower() == "mlharbor" else deps).append(line)
    if len(own) != 1:
        raise UnavailableError(f"Expected one mlharbor wheel in {wheels}, found {len(own)}.")
    header = "# Written by mlharbor build from wheels/; pip install --require-hashes -r.\n"
    (folder / DEPENDENCY_REQUIREMENTS).write_text(header + "".join(deps), encoding="utf-8")
    (folder / OWN_REQUIREMENTS).write_text(header + "".join(own), encoding="utf-8")


def _forget_own_wheels(cache: Path) -> None:
    for stale in cache.glob("mlharbor-*.whl"):
        stale.unlink()


def _pip_wheel(spec: str, dest: Path, constraints: Path, index: list[str]
               ) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
           "--wheel-dir", str(dest), "--constraint", str(constraints), *index, spec]
    return subprocess.run(cmd, capture_output=True, text=True, check=False,
                          env={**os.environ, "PIP_NO_INPUT": "1"})


def _own_wheel(dest: Path) -> Path:
    """mlharbor's own wheel: built from the source tree of an editable install, else fetched."""
    dest.mkdir(parents=True, exist_ok=True)
    source_dir = _editable_source()
    if source_dir is not None:
        cmd = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
               "--no-build-isolation", "--disable-pip-version-check", "--wheel-dir",
               str(dest), str(source_dir)]
    else:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
               "--only-binary=:all:", "--dest", str(dest),
               f"mlharbor=={metadata.version('mlharbor')}"]
    # Zip entries carry timestamps: with a fixed one (unless the caller set their own) the same
    # source gives the same wheel bytes, so requirements-mlharbor.txt is unchanged and a
    # builder's cache keeps the mlharbor layer too when only the model changes.
    env = {**os.environ, "SOURCE_DATE_EPOCH": os.environ.get("SOURCE_DATE_EPOCH", "315532800")}
    result = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    found = sorted(dest.glob("mlharbor-*.whl"))
    if result.returncode != 0 or not found:
        raise UnavailableError(f"Building the mlharbor wheel failed: "
                               f"{_last_line(result.stderr)}")
    return found[0]


def _editable_source() -> Path | None:
    text = metadata.distribution("mlharbor").read_text("direct_url.json")
    if not text:
        return None
    info = json.loads(text)
    url = str(info.get("url", ""))
    if not url.startswith("file://"):
        return None
    path = Path(url.removeprefix("file://"))
    return path if (path / "pyproject.toml").is_file() else None


def _pins() -> str:
    """``name==version`` of every distribution installed here (mlharbor itself excepted)."""
    pins = set()
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name and name.lower() != "mlharbor" and not dist.read_text("direct_url.json"):
            pins.add(f"{name}=={dist.version}")
    return "\n".join(sorted(pins)) + "\n"


def _last_line(text: str) -> str:
    """pip's own explanation: the error lines, without its warnings about config."""
    lines = [line.strip() for line in text.strip().splitlines()
             if line.strip() and not line.startswith("WARNING")]
    return " | ".join(lines[-6:]) if lines else "no output"
