"""The registry: registered models, immutable versions, aliases and their history.

The Python API users see. It enforces the registry's rules through :class:`MetadataStore`
(one transaction per change, each audited) and keeps bundle files in an
:class:`ArtifactStore`. Callers pass the acting identity (``actor``) down for the audit trail;
authorization happens at the edges (HTTP, CLI), never here.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import tempfile
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from mlharbor.core.errors import (
    InvalidInputError,
    UnavailableError,
    UnsafeArtifactError,
    describe_value,
)
from mlharbor.core.names import validate_alias, validate_name
from mlharbor.core.records import (
    AliasMove,
    ModelVersion,
    Page,
    RegisteredModel,
    VersionFile,
    VersionStatus,
)
from mlharbor.core.refs import RefLike, as_ref
from mlharbor.registry.artifacts.base import ArtifactStore, open_artifact_store
from mlharbor.registry.database import Database
from mlharbor.registry.lineage import environment_lineage
from mlharbor.registry.store import MetadataStore

if TYPE_CHECKING:
    from mlharbor.settings import Settings

LOCAL_ACTOR = "local"
MAX_BUNDLE_FILES = 10_000
# Hooks the composition root (bootstrap.py) may plug in; the registry never imports security.
AliasGuard = Callable[[ModelVersion, str], None]  # may refuse moving an alias to a version
LoadGuard = Callable[[ModelVersion], None]  # may refuse handing out a version's files
Signer = Callable[[Path], dict[str, str]]  # tags (a signature) for a bundle being registered


class Registry:
    """Models, versions and aliases, backed by a metadata database and an artifact store."""

    def __init__(
        self, store: MetadataStore, artifacts: ArtifactStore, *, cache_dir: Path,
        alias_guard: AliasGuard | None = None, load_guard: LoadGuard | None = None,
        signer: Signer | None = None,
    ) -> None:
        self.store = store
        self.artifacts = artifacts
        self.cache_dir = cache_dir
        self.alias_guard = alias_guard
        self.load_guard = load_guard
        self.signer = signer

    @classmethod
    def from_settings(
        cls, settings: Settings, *, artifacts: ArtifactStore | None = None,
        migrate: bool = True,
    ) -> Registry:
        """Open (and create or upgrade, unless ``migrate=False``) the configured registry."""
        db = Database(settings.database_url_value)
        if migrate:
            db.migrate()
        store = artifacts or open_artifact_store(settings.artifact_uri_value, settings)
        return cls(MetadataStore(db), store, cache_dir=settings.home / "cache" / "bundles")

    def close(self) -> None:
        self.store.db.dispose()

    # -- models ---------------------------------------------------------------------------

    def create_model(
        self, name: str, *, description: str = "", tags: dict[str, str] | None = None,
        actor: str = LOCAL_ACTOR, request_id: str | None = None,
    ) -> RegisteredModel:
        return self.store.create_model(
            validate_name(name), description=description, tags=_check_tags(tags),
            actor=actor, request_id=request_id,
        )

    def get_model(self, name: str) -> RegisteredModel:
        return self.store.get_model(validate_name(name))

    def list_models(
        self, *, name_contains: str | None = None, tags: dict[str, str] | None = None,
        page_size: int = 100, page_token: str | None = None,
    ) -> Page[RegisteredModel]:
        return self.store.list_models(name_contains=name_contains, tags=tags,
                                      page_size=page_size, page_token=page_token)

    def update_model(
        self, name: str, *, description: str | None = None, tags: dict[str, str] | None = None,
        actor: str = LOCAL_ACTOR, request_id: str | None = None,
    ) -> RegisteredModel:
        return self.store.update_model(validate_name(name), description=description,
                                       tags=_check_tags(tags) if tags is not None else None,
                                       actor=actor, request_id=request_id)

    def delete_model(
        self, name: str, *, actor: str = LOCAL_ACTOR, request_id: str | None = None
    ) -> None:
        self.store.delete_model(validate_name(name), actor=actor, request_id=request_id)

    # -- versions -------------------------------------------------------------------------

    def register_version(
        self, name: str, bundle_dir: Path | str, *, description: str = "",
        tags: dict[str, str] | None = None, metrics: dict[str, float] | None = None,
        params: dict[str, Any] | None = None, lineage: dict[str, Any] | None = None,
        manifest: dict[str, Any] | None = None, actor: str = LOCAL_ACTOR,
        status: VersionStatus | str = VersionStatus.READY, status_reason: str | None = None,
        request_id: str | None = None, environment: dict[str, Any] | None = None,
    ) -> ModelVersion:
        """Store every file under ``bundle_dir`` as a new version of ``name``.

        ``environment`` is the environment that built the model, for the lineage: by default
        this process's own (the model was built here); a server registering an upload passes
        what the client declared, or :func:`~mlharbor.registry.lineage.unknown_environment`.

        The version number is taken first (status ``registering``), the files are uploaded,
        then the version becomes ``ready`` (or ``failed``, when ``status`` says so, e.g. after a
        failed promotion gate) in one audited transaction. A crash in between leaves a
        ``registering`` version without files, which nothing resolves to.
        """
        validate_name(name)
        final_status = VersionStatus(status)
        if final_status is VersionStatus.REGISTERING:
            raise InvalidInputError("status must be 'ready' or 'failed'.", field="status")
        files = _bundle_files(Path(bundle_dir))
        checked_tags = _check_tags(tags)
        if self.signer is not None:
            checked_tags.update(self.signer(Path(bundle_dir)))
        version_id, _number = self.store.begin_version(
            name, actor=actor, description=description, tags=checked_tags,
            metrics=_check_metrics(metrics),
            params={k: str(v) for k, v in (params or {}).items()},
            lineage={**(environment_lineage() if environment is None else environment),
                     **(lineage or {})},
        )
        try:
            stored = []
            for rel, path in files:
                info = self.artifacts.put_file(path)
                stored.append(VersionFile(rel, info.sha256, info.size))
        except BaseException as exc:
            reason = f"uploading files failed: {exc}" if isinstance(exc, Exception) \
                else "registration was interrupted"
            with contextlib.suppress(Exception):
                self.store.finish_version(version_id, status=VersionStatus.FAILED,
                                          status_reason=reason, files=[], manifest=None,
                                          actor=actor, request_id=request_id)
            raise
        return self.store.finish_version(
            version_id, status=final_status, status_reason=status_reason, files=stored,
            manifest=manifest, actor=actor, request_id=request_id,
        )

    def get_version(self, ref: RefLike) -> ModelVersion:
        """The version ``ref`` names: text (``churn:3``, ``churn@champion``), a ModelRef, a
        ModelVersion or a registration result (read again, so its state is current)."""
        return self.store.get_version(as_ref(ref))

    def list_versions(
        self, name: str, *, status: VersionStatus | str | None = None,
        include_archived: bool = True, tags: dict[str, str] | None = None,
        page_size: int = 100, page_token: str | None = None,
    ) -> Page[ModelVersion]:
        return self.store.list_versions(
            validate_name(name), status=VersionStatus(status) if status else None,
            include_archived=include_archived, tags=tags, page_size=page_size,
            page_token=page_token,
        )

    def update_version(
        self, ref: RefLike, *, description: str | None = None,
        tags: dict[str, str] | None = None, lineage: dict[str, Any] | None = None,
        actor: str = LOCAL_ACTOR, request_id: str | None = None,
    ) -> ModelVersion:
        """Change a version's description, add tags, or add lineage entries (a reference
        profile attached later); its files never change."""
        return self.store.update_version(
            as_ref(ref), description=description,
            tags=_check_tags(tags) if tags is not None else None, lineage=lineage,
            actor=actor, request_id=request_id,
        )

    def record_signature(
        self, ref: RefLike, signature_tags: dict[str, str], *, actor: str = LOCAL_ACTOR,
        request_id: str | None = None,
    ) -> ModelVersion:
        """Store a signature made over a version's files (tags under ``signature.``)."""
        if not signature_tags or not all(k.startswith(RESERVED_TAG_PREFIXES)
                                         for k in signature_tags):
            raise InvalidInputError("Signature tags must all start with 'signature.'.")
        return self.store.update_version(
            as_ref(ref), description=None, tags=_check_tags(signature_tags, reserved_ok=True),
            actor=actor, request_id=request_id,
        )

    def archive_version(
        self, ref: RefLike, *, actor: str = LOCAL_ACTOR, request_id: str | None = None
    ) -> ModelVersion:
        return self.store.set_archived(as_ref(ref), True, actor=actor, request_id=request_id)

    def unarchive_version(
        self, ref: RefLike, *, actor: str = LOCAL_ACTOR, request_id: str | None = None
    ) -> ModelVersion:
        return self.store.set_archived(as_ref(ref), False, actor=actor, request_id=request_id)

    def delete_version(
        self, ref: RefLike, *, actor: str = LOCAL_ACTOR, request_id: str | None = None
    ) -> None:
        """Delete a version (refused while an alias points to it or it is registering)."""
        self.store.delete_version(as_ref(ref), actor=actor, request_id=request_id)

    def sweep_stale_registrations(self, older_than: timedelta = timedelta(hours=1)) -> list[str]:
        """Mark registrations abandoned (e.g. by a killed process) as failed."""
        return self.store.sweep_stale(older_than)

    # -- aliases --------------------------------------------------------------------------

    def set_alias(
        self, name: str, alias: str, version: int | RefLike, *, actor: str = LOCAL_ACTOR,
        reason: str = "", request_id: str | None = None,
    ) -> AliasMove:
        """Point ``alias`` of model ``name`` at ``version``: a number, or what names one of
        this model's versions (a ModelVersion, a registration result, ``churn:3``,
        ``churn@challenger``)."""
        return self.store.set_alias(validate_name(name), validate_alias(alias),
                                    self._version_number(name, version), actor=actor,
                                    reason=reason, request_id=request_id,
                                    guard=self.alias_guard)

    def _version_number(self, name: str, version: object) -> int:
        """The number of the version of ``name`` that ``version`` stands for."""
        if isinstance(version, str) and version.isascii() and version.isdigit():
            version = int(version)
        if isinstance(version, int) and not isinstance(version, bool) and version >= 1:
            return version
        refused = InvalidInputError(
            "version must be a positive whole number or a version of the model (a "
            f"ModelVersion, 'churn:3'); received {describe_value(version)}.",
            field="version", received=describe_value(version),
        )
        if isinstance(version, int | float | bool) or version is None:
            raise refused
        try:
            ref = as_ref(version, field="version")
        except InvalidInputError as exc:
            if isinstance(version, str):
                raise  # the parser's own message says what is wrong with the text
            raise refused from exc
        if ref.name != name:
            raise InvalidInputError(
                f"{describe_value(str(ref))} is a version of model {ref.name!r}, not of "
                f"{name!r}; an alias points at a version of its own model.",
                field="version", received=str(ref))
        return ref.version if ref.version is not None else self.get_version(ref).version

    def delete_alias(
        self, name: str, alias: str, *, actor: str = LOCAL_ACTOR, reason: str = "",
        request_id: str | None = None,
    ) -> AliasMove:
        return self.store.delete_alias(validate_name(name), validate_alias(alias), actor=actor,
                                       reason=reason, request_id=request_id)

    def alias_history(self, name: str, alias: str | None = None) -> list[AliasMove]:
        return self.store.alias_history(validate_name(name),
                                        validate_alias(alias) if alias else None)

    # -- artifacts ------------------------------------------------------------------------

    def download(self, ref: RefLike) -> Path:
        """A local folder holding the version's files, every digest verified.

        Copies are cached per version; a cached copy is re-hashed before it is handed out and
        fetched again from the store when it no longer matches.
        """
        mv = ref if isinstance(ref, ModelVersion) else self.get_version(ref)
        if self.load_guard is not None:
            self.load_guard(mv)
        if mv.status is not VersionStatus.READY:
            raise InvalidInputError(
                f"Version {mv.ref} is {mv.status.value}; only ready versions can be loaded.",
                hint=mv.status_reason or None,
            )
        target = self.cache_dir / mv.name / str(mv.version)
        if target.is_dir() and _matches(target, mv.files):
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{mv.version}-"))
        try:
            for f in mv.files:
                self.artifacts.get_file(
                    f.sha256, staging / f.path,
                    label=f"{f.path!r} of {mv.ref}",
                )
            _install(staging, target, mv.files)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target


