"""The artifact store interface: immutable blobs addressed by their SHA-256.

A blob is written once under its digest and never changed, so two versions that share a file
share its bytes, and every read can prove it got what was written: stores verify the digest on
every read and raise :class:`IntegrityError` naming what the blob was (model, version, file).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol

from mlharbor.core.errors import ConfigError, IntegrityError, InvalidInputError

if TYPE_CHECKING:
    from mlharbor.settings import Settings

CHUNK = 1024 * 1024
_DIGEST_RE = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class BlobInfo:
    sha256: str
    size: int


class ArtifactStore(Protocol):
    """What the registry needs from a place that keeps bytes."""

    uri: str

    def put_file(self, path: Path) -> BlobInfo:
        """Store the file's bytes under their digest (a no-op when already present)."""
        ...

    def get_file(self, sha256: str, dest: Path, *, label: str) -> None:
        """Write the blob to ``dest`` atomically, verifying its digest; ``label`` names it."""
        ...

    def exists(self, sha256: str) -> bool: ...

    def delete(self, sha256: str) -> None: ...


def check_digest(sha256: str) -> str:
    if not isinstance(sha256, str) or not _DIGEST_RE.fullmatch(sha256):
        raise InvalidInputError(f"{sha256!r} is not a SHA-256 hex digest.")
    return sha256


def digest_file(path: Path) -> BlobInfo:
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return BlobInfo(h.hexdigest(), size)


def copy_hashing(src: BinaryIO, dst: BinaryIO) -> BlobInfo:
    h = hashlib.sha256()
    size = 0
    while chunk := src.read(CHUNK):
        h.update(chunk)
        dst.write(chunk)
        size += len(chunk)
    return BlobInfo(h.hexdigest(), size)


def integrity_failure(label: str, expected: str, actual: str) -> IntegrityError:
    return IntegrityError(
        f"Stored artifact {label} is corrupt: its SHA-256 is {actual[:12]}..., "
        f"expected {expected[:12]}....",
        hint="The bytes were changed after registration; restore the artifact store from a "
        "backup or register the version again.",
        expected=expected,
        actual=actual,
    )


StoreFactory = Callable[[str, "Settings"], ArtifactStore]


def _local(uri: str, settings: Settings) -> ArtifactStore:
    from mlharbor.registry.artifacts.local import LocalArtifactStore

    return LocalArtifactStore(Path(uri.removeprefix("file://")))


def _s3(uri: str, settings: Settings) -> ArtifactStore:
    from mlharbor.registry.artifacts.s3 import S3ArtifactStore

    return S3ArtifactStore.from_uri(
        uri, endpoint_url=settings.s3_endpoint_url, region=settings.s3_region
    )


SCHEMES: dict[str, StoreFactory] = {"file": _local, "s3": _s3}


def open_artifact_store(uri: str, settings: Settings) -> ArtifactStore:
    """The store for ``uri``: a folder, ``file://`` URL or ``s3://bucket/prefix``."""
    scheme = uri.split("://", 1)[0] if "://" in uri else "file"
    try:
        factory = SCHEMES[scheme]
    except KeyError:
        known = ", ".join(sorted(SCHEMES))
        raise ConfigError(
            f"Unknown artifact store scheme {scheme!r} in {uri!r}. Known schemes: {known}.",
            hint="Set MLHARBOR_ARTIFACT_URI to a folder or s3://bucket/prefix.",
        ) from None
    return factory(uri, settings)
