"""Building and pushing images: docker when a daemon answers, else buildah, else podman.

buildah and podman build without a daemon (``--isolation chroot``) and write Docker-format
images, so HEALTHCHECK is kept (the OCI image format has no health check).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import time
from pathlib import Path

from mlharbor.core.errors import InvalidInputError, UnavailableError

BUILDERS = ("docker", "buildah", "podman")


@dataclasses.dataclass(frozen=True, slots=True)
class BuiltImage:
    tag: str
    builder: str
    seconds: float
    size_bytes: int | None


def detect_builder() -> str:
    """The first usable builder: docker (only when its daemon answers), buildah, podman."""
    if shutil.which("docker") and _run(["docker", "info", "--format", "{{.ID}}"], 10) == 0:
        return "docker"
    for name in ("buildah", "podman"):
        if shutil.which(name):
            return name
    raise UnavailableError(
        "No image builder is available: docker has no running daemon and neither buildah "
        "nor podman is installed.",
        hint="Start the Docker daemon, or install buildah (apt-get install buildah), or build "
        "the written context yourself: docker build -t TAG DIR.",
    )


def build_command(builder: str, context: Path, tag: str, *, base_image: str | None = None,
                  pull: bool = True) -> list[str]:
    if builder not in BUILDERS:
        raise InvalidInputError(f"Unknown image builder {builder!r}; known: "
                                f"{', '.join(BUILDERS)}.", received=builder)
    cmd = [builder, "build"] if builder != "buildah" else ["buildah", "bud"]
    if builder != "docker":
        cmd += ["--isolation", "chroot", "--format", "docker", "--layers=false"]
        if not pull:
            cmd.append("--pull=never")
    cmd += ["-t", tag, "-f", str(context / "Dockerfile")]
    if base_image:
        cmd += ["--build-arg", f"BASE_IMAGE={base_image}"]
    return [*cmd, str(context)]


def build_image(context: Path, tag: str, *, builder: str | None = None,
                base_image: str | None = None, pull: bool = True,
                log: Path | None = None) -> BuiltImage:
    """Build the context at ``context`` as ``tag``; the builder's output goes to ``log``."""
    chosen = builder or detect_builder()
    cmd = build_command(chosen, context, tag, base_image=base_image, pull=pull)
    started = time.monotonic()
    log_path = log or context.parent / f"{context.name}.build.log"
    with log_path.open("w", encoding="utf-8") as out:
        code = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=False).returncode
    if code != 0:
        tail = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-5:]
        raise UnavailableError(
            f"{chosen} failed to build {tag} (exit {code}): {' | '.join(tail)}",
            hint=f"The full log is in {log_path}.",
        )
    return BuiltImage(tag, chosen, time.monotonic() - started, image_size(chosen, tag))


def image_size(builder: str, tag: str) -> int | None:
    tool = "podman" if builder == "buildah" and shutil.which("podman") else builder
    cmd = [tool, "image", "inspect", tag] if tool != "buildah" else ["buildah", "inspect", tag]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        return None
    data = json.loads(result.stdout)
    first = data[0] if isinstance(data, list) else data
    size = first.get("Size") if isinstance(first, dict) else None
    return int(size) if isinstance(size, int | float) else None


def push_image(tag: str, *, builder: str, tls_verify: bool = True) -> None:
    cmd = [builder, "push"]
    if builder != "docker" and not tls_verify:
        cmd.append("--tls-verify=false")
    result = subprocess.run([*cmd, tag], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise UnavailableError(f"Pushing {tag} with {builder} failed: "
                               f"{result.stderr.strip().splitlines()[-1:]}",
                               hint="Log in to the registry first (docker/buildah login).")


def _run(cmd: list[str], timeout: float) -> int:
    try:
        return subprocess.run(cmd, capture_output=True, timeout=timeout, check=False).returncode
    except (OSError, subprocess.TimeoutExpired):
        return 1
