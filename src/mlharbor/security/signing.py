"""Ed25519 signatures over a version's files, and the policy requiring them for some aliases.

What is signed: the sorted list of the version's files with their SHA-256 and size (the
registry stores digests of the plaintext, so this is stable across storage backends and
encryption)::

    mlharbor-version-signature-v1
    <sha256> <size> <path>          one line per file, sorted by path

Where it is kept: two version tags, ``signature.ed25519`` (base64 signature) and
``signature.key_id`` (fingerprint of the public key). Tags are editable, but an edited or
copied signature does not verify, and verification accepts only configured trusted keys.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from mlharbor.core.errors import ConfigError, ConflictError, IntegrityError
from mlharbor.core.records import ModelVersion

SIGNATURE_TAG = "signature.ed25519"
KEY_ID_TAG = "signature.key_id"
_HEADER = b"mlharbor-version-signature-v1\n"
FileEntry = tuple[str, str, int]  # (path, sha256, size)


def payload(files: Iterable[FileEntry]) -> bytes:
    lines = [f"{sha} {size} {path}\n".encode() for path, sha, size in sorted(files)]
    return _HEADER + b"".join(lines)


def bundle_entries(root: Path) -> list[FileEntry]:
    """The (path, sha256, size) the registry will store for ``root`` (a file or a folder)."""
    paths = [(root.name, root)] if root.is_file() else [
        (p.relative_to(root).as_posix(), p) for p in sorted(root.rglob("*")) if not p.is_dir()]
    entries = []
    for rel, path in paths:
        h = hashlib.sha256()
        with path.open("rb") as fh:
            while chunk := fh.read(1024 * 1024):
                h.update(chunk)
        entries.append((rel, h.hexdigest(), path.stat().st_size))
    return entries


def fingerprint(public_key: Any) -> str:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return "ed25519:" + hashlib.sha256(raw).hexdigest()[:16]


class Signer:
    def __init__(self, private_key: Any) -> None:
        self._key = private_key
        self.key_id = fingerprint(private_key.public_key())

    @classmethod
    def from_file(cls, path: Path) -> Signer:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        try:
            key = load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(f"Cannot load the signing key {str(path)!r}.",
                              hint="Create one with `mlharbor keys generate-signing`.") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(f"The signing key {str(path)!r} is not an Ed25519 key.")
        return cls(key)

    @property
    def public_key(self) -> Any:
        return self._key.public_key()

    def tags_for(self, files: Iterable[FileEntry]) -> dict[str, str]:
        signature = self._key.sign(payload(files))
        return {SIGNATURE_TAG: base64.b64encode(signature).decode(), KEY_ID_TAG: self.key_id}


def generate_signing_key(out: Path) -> tuple[Path, Path]:
    """Write a new Ed25519 private key (mode 0600) and its public key (``.pub``)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private)
    pub = out.with_name(out.name + ".pub")
    pub.write_bytes(public)
    return out, pub


def load_public_key(path: Path) -> Any:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        key = load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"Cannot load the trusted signing key {str(path)!r}.") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"The trusted signing key {str(path)!r} is not an Ed25519 key.")
    return key


class SignaturePolicy:
    """Trusted public keys, and the aliases that may only point at versions they signed."""

    def __init__(self, trusted: Sequence[Any], require_for_aliases: Iterable[str] = ()) -> None:
        self.trusted = {fingerprint(k): k for k in trusted}
        self.require_for = frozenset(require_for_aliases)

    def is_signed(self, version: ModelVersion) -> bool:
        return SIGNATURE_TAG in version.tags

    def verify(self, version: ModelVersion) -> str:
        """The key id that signed ``version``; IntegrityError when the signature is bad."""
        from cryptography.exceptions import InvalidSignature

        if not self.is_signed(version):
            raise ConflictError(f"Version {version.ref} is not signed.",
                                hint="Sign it with `mlharbor keys sign`.")
        key_id = version.tags.get(KEY_ID_TAG, "")
        key = self.trusted.get(key_id)
        if key is None:
            raise IntegrityError(
                f"Version {version.ref} is signed by {key_id or 'an unnamed key'}, which is "
                "not a trusted signing key.",
                hint="Add its public key to security.trusted_signing_keys.",
            )
        files = [(f.path, f.sha256, f.size) for f in version.files]
        try:
            key.verify(base64.b64decode(version.tags[SIGNATURE_TAG]), payload(files))
        except (InvalidSignature, ValueError) as exc:
            raise IntegrityError(
                f"The signature of version {version.ref} does not match its files: the "
                "version or its signature was altered.",
            ) from exc
        return key_id

    def check_alias(self, version: ModelVersion, alias: str) -> None:
        """Refuse pointing a protected alias at an unsigned or badly signed version."""
        if alias not in self.require_for:
            return
        if not self.is_signed(version):
            raise ConflictError(
                f"Alias {alias!r} may only point at signed versions; {version.ref} is "
                "unsigned.",
                hint="Sign the version (`mlharbor keys sign`) or choose a signed one.",
            )
        self.verify(version)


def policy_from_settings(security: Any) -> tuple[SignaturePolicy, Signer | None]:
    signer = Signer.from_file(security.signing_key_file) if security.signing_key_file else None
    trusted = [load_public_key(p) for p in security.trusted_signing_keys]
    if signer is not None:
        trusted.append(signer.public_key)
    return SignaturePolicy(trusted, security.require_signed_aliases), signer
