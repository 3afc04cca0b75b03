"""API key format: ``mlh_<prefix>_<secret>``, shown once, stored only as a SHA-256 hash.

The prefix (10 random base32 characters) is visible, indexed and used to find the stored
row; the secret holds 256 random bits. A slow password hash (bcrypt, argon2) would protect
low-entropy passwords but costs ~100 ms per request; with 256 bits of entropy a single
SHA-256 is already beyond brute force, so checks are fast and compared in constant time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

KEY_PREFIX = "mlh_"
_KEY_RE = re.compile(r"mlh_([a-z2-7]{10})_([A-Za-z0-9_-]{43})")


def new_key() -> tuple[str, str]:
    """A fresh key: (prefix, full key). Only the caller ever sees the full key."""
    prefix = base64.b32encode(secrets.token_bytes(10)).decode().lower()[:10]
    secret = secrets.token_urlsafe(32)
    return prefix, f"{KEY_PREFIX}{prefix}_{secret}"


def parse_key(key: str) -> str | None:
    """The prefix of a well-formed key, else None."""
    match = _KEY_RE.fullmatch(key)
    return match.group(1) if match else None


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_matches(key: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_key(key), stored_hash)


def looks_like_key(token: str) -> bool:
    return token.startswith(KEY_PREFIX)
