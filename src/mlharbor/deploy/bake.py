"""A one-version registry baked into an image: SQLite metadata plus content-addressed files.

The image then runs the stock ``mlharbor serve REF`` against it, exactly as against the team's
registry. The version keeps its number, description, tags (signatures included), metrics,
params, lineage, manifest and aliases, so ``churn@champion`` and ``churn:3`` both resolve inside
the image to what they meant when it was built. Files are stored unencrypted: an image that
must not carry the model in clear is built with ``--no-bake`` and fetches it at start.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from mlharbor.core.errors import ConflictError

if TYPE_CHECKING:
    from mlharbor.core.records import ModelVersion
    from mlharbor.registry.service import Registry

DB_FILE = "mlharbor.db"
ARTIFACTS = "artifacts"


def bake_version(source: Registry, version: ModelVersion, folder: Path, *, actor: str
                 ) -> ModelVersion:
    """Copy ``version`` (files verified on download) into a new registry in ``folder``."""
    from sqlalchemy import update

    from mlharbor.registry.schema import models

    if (folder / DB_FILE).exists():
        raise ConflictError(f"{folder / DB_FILE} already exists; bake into an empty folder.")
    files = source.download(version)
    folder.mkdir(parents=True, exist_ok=True)
    baked = open_baked(folder)
    try:
        baked.create_model(version.name, actor=actor,
                           description=f"baked from {version.ref} by mlharbor build")
        # Registration takes the next number; start the count so the version keeps its own.
        with baked.store.db.write() as conn:
            conn.execute(update(models).where(models.c.name == version.name)
                         .values(last_version=version.version - 1))
        copied = baked.register_version(
            version.name, files, description=version.description, tags=dict(version.tags),
            metrics=dict(version.metrics), params=dict(version.params),
            lineage=dict(version.lineage), manifest=version.manifest, actor=actor,
        )
        for alias in version.aliases:
            baked.set_alias(version.name, alias, copied.version, actor=actor,
                            reason=f"as in the source registry when {version.ref} was baked")
        copied = baked.get_version(copied.ref)
    finally:
        baked.close()
    return copied


def open_baked(folder: Path) -> Registry:
    """The baked registry in ``folder``; closing it leaves the folder ready to ship."""
    from mlharbor.registry.service import Registry
    from mlharbor.settings import Settings

    settings = Settings(home=folder / ".home", database_url=f"sqlite:///{folder / DB_FILE}",
                        artifact_uri=str(folder / ARTIFACTS))
    registry = Registry.from_settings(settings)
    close = registry.close

    def close_and_tidy() -> None:
        close()
        # The image copies the database to a writable folder at start; no WAL side files.
        for side in ("-wal", "-shm"):
            Path(f"{folder / DB_FILE}{side}").unlink(missing_ok=True)
        shutil.rmtree(folder / ".home", ignore_errors=True)
        _make_world_readable(folder)

    registry.close = close_and_tidy  # type: ignore[method-assign]
    return registry


def _make_world_readable(folder: Path) -> None:
    """The artifact store keeps blobs owner-only; the image's non-root user must read them."""
    folder.chmod(0o755)
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
