"""On-premises: a hardened systemd unit running ``mlharbor serve`` for one version."""

from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path

from mlharbor.core.errors import InvalidInputError
from mlharbor.deploy.base import Plan, PlannedFile, Target
from mlharbor.deploy.environment import ReplicaEnvironment
from mlharbor.deploy.rendering import render


@dataclasses.dataclass(frozen=True, slots=True)
class SystemdOptions:
    environment: ReplicaEnvironment
    executable: str = "/opt/mlharbor/venv/bin/mlharbor"
    user: str = "mlharbor"
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None


class SystemdTarget(Target[SystemdOptions]):
    name = "systemd"
    summary = ("systemd unit running `mlharbor serve` on this host, with sandboxing and "
               "privilege hardening, plus an example environment file for secrets.")

    def _plan(self, plan: Plan, options: SystemdOptions) -> None:
        if not Path(options.executable).is_absolute():
            raise InvalidInputError(f"--executable must be an absolute path; received "
                                    f"{options.executable!r}.", field="executable")
        if (options.tls_cert is None) != (options.tls_key is None):
            raise InvalidInputError("Give both --tls-cert and --tls-key, or neither.")
        source = plan.source
        unit_name = f"mlharbor-{source.slug}"
        args = [options.executable, "serve", source.ref, "--host", options.host,
                "--port", str(options.port)]
        if options.workers:
            args += ["--workers", str(options.workers)]
        if options.tls_cert and options.tls_key:
            args += ["--tls-cert", str(options.tls_cert), "--tls-key", str(options.tls_key)]
        env_file = f"/etc/mlharbor/{unit_name}.env"
        plain = {k: v for k, v in options.environment.config.items()
                 if k not in ("MLHARBOR_HOME", "MLHARBOR_SERVER__HOST", "MLHARBOR_SERVER__PORT")}
        plan.files.append(PlannedFile(f"{unit_name}.service", render(
            "systemd/unit.service.j2", ref=source.ref, version_ref=source.version.ref,
            unit=f"{unit_name}.service", unit_name=unit_name, user=options.user,
            env_file=env_file, state_dir=f"mlharbor/{source.slug}", environment=plain,
            exec_start=shlex.join(args), stop_timeout=45)))
        example = [f"# Secrets for {unit_name}.service: copy to {env_file}, chmod 0600."]
        example += [f"{'# ' if r.optional else ''}{r.env}=" for r in
                    options.environment.secrets]
        plan.files.append(PlannedFile(f"{unit_name}.env.example", "\n".join(example) + "\n"))
        plan.details = {"unit": f"{unit_name}.service"}
