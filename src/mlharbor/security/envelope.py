"""Envelope encryption: AES-256-GCM data keys, wrapped by a master key or by AWS KMS.

Each artifact gets a fresh 256-bit data key. The file is encrypted in 1 MiB segments (the
STREAM construction: nonce = 7-byte random prefix + 4-byte segment counter + 1-byte "last"
flag, associated data = the plaintext digest), so segments cannot be reordered, dropped or
moved to another artifact, and memory stays flat for large models. Only the *wrapped* data key
is stored; re-wrapping (key rotation) never touches the ciphertext.

Key wrappers name themselves by ``kek_id`` (``local:<fingerprint>`` or ``kms:<key id>``); a
fingerprint is a hash of the key, so it identifies the key without revealing it.

Small blobs written often (the prediction journal seals a frame several times a second) reuse
one data key for a bounded time and number of uses (:class:`DataKeyCache`), so KMS sees one
``GenerateDataKey`` per key lifetime instead of one call per write. Each blob still has its own
random nonce and binds its name as associated data; plaintext keys live only in memory.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from mlharbor.core.errors import ConfigError, IntegrityError, UnavailableError

SEGMENT = 1024 * 1024
TAG = 16
NONCE_PREFIX = 7


class KeyWrapper(Protocol):
    kek_id: str

    def wrap(self, data_key: bytes, context: str) -> str: ...

    def unwrap(self, wrapped: str, context: str) -> bytes: ...

    def generate(self, context: str) -> tuple[bytes, str]:
        """A fresh 256-bit data key and its wrapped form (one KMS call with KMS)."""
        ...


class LocalMasterKey:
    """A 256-bit master key held by this process (from a file or an environment variable)."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ConfigError(
                f"The master key must be 32 bytes (256 bits); it decodes to {len(key)} bytes.",
                hint="Create one with `mlharbor keys generate-master --out FILE`.",
            )
        self._key = key
        self.kek_id = "local:" + hashlib.sha256(b"mlharbor-kek-id\0" + key).hexdigest()[:16]

    @classmethod
    def from_text(cls, text: str, *, source: str) -> LocalMasterKey:
        try:
            raw = base64.b64decode(text.strip(), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ConfigError(f"The master key from {source} is not valid base64.",
                              hint="It must be 32 random bytes, base64-encoded.") from exc
        return cls(raw)

    def wrap(self, data_key: bytes, context: str) -> str:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        nonce = os.urandom(12)
        sealed = AESGCM(self._key).encrypt(nonce, data_key, context.encode())
        return base64.b64encode(nonce + sealed).decode()

    def generate(self, context: str) -> tuple[bytes, str]:
        key = os.urandom(32)
        return key, self.wrap(key, context)

    def unwrap(self, wrapped: str, context: str) -> bytes:
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        blob = base64.b64decode(wrapped)
        try:
            return AESGCM(self._key).decrypt(blob[:12], blob[12:], context.encode())
        except InvalidTag as exc:
            raise IntegrityError(
                f"The wrapped data key of artifact {context[:12]}... does not open with the "
                f"master key {self.kek_id}: it was changed or belongs to another artifact."
            ) from exc


class KmsMasterKey:
    """Data keys wrapped by an AWS KMS key; the master key never leaves KMS."""

    def __init__(self, key_id: str, client: Any) -> None:
        self.key_id = key_id
        self.client = client
        self.kek_id = f"kms:{key_id}"

    @classmethod
    def connect(cls, key_id: str, *, endpoint_url: str | None, region: str) -> KmsMasterKey:
        import boto3

        return cls(key_id, boto3.client("kms", endpoint_url=endpoint_url, region_name=region))

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn()
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "error")
            if code in ("InvalidCiphertextException", "IncorrectKeyException"):
                raise IntegrityError(
                    f"KMS refused to {what} a data key with {self.kek_id} ({code}).",
                    hint="The artifact was wrapped by another KMS key; check "
                         "security.kms_key_id.",
                ) from exc
            raise UnavailableError(f"KMS failed to {what} a data key with {self.kek_id}: "
                                   f"{code}.") from exc
        except BotoCoreError as exc:
            raise UnavailableError(f"KMS is unreachable ({type(exc).__name__}).") from exc

    def wrap(self, data_key: bytes, context: str) -> str:
        out = self._call("wrap", lambda: self.client.encrypt(
            KeyId=self.key_id, Plaintext=data_key,
            EncryptionContext={"mlharbor-artifact": context}))
        return base64.b64encode(out["CiphertextBlob"]).decode()

    def generate(self, context: str) -> tuple[bytes, str]:
        out = self._call("generate", lambda: self.client.generate_data_key(
            KeyId=self.key_id, KeySpec="AES_256",
            EncryptionContext={"mlharbor-artifact": context}))
        return bytes(out["Plaintext"]), base64.b64encode(out["CiphertextBlob"]).decode()

    def unwrap(self, wrapped: str, context: str) -> bytes:
        out = self._call("unwrap", lambda: self.client.decrypt(
            KeyId=self.key_id, CiphertextBlob=base64.b64decode(wrapped),
            EncryptionContext={"mlharbor-artifact": context}))
        return bytes(out["Plaintext"])


