"""Blobs in a local folder: ``ROOT/sha256/ab/abcdef...``.

Writes go to a temporary file in the target folder, are flushed to disk, then renamed into
place, so a reader never sees half a blob and a crash leaves at most a stray temporary file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from mlharbor.core.errors import UnavailableError
from mlharbor.registry.artifacts.base import (
    BlobInfo,
    check_digest,
    copy_hashing,
    integrity_failure,
)


class LocalArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = root.expanduser().absolute()
        self.uri = str(self.root)

    def _path(self, sha256: str) -> Path:
        check_digest(sha256)
        return self.root / "sha256" / sha256[:2] / sha256

    def put_file(self, path: Path) -> BlobInfo:
        staging = self.root / "tmp"
        try:
            staging.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(dir=staging, prefix="put-")
            tmp = Path(tmp_name)
            try:
                with path.open("rb") as src, os.fdopen(fd, "wb") as dst:
                    info = copy_hashing(src, dst)
                    dst.flush()
                    os.fsync(dst.fileno())
                final = self._path(info.sha256)
                if final.exists():
                    tmp.unlink()
                    return info
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp, final)
                return info
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise UnavailableError(
                f"Cannot write to the artifact store at {self.uri}: {exc.strerror}."
            ) from exc

    def get_file(self, sha256: str, dest: Path, *, label: str) -> None:
        source = self._path(sha256)
        try:
            src = source.open("rb")
        except FileNotFoundError as exc:
            raise integrity_failure(label, sha256, "missing") from exc
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=".get-")
        tmp = Path(tmp_name)
        try:
            with src, os.fdopen(fd, "wb") as dst:
                info = copy_hashing(src, dst)
            if info.sha256 != sha256:
                raise integrity_failure(label, sha256, info.sha256)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)

    def exists(self, sha256: str) -> bool:
        return self._path(sha256).is_file()

    def delete(self, sha256: str) -> None:
        self._path(sha256).unlink(missing_ok=True)
