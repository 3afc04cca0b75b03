"""Where finished log segments live (a local folder or S3) and how they are sealed.

A :class:`SegmentStore` puts, lists, reads and deletes whole files by name; names are paths
relative to the store root (``endpoint=churn/<first>-<last>-<seq>.parquet``). When a key wrapper
is configured (the security layer's envelope keys), every segment and journal frame is sealed
with AES-256-GCM under a data key wrapped by it (:class:`Sealer`), reused for a bounded time.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from mlharbor.core.errors import ConfigError, IntegrityError, UnavailableError

if TYPE_CHECKING:
    from mlharbor.settings import Settings

MAGIC = b"MLHSEAL1"
# The KMS encryption context of log data keys; each blob's own name is bound by AES-GCM.
KEY_CONTEXT = "mlharbor-prediction-log"


class SegmentStore(Protocol):
    def put(self, name: str, data: bytes | memoryview) -> None: ...

    def names(self, prefix: str = "") -> list[str]: ...

    def get(self, name: str) -> bytes: ...

    def delete(self, name: str) -> None: ...


class SegmentDraft(Protocol):
    """A segment being written piece by piece (``sink``, a binary file for the Parquet
    writer), invisible to readers until :meth:`publish` names it at once (its name holds its
    rows' time span, known only at the end)."""

    sink: Any

    def publish(self, name: str) -> None: ...

    def discard(self) -> None: ...


def draft_segment(store: SegmentStore, sealer: Sealer | None) -> SegmentDraft:
    """A draft written straight to the store's disk where it can be (a local folder, no key),
    so its bytes never sit in memory whole; elsewhere in memory, then sealed and put whole:
    AES-GCM seals a blob at once, and an S3 ``put_object`` takes one body."""
    # Exactly a local folder: a subclass may change how a segment is written (its put), and
    # a draft published by renaming would go around it.
    if sealer is None and type(store) is LocalSegments:
        return store.draft()
    return _MemoryDraft(store, sealer)


class _MemoryDraft:
    def __init__(self, store: SegmentStore, sealer: Sealer | None) -> None:
        import pyarrow as pa

        self.store, self.sealer = store, sealer
        self.sink = pa.BufferOutputStream()

    def publish(self, name: str) -> None:
        # Arrow's own growing buffer, handed over without a copy.
        data: bytes | memoryview = memoryview(self.sink.getvalue())
        if self.sealer is not None:
            data = self.sealer.seal(bytes(data), name)
        self.store.put(name, data)

    def discard(self) -> None:
        self.sink = None


class _FileDraft:
    """A temporary file in the store's folder, renamed into place when published."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        # Ends in .tmp: listings skip it, like put()'s temporary files.
        self.path = root / f".draft-{uuid.uuid4().hex}.tmp"
        self.sink = self.path.open("wb")

    def publish(self, name: str) -> None:
        self.sink.flush()
        os.fsync(self.sink.fileno())
        self.sink.close()
        target = self.root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        self.path.replace(target)  # atomic: a reader sees the whole segment or none of it

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self.sink.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


class LocalSegments:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._swept = False

    def put(self, name: str, data: bytes | memoryview) -> None:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        # Unique per writer: two readers promoting the same feedback inbox at once write the
        # same segment; a shared temporary name made one's rename fail.
        tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
        with tmp.open("wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)  # atomic: a reader sees the whole segment or none of it

    def names(self, prefix: str = "") -> list[str]:
        base = self.root / prefix if prefix else self.root
        if not base.exists():
            return []
        return sorted(p.relative_to(self.root).as_posix() for p in base.rglob("*")
                      if p.is_file() and not p.name.endswith(".tmp"))

    def get(self, name: str) -> bytes:
        return (self.root / name).read_bytes()

    def draft(self) -> SegmentDraft:
        """A segment written to a temporary file here, published by renaming it. The first
        draft of this store sweeps away drafts a crashed compactor left (see
        :meth:`sweep_drafts`)."""
        if not self._swept:
            self._swept = True
            self.sweep_drafts()
        return _FileDraft(self.root)

    def sweep_drafts(self, max_age_s: float = 3600.0) -> int:
        """Delete drafts older than ``max_age_s`` (a compactor that crashed mid-file left
        them; a live one finishes a file within its timeout, minutes); returns how many."""
        cutoff = time.time() - max_age_s
        removed = 0
        for path in self.root.glob(".draft-*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
        return removed

    def delete(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.root / name).unlink()


class S3Segments:
    def __init__(self, client: Any, bucket: str, prefix: str) -> None:
        self.client, self.bucket, self.prefix = client, bucket, prefix.strip("/")

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def _call(self, what: str, fn: Any) -> Any:
        try:
            return fn()
        except Exception as exc:
            raise UnavailableError(
                f"The prediction log store s3://{self.bucket}/{self.prefix} failed to {what}: "
                f"{type(exc).__name__}.",
                hint="Records stay in the local journal and are retried.",
            ) from exc

    def put(self, name: str, data: bytes | memoryview) -> None:
        body = data if isinstance(data, bytes) else bytes(data)
        self._call("write", lambda: self.client.put_object(
            Bucket=self.bucket, Key=self._key(name), Body=body))

    def names(self, prefix: str = "") -> list[str]:
        def listing() -> list[str]:
            out, token = [], None
            start = self._key(prefix) if prefix else (self.prefix + "/" if self.prefix else "")
            while True:
                kwargs = {"Bucket": self.bucket, "Prefix": start}
                if token:
                    kwargs["ContinuationToken"] = token
                page = self.client.list_objects_v2(**kwargs)
                cut = len(self.prefix) + 1 if self.prefix else 0
                out += [o["Key"][cut:] for o in page.get("Contents", [])]
                token = page.get("NextContinuationToken")
                if not token:
                    return sorted(out)
        return list(self._call("list", listing))

    def get(self, name: str) -> bytes:
        return bytes(self._call("read", lambda: self.client.get_object(
            Bucket=self.bucket, Key=self._key(name))["Body"].read()))

    def delete(self, name: str) -> None:
        self._call("delete", lambda: self.client.delete_object(
            Bucket=self.bucket, Key=self._key(name)))


def open_segments(uri: str, settings: Settings) -> SegmentStore:
    """``s3://bucket/prefix`` or a folder."""
    if uri.startswith("s3://"):
        import boto3

        bucket, _, prefix = uri[5:].partition("/")
        if not bucket:
            raise ConfigError(f"The prediction log URI {uri!r} names no bucket.",
                              hint="Use s3://bucket/prefix.")
        client = boto3.client("s3", endpoint_url=settings.s3_endpoint_url,
                              region_name=settings.s3_region)
        return S3Segments(client, bucket, prefix)
    return LocalSegments(Path(uri.removeprefix("file://")))


class Sealer:
    """AES-256-GCM under a data key wrapped by the configured key, with a random nonce per
    sealed blob.

    Layout: ``MAGIC | len(header) (4 bytes) | header JSON {kek, wrapped, ctx} | nonce |
    ciphertext``; the blob's name is bound as associated data, so a sealed blob cannot be
    swapped for another. Data keys come from a :class:`~mlharbor.security.envelope.DataKeyCache`
    (one ``GenerateDataKey`` per ``max_age_s`` or ``max_uses`` blobs), and opened keys are kept
    as long, so neither a journal write nor reading it back is a KMS call each. Blobs sealed by
    older versions (a key per blob, wrapped with the blob's name as context, no ``ctx``) open
    as before.
    """

    def __init__(self, wrapper: Any, *, max_age_s: float = 300.0, max_uses: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        from mlharbor.security.envelope import DataKeyCache

        self.wrapper = wrapper
        self.keys = DataKeyCache(wrapper, context=KEY_CONTEXT, max_age_s=max_age_s,
                                 max_uses=max_uses, clock=clock)

    def seal(self, data: bytes, name: str) -> bytes:
        import orjson
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        key, wrapped = self.keys.current()
        nonce = os.urandom(12)
        header = orjson.dumps({"kek": self.wrapper.kek_id, "wrapped": wrapped,
                               "ctx": KEY_CONTEXT})
        body = AESGCM(key).encrypt(nonce, data, name.encode())
        return MAGIC + len(header).to_bytes(4, "big") + header + nonce + body

    def open(self, blob: bytes, name: str) -> bytes:
        import orjson
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        if not blob.startswith(MAGIC):
            raise IntegrityError(f"Log blob {name!r} is not sealed though a key is configured.")
        size = int.from_bytes(blob[8:12], "big")
        try:
            header = orjson.loads(blob[12:12 + size])
            wrapped, context = header["wrapped"], str(header.get("ctx", name))
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise IntegrityError(f"Log blob {name!r} has a damaged key header.") from exc
        key = self.keys.unwrap(wrapped, context)
        rest = blob[12 + size:]
        try:
            return bytes(AESGCM(key).decrypt(rest[:12], rest[12:], name.encode()))
        except InvalidTag as exc:
            raise IntegrityError(f"Log blob {name!r} failed authentication: it was changed "
                                 "or moved.") from exc


def sealer_from_settings(settings: Settings) -> Sealer | None:
    from mlharbor.security.envelope import wrapper_from_settings

    wrapper = wrapper_from_settings(settings)
    if wrapper is None:
        return None
    sec = settings.security
    return Sealer(wrapper, max_age_s=sec.data_key_max_age_s, max_uses=sec.data_key_max_uses)