def _install(staging: Path, target: Path, files: tuple[VersionFile, ...]) -> None:
    """Move a verified copy into place without ever removing a good copy others may read."""
    for _ in range(3):
        try:
            staging.rename(target)
            return
        except OSError:
            if not target.exists():
                continue
        if _matches(target, files):
            return  # another process put an identical copy in place first
        # A stale or damaged copy: move it aside atomically, then retry.
        aside = target.parent / f".stale-{target.name}-{uuid.uuid4().hex[:8]}"
        with contextlib.suppress(OSError):
            target.rename(aside)
            shutil.rmtree(aside, ignore_errors=True)
    raise UnavailableError(f"Could not place the local copy of {target}; try again.")


def _matches(folder: Path, files: tuple[VersionFile, ...]) -> bool:
    from mlharbor.registry.artifacts.base import digest_file

    for f in files:
        path = folder / f.path
        if not path.is_file() or path.stat().st_size != f.size:
            return False
        if digest_file(path).sha256 != f.sha256:
            return False
    return True


def _bundle_files(root: Path) -> list[tuple[str, Path]]:
    """The files to store, with bundle-relative POSIX paths; refuses links leaving the bundle."""
    if root.is_file():
        return [(root.name, root)]
    if not root.is_dir():
        raise InvalidInputError(
            f"{str(root)!r} is neither a file nor a folder.",
            hint="Pass the model file or the bundle folder to register.",
        )
    base = root.resolve()
    found: list[tuple[str, Path]] = []
    for path in sorted(root.rglob("*")):
        if path.is_dir():
            continue
        resolved = path.resolve()
        if not resolved.is_relative_to(base):
            raise UnsafeArtifactError(
                f"{str(path)!r} links outside the bundle folder; refusing to register it.",
                hint="Copy the file into the bundle instead of linking it.",
            )
        rel = PurePosixPath(path.relative_to(root).as_posix())
        found.append((str(rel), path))
        if len(found) > MAX_BUNDLE_FILES:
            raise InvalidInputError(f"The bundle holds more than {MAX_BUNDLE_FILES} files.")
    if not found:
        raise InvalidInputError(f"The folder {str(root)!r} is empty; nothing to register.")
    return found


