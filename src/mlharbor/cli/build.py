"""``mlharbor build REF --output DIR``: the OCI build context (and image) of a model server.

With ``--build`` (or ``--push``) the image builder is checked first, so a machine without one
gets one line before anything is written; ``--dry-run`` checks it too and needs no folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from mlharbor.deploy.base import DeploymentSource
    from mlharbor.deploy.container import ContextOptions
    from mlharbor.deploy.imagebuild import RegistryAuth
    from mlharbor.registry.service import Registry


def register(app: typer.Typer) -> None:
    @app.command("build")
    def build(
        ctx: typer.Context,
        ref: str = typer.Argument(..., help="Model version to serve: churn:3, churn@champion."),
        output: Path | None = typer.Option(None, "--output", "-o", help="New or empty folder for "
                                           "the build context (Dockerfile, wheels, model); not "
                                           "needed with --dry-run.", show_default=False),
        bake: bool = typer.Option(True, "--bake/--no-bake", help="Bake the model into the "
                                  "image (default), or fetch it from the registry at start."),
        do_build: bool = typer.Option(False, "--build", help="Also build the image: docker "
                                      "when a daemon answers, else buildah, else podman."),
        tag: str = typer.Option(None, "--tag", "-t", help="Image tag (default "
                                "mlharbor/<model>:<version>)."),
        push: bool = typer.Option(False, "--push", help="Push the built image (implies "
                                  "--build)."),
        base_image: str = typer.Option(None, "--base-image", help="BASE_IMAGE: a Debian-based "
                                       "image with the same python3 minor version as here."),
        builder: str = typer.Option(None, "--builder", help="docker, buildah or podman."),
        wheel_cache: Path = typer.Option(None, "--wheel-cache", help="Folder keeping "
                                         "downloaded wheels between builds (default in the "
                                         "mlharbor home)."),
        tls_verify: bool = typer.Option(True, "--tls-verify/--no-tls-verify",
                                        help="Check the registry's TLS certificate on push "
                                        "(--no-tls-verify also allows a plain-HTTP registry, "
                                        "e.g. a local one)."),
        authfile: Path = typer.Option(None, "--authfile", help="Registry credentials for "
                                      "--push: an auth.json / Docker config.json as written "
                                      "by podman, buildah or docker login (default: the "
                                      "builder's own login).", show_default=False),
        registry_user: str = typer.Option(None, "--registry-user", help="User name for "
                                          "--push; the password is read from the variable "
                                          "named by --registry-password-env."),
        registry_password_env: str = typer.Option(
            None, "--registry-password-env", metavar="VAR", help="Environment variable "
            "holding the registry password or token (never give it on the command line)."),
        extra: list[str] = typer.Option(None, "--extra", help="mlharbor extra to install as "
                                        "well (repeatable), e.g. aws-lambda for Lambda."),
        api_key: bool = typer.Option(False, "--api-key", help="Create a predictor API key in "
                                     "the baked registry and print it (once)."),
        cache: bool = typer.Option(True, "--cache/--no-cache", help="Reuse the builder's "
                                   "cached layers (the dependency install when its wheels "
                                   "are the same), or rebuild every layer."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Print what would be written "
                                     "and built; change nothing."),
    ) -> None:
        """Write a Docker/OCI build context serving REF with `mlharbor serve`.

        The context installs every dependency from wheels it ships (no network during the
        build), runs as a non-root user, answers health checks on /livez and /readyz, and
        honours the platform contracts: port 8080 (PORT, AIP_HTTP_PORT), SageMaker's `serve`
        argument with /ping and /invocations, Open Inference v2 and KServe v1 routes.
        Its dependency layer sits below mlharbor and the model, so a builder's layer cache
        reuses it when the next build has the same dependency wheels.
        """
        from rich.console import Console

        from mlharbor.bootstrap import open_registry
        from mlharbor.cli.admin import cli_actor
        from mlharbor.cli.main import settings_from
        from mlharbor.core.errors import InvalidInputError
        from mlharbor.deploy.base import resolve_source
        from mlharbor.deploy.container import DEFAULT_BASE_IMAGE, ContextOptions
        from mlharbor.deploy.imagebuild import RegistryAuth, check_push, find_builder

        if api_key and not bake:
            raise InvalidInputError(
                "--api-key needs a baked image: without --bake, keys live in the shared "
                "registry (mlharbor admin keys create).")
        if output is None and not dry_run:
            raise InvalidInputError(
                "mlharbor build writes a build context: give its folder with --output DIR.",
                hint="Or add --dry-run to see what would be written.", field="output")
        # Before anything else: a build that cannot happen is refused now, not after minutes
        # of writing a context of hundreds of MB.
        chosen = find_builder(builder) if do_build or push else builder
        settings = settings_from(ctx)
        console = Console(stderr=True)
        registry = open_registry(settings)
        try:
            source = resolve_source(registry, ref, tag)
            base = base_image or DEFAULT_BASE_IMAGE
            auth = RegistryAuth(authfile, registry_user, registry_password_env)
            if push:  # before minutes of building: a push that cannot work is refused now
                host = check_push(source.image, chosen, auth, os.environ,
                                  tls_verify=tls_verify)
            if dry_run:
                typer.echo(f"build: {ref} -> {source.version.ref} (image {source.image})")
                where = f"{output}/" if output is not None else ""
                for item in ("Dockerfile", ".dockerignore", "entrypoint.sh", "build.json",
                             "wheels/ (every dependency), wheels-mlharbor/ (mlharbor)",
                             "requirements.txt, requirements-mlharbor.txt (the wheels' "
                             "hashes: the install layers' cache keys)"):
                    typer.echo(f"  write  {where}{item}")
                if bake:
                    typer.echo(f"  write  {where}model/ (a registry holding only "
                               f"{source.version.ref})")
                if do_build or push:
                    typer.echo(f"  build  image {source.image} from {base} with {chosen}"
                               + ("" if cache else ", no layer cache"))
                if push:
                    tls = "TLS verified" if tls_verify else "TLS not verified, plain HTTP allowed"
                    typer.echo(f"  push   {source.image} to {host} ({tls}; "
                               f"{auth.describe()})")
                if api_key:
                    typer.echo("  create predictor API key in the baked registry")
                if output is None:
                    typer.echo("  note   the files go under the --output folder of a real run")
                typer.echo("dry run: nothing was written or built")
                return
            options = ContextOptions(bake=bake, base_image=base, wheel_cache=wheel_cache or (
                settings.home / "cache" / "wheels"), extras=tuple(extra or ()))
            assert output is not None  # checked above: only a dry run goes without
            _build(registry, source, output, options, console, do_build or push,
                   auth if push else None, chosen, tls_verify, cli_actor(), api_key, cache)
        finally:
            registry.close()


def _build(reg: Registry, src: DeploymentSource, output: Path, opts: ContextOptions,
           out: Console, do_build: bool, push: RegistryAuth | None, builder: str | None,
           tls_verify: bool, actor: str, api_key: bool = False, cache: bool = True) -> None:
    """Write the context, then build and push as asked (``push``: the RegistryAuth to push
    with, or None); audited either way."""
    from mlharbor.core.errors import MlharborError
    from mlharbor.deploy.container import write_build_context
    from mlharbor.deploy.imagebuild import build_image, push_image, registry_host

    details: dict[str, Any] = {"target": "container", "image": src.image,
                               "version": src.number, "ref": src.ref, "baked": opts.bake}
    try:
        with out.status("writing the build context ...") as status:
            context = write_build_context(reg, src, output, opts, actor=actor,
                                          progress=lambda step: status.update(step + " ..."))
        out.print(f"wrote {context.path} ({context.wheels} wheels, "
                  f"{'model baked in' if context.bake else 'model fetched at start'})")
        if api_key:
            key = _provision_key(context.path / "model", actor)
            typer.echo(f"api key (shown once, store it now): {key}")
        if do_build:
            with out.status(f"building {src.image} ..."):
                built = build_image(context.path, src.image, builder=builder,
                                    base_image=opts.base_image,
                                    pull=not opts.base_image.startswith("localhost/"),
                                    cache=cache)
            size = f", {built.size_bytes / 1e6:.0f} MB" if built.size_bytes else ""
            out.print(f"built {built.tag} with {built.builder} in {built.seconds:.0f} s{size}")
            details["builder"] = built.builder
            if push is not None:
                details["registry"] = registry_host(src.image)
                with out.status(f"pushing {src.image} ..."):
                    pushed = push_image(src.image, builder=built.builder,
                                        tls_verify=tls_verify, auth=push,
                                        log=context.path.parent / f"{context.path.name}"
                                        ".push.log")
                where = f"{src.image}@{pushed.digest}" if pushed.digest else src.image
                # One unwrapped line: scripts take the digest from it.
                out.print(f"pushed {where} in {pushed.seconds:.0f} s", soft_wrap=True,
                          markup=False, highlight=False)
                details.update(pushed=True, digest=pushed.digest)
    except MlharborError as exc:
        reg.store.record(actor=actor, action="deploy.container", resource=src.resource,
                         outcome="failure", details={**details, "error": exc.code,
                                                     "message": exc.message})
        raise
    reg.store.record(actor=actor, action="deploy.container", resource=src.resource,
                     outcome="success", details=details)
    typer.echo(str(output))


def _provision_key(model_dir: Path, actor: str) -> str:
    """A service identity with the predictor role, and one key, in the baked registry."""
    from mlharbor.bootstrap import open_identities
    from mlharbor.deploy.bake import open_baked

    registry = open_baked(model_dir)
    try:
        identities = open_identities(registry)
        identities.create_identity("image-client", kind="service", grants=["predictor"],
                                   description="calls the image built by mlharbor build",
                                   actor=actor)
        _info, key = identities.create_key("image-client", label="mlharbor build --api-key",
                                           actor=actor)
    finally:
        registry.close()
    return key
