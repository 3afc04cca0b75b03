"""An artifact store that envelope-encrypts every blob it is given (see ``envelope``).

Blobs keep their plaintext SHA-256 as address, so versions, dedup and verification work as
before. The ciphertext goes to the wrapped store as a blob of its own; the row in
``artifact_envelopes`` links the two and holds the wrapped data key and nonce prefix.
Rotation (:func:`rotate`) re-wraps every data key in one transaction; no ciphertext changes.

Fails closed: without the key that wrapped an artifact, nothing loads and nothing is written.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, func, select, update
from sqlalchemy.exc import IntegrityError as SAIntegrityError

from mlharbor.core.clock import utcnow
from mlharbor.core.errors import ConfigError, IntegrityError
from mlharbor.security.envelope import (
    NONCE_PREFIX,
    SEGMENT,
    KeyWrapper,
    decrypt_stream,
    encrypt_stream,
)
from mlharbor.security.schema import artifact_envelopes


@dataclasses.dataclass(frozen=True, slots=True)
class StoredBlob:
    """What ``put_file`` returns: the plaintext's digest and size (as the store protocol)."""

    sha256: str
    size: int


class EncryptedArtifactStore:
    def __init__(self, inner: Any, engine: Engine, wrapper: KeyWrapper | None) -> None:
        self.inner = inner
        self.engine = engine
        self.wrapper = wrapper
        self.uri = inner.uri

    @contextlib.contextmanager
    def _tx(self, *, write: bool) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            if write:
                conn = conn.execution_options(mlharbor_write=True)
            with conn.begin():
                yield conn

    def _require_wrapper(self, doing: str) -> KeyWrapper:
        if self.wrapper is None:
            raise ConfigError(
                f"Cannot {doing}: this registry's artifacts are encrypted and no master key is "
                "configured.",
                hint="Set MLHARBOR_SECURITY__MASTER_KEY_FILE (or MASTER_KEY, or KMS_KEY_ID) to "
                     "the key the artifacts were encrypted with.",
            )
        return self.wrapper

    def _row(self, sha256: str) -> Any:
        with self._tx(write=False) as conn:
            return conn.execute(select(artifact_envelopes).where(
                artifact_envelopes.c.plain_sha256 == sha256)).first()

    def put_file(self, path: Path) -> StoredBlob:
        wrapper = self._require_wrapper("store an artifact")
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        data_key = AESGCM.generate_key(bit_length=256)
        prefix = os.urandom(NONCE_PREFIX)
        with tempfile.TemporaryDirectory(prefix="mlharbor-enc-") as tmp:
            sealed = Path(tmp) / "blob"
            # The plaintext digest is only known after one pass, and it is the associated
            # data of every segment; so hash first, then encrypt in a second pass.
            plain_sha, size = _digest(path)
            if self._present(plain_sha):
                return StoredBlob(plain_sha, size)
            with path.open("rb") as src, sealed.open("wb") as dst:
                check_sha, _ = encrypt_stream(src, dst, data_key, prefix, plain_sha.encode())
            if check_sha != plain_sha:
                raise IntegrityError(f"{str(path)!r} changed while it was being stored.")
            cipher = self.inner.put_file(sealed)
        wrapped = wrapper.wrap(data_key, plain_sha)
        try:
            with self._tx(write=True) as conn:
                conn.execute(artifact_envelopes.insert().values(
                    plain_sha256=plain_sha, cipher_sha256=cipher.sha256, size=size,
                    chunk_size=SEGMENT, nonce_prefix=base64.b64encode(prefix).decode(),
                    kek_id=wrapper.kek_id, wrapped_key=wrapped, created_at=utcnow(),
                    rotated_at=None))
        except SAIntegrityError:
            # Another writer stored the same plaintext first; its envelope serves both.
            pass
        return StoredBlob(plain_sha, size)

    def _present(self, sha256: str) -> bool:
        row = self._row(sha256)
        return row is not None and bool(self.inner.exists(row.cipher_sha256))

    def get_file(self, sha256: str, dest: Path, *, label: str) -> None:
        row = self._row(sha256)
        if row is None:
            # Stored before encryption was turned on: plaintext, still digest-verified.
            self.inner.get_file(sha256, dest, label=label)
            return
        wrapper = self._require_wrapper(f"load {label}")
        if row.kek_id != wrapper.kek_id:
            raise ConfigError(
                f"Cannot load {label}: its data key is wrapped by {row.kek_id}, but the "
                f"configured master key is {wrapper.kek_id}.",
                hint="Configure the key the artifacts were encrypted with, or finish a "
                     "rotation with `mlharbor keys rotate`.",
            )
        data_key = wrapper.unwrap(row.wrapped_key, sha256)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".dec-", dir=dest.parent) as tmp:
            sealed = Path(tmp) / "sealed"
            self.inner.get_file(row.cipher_sha256, sealed, label=label)
            plain = Path(tmp) / "plain"
            with sealed.open("rb") as src, plain.open("wb") as dst:
                got = decrypt_stream(src, dst, data_key, base64.b64decode(row.nonce_prefix),
                                     sha256.encode(), row.chunk_size)
            if got != sha256:
                raise IntegrityError(f"Stored artifact {label} decrypted to the wrong bytes.",
                                     expected=sha256, actual=got)
            os.replace(plain, dest)

    def exists(self, sha256: str) -> bool:
        return self._present(sha256) or bool(self.inner.exists(sha256))

    def delete(self, sha256: str) -> None:
        row = self._row(sha256)
        if row is None:
            self.inner.delete(sha256)
            return
        with self._tx(write=True) as conn:
            conn.execute(artifact_envelopes.delete().where(
                artifact_envelopes.c.plain_sha256 == sha256))
        self.inner.delete(row.cipher_sha256)