MAX_PATH_CHARS = 1024
MAX_PART_BYTES = 255


def bundle_path(text: str, *, field: str = "files") -> PurePosixPath:
    """``text`` as a path inside a version's bundle, or InvalidInputError saying why not.

    One spelling per file: relative, ``/``-separated (a ``\\`` counts as ``/``), no empty,
    ``.`` or ``..`` parts, no NUL or other control character, no lone surrogate (it cannot
    become a file name), no drive (``C:``), at most 1024 characters and 255 bytes a part.
    What is accepted is returned unchanged, so it resolves strictly inside any folder it is
    joined to. The message shows the name escaped (``repr``), so any input can be echoed.
    """
    cleaned = text.replace("\\", "/") if isinstance(text, str) else ""
    parts = cleaned.split("/")
    if (not cleaned or cleaned.startswith("/") or len(cleaned) > MAX_PATH_CHARS
            or any(part in ("", ".", "..") for part in parts)
            or any(ord(ch) < 32 or ord(ch) == 127 for ch in cleaned)
            or ":" in parts[0] or not _encodable(cleaned)
            or any(len(part.encode()) > MAX_PART_BYTES for part in parts)):
        shown = ascii(text[:80]) if isinstance(text, str) else type(text).__name__
        raise InvalidInputError(
            f"File path {shown} is not allowed: it must name a file inside the bundle, "
            "relative, with no empty, '.' or '..' parts and no control characters, each part "
            f"at most {MAX_PART_BYTES} bytes and {MAX_PATH_CHARS} characters in all.",
            field=field, received=shown, expected="a relative path such as model/weights.bin",
        )
    return PurePosixPath(cleaned)


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


