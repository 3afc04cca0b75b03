"""The settings a deployed replica runs with, as plain environment variables and secret refs.

Replicas read ``MLHARBOR_*`` variables like any entry point (``settings.py``). Non-secret ones
go into a ConfigMap (or the platform's plain environment); secrets are only ever *referenced*
(Kubernetes Secret keys, cloud secret stores), never written into a generated file.

Two registry modes: ``baked`` (the image carries a one-version registry, nothing shared) and
``shared`` (replicas share the team's PostgreSQL and S3: the artifact URI and S3 endpoint come
from the current settings, the database URL and S3 credentials from a Secret).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Literal

from mlharbor.core.errors import ConfigError

if TYPE_CHECKING:
    from mlharbor.settings import Settings

RegistryMode = Literal["baked", "shared"]
PORT = 8080
HOME = "/var/lib/mlharbor"
# Managed endpoints (SageMaker, Vertex AI, Azure ML) authenticate callers themselves and send
# no mlharbor key, so their containers let credential-less callers predict, and nothing more.
MANAGED_ENDPOINT_AUTH = {"MLHARBOR_SECURITY__ANONYMOUS_GRANTS": '["predictor"]'}


@dataclasses.dataclass(frozen=True, slots=True)
class SecretRef:
    """An environment variable filled from a secret key; ``optional`` ones may be absent."""

    env: str
    key: str
    optional: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class ReplicaEnvironment:
    mode: RegistryMode
    config: dict[str, str]
    secrets: tuple[SecretRef, ...]


def replica_environment(settings: Settings, mode: RegistryMode | None = None
                        ) -> ReplicaEnvironment:
    """The environment of a serving replica; ``mode=None`` picks ``shared`` when it can."""
    database = settings.database_url_value
    artifacts = settings.artifact_uri_value
    shareable = not database.startswith("sqlite") and artifacts.startswith("s3://")
    chosen: RegistryMode = mode or ("shared" if shareable else "baked")
    config = {
        "MLHARBOR_SERVER__HOST": "0.0.0.0",
        "MLHARBOR_SERVER__PORT": str(PORT),
        "MLHARBOR_HOME": HOME,
    }
    secrets = [SecretRef("MLHARBOR_SECURITY__MASTER_KEY", "master-key", optional=True)]
    if chosen == "shared":
        if not shareable:
            raise ConfigError(
                "Replicas can only share a registry on a database server and S3; the current "
                f"settings use {database.split(':', 1)[0]} and {artifacts!r}.",
                hint="Set MLHARBOR_DATABASE_URL (PostgreSQL) and MLHARBOR_ARTIFACT_URI "
                "(s3://bucket/prefix), or deploy a baked image (--registry baked).",
            )
        config["MLHARBOR_ARTIFACT_URI"] = artifacts
        config["MLHARBOR_S3_REGION"] = settings.s3_region
        if settings.s3_endpoint_url:
            config["MLHARBOR_S3_ENDPOINT_URL"] = settings.s3_endpoint_url
        secrets[:0] = [
            SecretRef("MLHARBOR_DATABASE_URL", "database-url"),
            SecretRef("AWS_ACCESS_KEY_ID", "aws-access-key-id", optional=True),
            SecretRef("AWS_SECRET_ACCESS_KEY", "aws-secret-access-key", optional=True),
        ]
    return ReplicaEnvironment(chosen, config, tuple(secrets))