def _digest(path: Path) -> tuple[str, int]:
    import hashlib

    h, size = hashlib.sha256(), 0
    with path.open("rb") as fh:
        while chunk := fh.read(SEGMENT):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def has_envelopes(engine: Engine) -> bool:
    """True when some artifact in this database was stored encrypted."""
    with engine.connect() as conn:
        return bool(conn.execute(select(func.count()).select_from(artifact_envelopes)).scalar())


def rotate(engine: Engine, old: KeyWrapper, new: KeyWrapper) -> int:
    """Re-wrap every data key wrapped by ``old`` with ``new``, in one transaction.

    Returns how many keys were re-wrapped; keys already wrapped by ``new`` are left alone, so
    an interrupted rotation can simply be run again. The ciphertext is never touched.
    """
    with engine.connect() as conn:
        conn = conn.execution_options(mlharbor_write=True)
        with conn.begin():
            rows = conn.execute(select(artifact_envelopes.c.plain_sha256,
                                       artifact_envelopes.c.kek_id,
                                       artifact_envelopes.c.wrapped_key)).all()
            strangers = sorted({r.kek_id for r in rows} - {old.kek_id, new.kek_id})
            if strangers:
                raise ConfigError(
                    f"Some data keys are wrapped by neither the current nor the new key: "
                    f"{', '.join(strangers)}; nothing was rotated.",
                    hint="Rotate those with the key that wrapped them first.",
                )
            count = 0
            now = utcnow()
            for row in rows:
                if row.kek_id != old.kek_id or old.kek_id == new.kek_id:
                    continue
                data_key = old.unwrap(row.wrapped_key, row.plain_sha256)
                conn.execute(update(artifact_envelopes)
                             .where(artifact_envelopes.c.plain_sha256 == row.plain_sha256)
                             .values(kek_id=new.kek_id,
                                     wrapped_key=new.wrap(data_key, row.plain_sha256),
                                     rotated_at=now))
                count += 1
    return count