RESERVED_TAG_PREFIXES = ("signature.",)


def _check_tags(tags: dict[str, str] | None, *, reserved_ok: bool = False) -> dict[str, str]:
    if tags is None:
        return {}
    if not isinstance(tags, dict):
        raise InvalidInputError("tags must be a mapping of strings to strings.", field="tags")
    for key, value in tags.items():
        validate_name(key, kind="tag key")
        if not reserved_ok and key.startswith(RESERVED_TAG_PREFIXES):
            raise InvalidInputError(
                f"Tag {key!r} is reserved: tags starting with "
                f"{', '.join(RESERVED_TAG_PREFIXES)} are written by mlharbor (signatures).",
                hint="Sign versions with `mlharbor keys sign`.", field=f"tags.{key}",
            )
        if not isinstance(value, str) or len(value) > 5000:
            raise InvalidInputError(
                f"Tag {key!r} must have a string value of at most 5000 characters.",
                field=f"tags.{key}",
            )
    return dict(tags)


def _check_metrics(metrics: dict[str, float] | None) -> dict[str, float]:
    clean: dict[str, float] = {}
    for key, value in (metrics or {}).items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidInputError(
                f"Metric {key!r} must be a number; received {type(value).__name__}.",
                field=f"metrics.{key}",
            )
        if not math.isfinite(value):
            raise InvalidInputError(
                f"Metric {key!r} is {value}; metrics must be finite numbers.",
                field=f"metrics.{key}",
            )
        clean[str(key)] = float(value)
    return clean
