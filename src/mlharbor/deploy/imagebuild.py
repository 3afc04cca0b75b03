"""Building and pushing images: docker when a daemon answers, else buildah, else podman.

:func:`find_builder` checks that a builder is usable (on PATH and working: ``docker info``
answers, ``buildah info`` / ``podman info`` succeed) before anything is written.

buildah and podman build without a daemon (``--isolation chroot``) and write Docker-format
images, so HEALTHCHECK is kept (the OCI image format has no health check). They build with
``--layers`` (docker caches layers by default): the generated Dockerfile puts the dependency
install below mlharbor's own wheel and the model, so rebuilding an image for a new model version
reuses the dependency layer (hundreds of MB of wheels installed and compiled) from the cache.

Pushing goes to the registry the tag names (a short name is refused rather than sent to
Docker Hub by default). Credentials come from an auth file or from an environment variable
(:class:`RegistryAuth`), never from the command line of mlharbor or of the builder, where any
user of the host could read them in the process list.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from mlharbor.core.errors import InvalidInputError, UnavailableError

BUILDERS = ("docker", "buildah", "podman")


@dataclasses.dataclass(frozen=True, slots=True)
class BuiltImage:
    tag: str
    builder: str
    seconds: float
    size_bytes: int | None


INSTALL_BUILDER = ("Install one (apt-get install buildah, or podman, or Docker Engine with its "
                   "daemon running), or pick one with --builder; without a builder, leave out "
                   "--build and build the written context yourself: docker build -t TAG DIR.")


def find_builder(preferred: str | None = None) -> str:
    """The builder to use, checked usable before any work: ``preferred`` when given, else the
    first of docker (only when its daemon answers), buildah, podman.

    Called first by ``mlharbor build --build`` (dry run too), so a missing builder is one line
    before the minutes of writing a context of hundreds of MB, not an error after them.
    """
    if preferred is not None:
        if preferred not in BUILDERS:
            raise InvalidInputError(f"Unknown image builder {preferred!r}; known: "
                                    f"{', '.join(BUILDERS)}.", field="builder",
                                    expected=list(BUILDERS), received=preferred)
        why = _unusable(preferred)
        if why is None:
            return preferred
        raise UnavailableError(f"The image builder {preferred} (--builder) is not usable: "
                               f"{why}.", hint=INSTALL_BUILDER, looked_for=[preferred])
    reasons = []
    for name in BUILDERS:
        why = _unusable(name)
        if why is None:
            return name
        reasons.append(f"{name} {why}")
    raise UnavailableError(
        f"No image builder is usable; looked for {', '.join(BUILDERS)}: {'; '.join(reasons)}.",
        hint=INSTALL_BUILDER, looked_for=list(BUILDERS))


def _unusable(builder: str) -> str | None:
    """None when ``builder`` can build here, else why not (a few words)."""
    if shutil.which(builder) is None:
        return "is not on PATH"
    if builder == "docker":
        if _run(["docker", "info", "--format", "{{.ID}}"], 10) != 0:
            return "has no daemon answering (docker info failed)"
        return None
    if _run([builder, "info"], 20) != 0:
        return f"does not work here ({builder} info failed)"
    return None


def build_command(builder: str, context: Path, tag: str, *, base_image: str | None = None,
                  pull: bool = True, cache: bool = True) -> list[str]:
    """The build command line. With ``cache`` (the default) every builder keeps and reuses
    layers; without it, nothing is taken from the cache (a clean rebuild)."""
    if builder not in BUILDERS:
        raise InvalidInputError(f"Unknown image builder {builder!r}; known: "
                                f"{', '.join(BUILDERS)}.", received=builder)
    cmd = [builder, "build"] if builder != "buildah" else ["buildah", "bud"]
    if builder != "docker":
        cmd += ["--isolation", "chroot", "--format", "docker", "--layers"]
        if not pull:
            cmd.append("--pull=never")
    if not cache:
        cmd.append("--no-cache")
    cmd += ["-t", tag, "-f", str(context / "Dockerfile")]
    if base_image:
        cmd += ["--build-arg", f"BASE_IMAGE={base_image}"]
    return [*cmd, str(context)]


def build_image(context: Path, tag: str, *, builder: str | None = None,
                base_image: str | None = None, pull: bool = True, cache: bool = True,
                log: Path | None = None) -> BuiltImage:
    """Build the context at ``context`` as ``tag``; the builder's output goes to ``log``.

    ``builder`` is used as given (callers check it first with :func:`find_builder`); without
    one, the first usable builder is found.
    """
    chosen = builder or find_builder()
    cmd = build_command(chosen, context, tag, base_image=base_image, pull=pull, cache=cache)
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


@dataclasses.dataclass(frozen=True, slots=True)
class PushedImage:
    tag: str
    builder: str
    seconds: float
    digest: str | None  # of the manifest in the registry: pull TAG@DIGEST to get these bytes


@dataclasses.dataclass(frozen=True, slots=True)
class RegistryAuth:
    """Where push credentials come from; never the command line, never a log.

    ``authfile``: a containers-auth.json / Docker config.json (``{"auths": {...}}``), as
    written by ``podman login``, ``buildah login`` or ``docker login``. Or ``username`` with a
    password read from the environment variable ``password_env``: it is written to a private
    temporary auth file for the one push, then deleted. With neither, the builder's own login
    is used (``REGISTRY_AUTH_FILE``, ``$XDG_RUNTIME_DIR/containers/auth.json``,
    ``~/.docker/config.json``).
    """

    authfile: Path | None = None
    username: str | None = None
    password_env: str | None = None

    def describe(self) -> str:
        if self.authfile is not None:
            return f"credentials from the auth file {self.authfile}"
        if self.password_env is not None:
            return f"credentials of {self.username!r} with the password from ${self.password_env}"
        return "the builder's own registry login"


def registry_host(tag: str) -> str | None:
    """The registry named by an image reference (``reg.example.com:5000/team/app:1`` ->
    ``reg.example.com:5000``), or None for a short name such as ``team/app:1``."""
    first, slash, _rest = tag.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return first
    return None


def is_loopback(host: str) -> bool:
    """``localhost``, ``127.x.y.z`` or ``[::1]``, with or without a port."""
    import ipaddress

    name = host[1:].split("]", 1)[0] if host.startswith("[") else host.rsplit(":", 1)[0]
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_push(tag: str, builder: str | None, auth: RegistryAuth, environ: Mapping[str, str],
               *, tls_verify: bool = True) -> str:
    """Refuse a push that cannot work, before anything is built; returns the registry host.

    A short name would go to Docker Hub (or, with podman, to whichever registry the search
    list names): the registry must be spelled out.
    """
    host = registry_host(tag)
    if host is None:
        raise InvalidInputError(
            f"--push needs a --tag that names the registry; received {tag!r}.",
            hint="For example --tag registry.example.com/team/churn:3, or "
            "docker.io/team/churn:3 for Docker Hub.", field="tag", received=tag)
    if auth.authfile is not None and (auth.username or auth.password_env):
        raise InvalidInputError("Give --authfile or --registry-user with "
                                "--registry-password-env, not both.")
    if (auth.username is None) != (auth.password_env is None):
        raise InvalidInputError("--registry-user and --registry-password-env go together: "
                                "the password is read from the environment variable named.")
    if auth.authfile is not None and not auth.authfile.is_file():
        raise InvalidInputError(f"The --authfile {str(auth.authfile)!r} is not a file.",
                                field="authfile", received=str(auth.authfile))
    if auth.password_env is not None and not environ.get(auth.password_env):
        raise InvalidInputError(
            f"The environment variable {auth.password_env} (--registry-password-env) is "
            "empty or unset.", hint="Export the registry password or token in it.")
    if builder == "docker" and not tls_verify and not is_loopback(host):
        raise InvalidInputError(
            "docker cannot skip TLS verification for one push (--no-tls-verify).",
            hint=f"Add {host} to insecure-registries in the Docker daemon's daemon.json, or "
            "push with --builder buildah or podman.")
    return host


def push_command(builder: str, tag: str, *, tls_verify: bool = True,
                 authfile: Path | None = None, digestfile: Path | None = None) -> list[str]:
    """The push command line: names and paths only, never a credential."""
    if builder not in BUILDERS:
        raise InvalidInputError(f"Unknown image builder {builder!r}; known: "
                                f"{', '.join(BUILDERS)}.", received=builder)
    if builder == "docker":
        # docker reads credentials from DOCKER_CONFIG (see push_image) and decides on TLS in
        # its daemon (loopback registries are plain HTTP by default).
        return ["docker", "push", tag]
    cmd = [builder, "push", f"--tls-verify={'true' if tls_verify else 'false'}"]
    if authfile is not None:
        cmd += ["--authfile", str(authfile)]
    if digestfile is not None:
        cmd += ["--digestfile", str(digestfile)]
    return [*cmd, tag, f"docker://{tag}"]


def push_image(tag: str, *, builder: str, tls_verify: bool = True,
               auth: RegistryAuth | None = None, environ: Mapping[str, str] | None = None,
               log: Path | None = None) -> PushedImage:
    """Push ``tag`` to the registry it names with ``builder``; its output goes to ``log``
    (builders print layer digests and progress, never credentials)."""
    auth = auth or RegistryAuth()
    env = dict(os.environ if environ is None else environ)
    check_push(tag, builder, auth, env, tls_verify=tls_verify)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mlharbor-push-") as tmp:  # mode 0700
        work = Path(tmp)
        authfile = auth.authfile
        if auth.password_env is not None and auth.username is not None:
            authfile = _write_authfile(work / "auth.json", registry_host(tag) or "",
                                       auth.username, env[auth.password_env])
        if builder == "docker" and authfile is not None:
            (work / "docker").mkdir()
            shutil.copyfile(authfile, work / "docker" / "config.json")
            env["DOCKER_CONFIG"] = str(work / "docker")
        digestfile = work / "digest"
        cmd = push_command(builder, tag, tls_verify=tls_verify, authfile=authfile,
                           digestfile=digestfile)
        log_path = log or work / "push.log"
        with log_path.open("w", encoding="utf-8") as out:
            code = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                  check=False).returncode
        output = log_path.read_text(encoding="utf-8", errors="replace")
        if code != 0:
            raise UnavailableError(
                f"{builder} failed to push {tag} (exit {code}): {_push_error(output)}",
                hint=_push_hint(output, tls_verify)
                + (f" The full log is in {log_path}." if log is not None else ""))
        digest = digestfile.read_text().strip() if digestfile.is_file() else None
    if not digest:  # docker prints "<tag>: digest: sha256:... size: N"
        import re

        found = re.search(r"digest: (sha256:[0-9a-f]{64})", output)
        digest = found.group(1) if found else None
    return PushedImage(tag, builder, time.monotonic() - started, digest or None)


def _write_authfile(path: Path, host: str, username: str, password: str) -> Path:
    import base64

    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump({"auths": {host: {"auth": token}}}, out)
    return path


def _push_error(output: str) -> str:
    lines = [line.strip() for line in output.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.lower().startswith("error")]
    return (errors or lines or ["no output"])[-1][:500]


def _push_hint(output: str, tls_verify: bool) -> str:
    text = output.lower()
    if "unauthorized" in text or "authentication required" in text or "denied" in text:
        return ("The registry refused the credentials: log in (podman/buildah/docker login), "
                "or give --authfile, or --registry-user with --registry-password-env.")
    if tls_verify and ("http response to https client" in text or "x509" in text
                       or "certificate" in text):
        return ("TLS to the registry failed: give its CA to the builder (certs.d), or use "
                "--no-tls-verify for a local plain-HTTP registry.")
    return "Check that the registry is reachable and the tag names it."


def _run(cmd: list[str], timeout: float) -> int:
    try:
        return subprocess.run(cmd, capture_output=True, timeout=timeout, check=False).returncode
    except (OSError, subprocess.TimeoutExpired):
        return 1
