"""Tables owned by security, as SQLAlchemy Core; created by migrations ``0002`` and ``0004``.

Security keeps its own :class:`MetaData` because it must not import the registry; the tables
live in the same database and a test checks that the migration and these tables agree.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

identities = Table(
    "identities",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(128), nullable=False, unique=True),
    # "user" or "service" (a service account: a program, never a person).
    Column("kind", String(16), nullable=False),
    Column("description", Text, nullable=False),
    Column("disabled", Boolean, nullable=False),
    Column("created_by", String(255), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

role_bindings = Table(
    "role_bindings",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("identity_id", Integer, ForeignKey("identities.id"), nullable=False),
    Column("role", String(32), nullable=False),
    # "*" (global) or "model:NAME" / "endpoint:NAME" (NAME may hold fnmatch wildcards).
    Column("scope", String(300), nullable=False),
    Column("created_by", String(255), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("identity_id", "role", "scope", name="uq_role_bindings_grant"),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("identity_id", Integer, ForeignKey("identities.id"), nullable=False),
    # The visible, random part of the key, used to find the row; never secret on its own.
    Column("prefix", String(16), nullable=False, unique=True),
    # SHA-256 of the whole key (256 bits of entropy, so a fast hash is the right one).
    Column("key_hash", String(64), nullable=False),
    Column("label", String(128), nullable=False),
    # Optional narrowing: only these roles / scopes of the identity's grants (null = all).
    Column("roles", JSON, nullable=True),
    Column("scopes", JSON, nullable=True),
    Column("created_by", String(255), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=True),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
)

artifact_envelopes = Table(
    "artifact_envelopes",
    metadata,
    # Artifacts stay addressed by the SHA-256 of their plaintext; the ciphertext is a blob of
    # its own in the underlying store.
    Column("plain_sha256", String(64), primary_key=True),
    Column("cipher_sha256", String(64), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("chunk_size", Integer, nullable=False),
    Column("nonce_prefix", String(32), nullable=False),
    # The data key wrapped by the master key named by kek_id (base64).
    Column("kek_id", String(512), nullable=False),
    Column("wrapped_key", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("rotated_at", DateTime(timezone=True), nullable=True),
)

# Dashboard logins (migration ``0004``): only a hash of the token the browser holds.
sessions = Table(
    "sessions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    # SHA-256 (hex) of the token the browser holds; the token itself is never stored.
    Column("token_hash", String(64), nullable=False, unique=True),
    # The API key this session stands for: its state is checked on every use.
    Column("key_id", Integer, ForeignKey(api_keys.c.id), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("last_seen", DateTime(timezone=True), nullable=True),
    Index("ix_sessions_expires_at", "expires_at"),
)