class DataKeyCache:
    """Data keys from ``wrapper``, each reused for at most ``max_age_s`` seconds and
    ``max_uses`` blobs, and the keys of blobs being opened, kept as long (at most
    ``max_open`` of them).

    Why bounded both ways: the lifetime bounds how long one key protects new data and how
    long a plaintext key stays in memory; the use count keeps random 96-bit GCM nonces far
    from colliding however fast blobs are sealed. ``max_age_s = 0`` gives every blob a fresh
    key. ``clock`` is injectable (tests advance it instead of sleeping). Plaintext keys are
    held in this object only: it refuses to be pickled, and nothing writes them anywhere.
    """

    def __init__(self, wrapper: KeyWrapper, *, context: str, max_age_s: float = 300.0,
                 max_uses: int = 100_000, max_open: int = 64,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_age_s < 0 or max_uses < 1 or max_open < 1:
            raise ConfigError(
                f"Data key limits must be a lifetime >= 0 s and counts >= 1; got "
                f"max_age_s={max_age_s}, max_uses={max_uses}, max_open={max_open}.")
        self.wrapper = wrapper
        self.context = context
        self.max_age_s = max_age_s
        self.max_uses = max_uses
        self.max_open = max_open
        self.clock = clock
        self._lock = threading.Lock()
        self._key: tuple[bytes, str] | None = None
        self._born = 0.0
        self._uses = 0
        self._opened: OrderedDict[tuple[str, str], tuple[bytes, float]] = OrderedDict()

    def current(self) -> tuple[bytes, str]:
        """(plaintext key, wrapped key) to seal one blob with; a new one when the current one
        is too old or used up (that call reaches KMS; the others do not)."""
        with self._lock:
            now = self.clock()
            if (self._key is None or self._uses >= self.max_uses
                    or now - self._born >= self.max_age_s):
                self._key = self.wrapper.generate(self.context)
                self._born, self._uses = now, 0
                # A key just made opens the blobs it seals without a KMS call either.
                self._remember((self._key[1], self.context), self._key[0], now)
            self._uses += 1
            return self._key

    def unwrap(self, wrapped: str, context: str) -> bytes:
        """The plaintext of a wrapped data key, from memory when it was opened recently."""
        with self._lock:
            now = self.clock()
            hit = self._opened.get((wrapped, context))
            if hit is not None and now - hit[1] < self.max_age_s:
                self._opened.move_to_end((wrapped, context))
                return hit[0]
        key = self.wrapper.unwrap(wrapped, context)
        with self._lock:
            self._remember((wrapped, context), key, self.clock())
        return key

    def _remember(self, ident: tuple[str, str], key: bytes, now: float) -> None:
        if self.max_age_s <= 0:
            return
        self._opened[ident] = (key, now)
        self._opened.move_to_end(ident)
        while len(self._opened) > self.max_open:
            self._opened.popitem(last=False)

    def __reduce__(self) -> Any:
        raise TypeError("A DataKeyCache holds plaintext data keys and is never pickled.")

    def __repr__(self) -> str:
        return (f"DataKeyCache({self.wrapper.kek_id!r}, max_age_s={self.max_age_s}, "
                f"max_uses={self.max_uses})")


def wrapper_from_settings(settings: Any) -> KeyWrapper | None:
    """The configured key wrapper, or None when artifacts are not to be encrypted."""
    sec = settings.security
    chosen = [n for n, v in (("kms_key_id", sec.kms_key_id), ("master_key", sec.master_key),
                             ("master_key_file", sec.master_key_file)) if v]
    if len(chosen) > 1:
        raise ConfigError(f"Configure one way to wrap artifact keys; found {', '.join(chosen)}.",
                          hint="Keep either security.kms_key_id or a master key.")
    if sec.kms_key_id:
        return KmsMasterKey.connect(sec.kms_key_id, endpoint_url=sec.kms_endpoint_url,
                                    region=settings.s3_region)
    if sec.master_key is not None:
        return LocalMasterKey.from_text(sec.master_key.get_secret_value(),
                                        source="MLHARBOR_SECURITY__MASTER_KEY")
    if sec.master_key_file is not None:
        return master_key_from_file(sec.master_key_file)
    return None


def master_key_from_file(path: Path) -> LocalMasterKey:
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"Cannot read the master key file {str(path)!r}.",
                          hint="Check security.master_key_file and its permissions.") from exc
    return LocalMasterKey.from_text(text, source=f"file {str(path)!r}")


def new_master_key_text() -> str:
    return base64.b64encode(os.urandom(32)).decode()


# -- the stream --------------------------------------------------------------------------------

def _nonce(prefix: bytes, counter: int, last: bool) -> bytes:
    return prefix + counter.to_bytes(4, "big") + (b"\x01" if last else b"\x00")


def encrypt_stream(src: BinaryIO, dst: BinaryIO, key: bytes, prefix: bytes,
                   aad: bytes) -> tuple[str, int]:
    """Encrypt ``src`` into ``dst``; returns the plaintext's (sha256, size)."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    aead, digest, size, counter = AESGCM(key), hashlib.sha256(), 0, 0
    chunk = src.read(SEGMENT)
    while True:
        following = src.read(SEGMENT) if chunk else b""
        last = not following
        digest.update(chunk)
        size += len(chunk)
        dst.write(aead.encrypt(_nonce(prefix, counter, last), chunk, aad))
        if last:
            return digest.hexdigest(), size
        chunk, counter = following, counter + 1


def decrypt_stream(src: BinaryIO, dst: BinaryIO, key: bytes, prefix: bytes, aad: bytes,
                   segment: int = SEGMENT) -> str:
    """Decrypt ``src`` into ``dst``; returns the plaintext sha256 (IntegrityError if tampered)."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    aead, digest, counter = AESGCM(key), hashlib.sha256(), 0
    block = src.read(segment + TAG)
    while True:
        following = src.read(segment + TAG)
        last = not following
        try:
            plain = aead.decrypt(_nonce(prefix, counter, last), block, aad)
        except InvalidTag as exc:
            raise IntegrityError(
                f"Encrypted segment {counter} of an artifact failed authentication: the "
                "ciphertext was changed, truncated or reordered."
            ) from exc
        digest.update(plain)
        dst.write(plain)
        if last:
            return digest.hexdigest()
        block, counter = following, counter + 1
