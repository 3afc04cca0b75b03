"""Run artifacts and logged models: files in the artifact store, named in the database.

One namespace, the artifact proxy's: a file's key is its path under ``mlflow-artifacts:/``
(``1/<run_id>/artifacts/model/MLmodel``). The bytes go to the registry's content-addressed
artifact store (sha256, deduplicated, verified on every read, encrypted when the registry's
store is); ``tracking_files`` maps key -> digest and size. An upload is stored first and named
second, so a failed upload names nothing, and a key re-uploaded points at its new bytes.
"""

from __future__ import annotations

import re
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import delete, insert, select, update

from mlharbor.core.errors import InvalidInputError, NotFoundError, describe_value
from mlharbor.core.runs import LoggedModel, RunArtifact
from mlharbor.tracking import checks
from mlharbor.tracking import schema as t
from mlharbor.tracking.store import PROXY_SCHEME, TrackingStore, now_ms
from mlharbor.tracking.writes import dialect_insert

if TYPE_CHECKING:
    from sqlalchemy import RowMapping

MAX_KEY_CHARS = 1024
#: Where the MLflow model files of a version registered through MLflow are kept, unchangeable:
#: what ``models:/<name>/<version>`` loads is what mlharbor checked and registered.
FROZEN_ROOT = "registered-models"
_PART_BAD = re.compile(r"[\x00-\x1f\x7f]")


class BlobInfoLike(Protocol):
    @property
    def sha256(self) -> str: ...

    @property
    def size(self) -> int: ...


class BlobStore(Protocol):
    """What tracking needs of the registry's artifact store."""

    def put_file(self, path: Path) -> BlobInfoLike: ...

    def get_file(self, sha256: str, dest: Path, *, label: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Listing:
    """One entry of a folder listing: a file (with size) or a folder (``is_dir``)."""

    path: str
    is_dir: bool
    size: int | None = None


def check_key(text: Any, *, field: str = "path") -> str:
    """A relative '/'-separated key with no empty, '.' or '..' part and no control character."""
    cleaned = text.strip("/") if isinstance(text, str) else ""
    parts = cleaned.split("/")
    if not cleaned or len(cleaned) > MAX_KEY_CHARS or _PART_BAD.search(cleaned) \
            or any(p in ("", ".", "..") for p in parts) or "\\" in cleaned \
            or not _encodable(cleaned):
        raise InvalidInputError(
            f"Artifact path {describe_value(text)} is not allowed: it must be relative, "
            "'/'-separated, with no empty, '.' or '..' parts and no control characters "
            f"(at most {MAX_KEY_CHARS} characters).", field=field,
            received=describe_value(text))
    return cleaned


def _writable(key: str) -> str:
    if key == FROZEN_ROOT or key.startswith(FROZEN_ROOT + "/"):
        raise InvalidInputError(
            f"Artifact path {key[:200]!r} holds a registered version's files, which never "
            "change.", hint="Log to a run's or a logged model's location instead.",
            field="path")
    return key


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def key_of_uri(uri: str) -> str | None:
    """The proxy key of an ``mlflow-artifacts:`` URI (None for a URI elsewhere)."""
    if not uri.startswith(PROXY_SCHEME):
        return None
    rest = uri[len(PROXY_SCHEME):]
    if rest.startswith("//"):  # mlflow-artifacts://host:port/path
        rest = rest[2:].partition("/")[2]
    return rest.strip("/")


class TrackingFiles:
    """Files under the artifact proxy root, and MLflow 3's logged models."""

    def __init__(self, store: TrackingStore, blobs: BlobStore) -> None:
        self.store = store
        self.db = store.db
        self.blobs = blobs

    # -- files ----------------------------------------------------------------------------

    def put(self, key: str, source: Path) -> RunArtifact:
        """Store ``source``'s bytes under ``key`` (replacing what the key named)."""
        key = _writable(check_key(key))
        info = self.blobs.put_file(source)
        row = {"path": key, "sha256": info.sha256, "size": info.size,
               "created_at": now_ms()}
        with self.db.write() as conn:
            stmt = dialect_insert(conn)(t.files)
            conn.execute(stmt.on_conflict_do_update(
                index_elements=["path"], set_={"sha256": stmt.excluded.sha256,
                                               "size": stmt.excluded.size,
                                               "created_at": stmt.excluded.created_at}), row)
        return RunArtifact(key, info.sha256, info.size)

    def put_bytes(self, key: str, data: bytes) -> RunArtifact:
        with tempfile.TemporaryDirectory(prefix="mlharbor-upload-") as tmp:
            path = Path(tmp) / "blob"
            path.write_bytes(data)
            return self.put(key, path)

    def stat(self, key: str) -> RunArtifact:
        key = check_key(key)
        with self.db.read() as conn:
            row = conn.execute(select(t.files).where(t.files.c.path == key)).first()
        if row is None:
            raise NotFoundError(f"No artifact at {key!r}.", field="path")
        return RunArtifact(row.path, row.sha256, row.size)

    def fetch(self, key: str, dest: Path) -> RunArtifact:
        """Write the file ``key`` to ``dest``, its digest verified."""
        art = self.stat(key)
        self.blobs.get_file(art.sha256, dest, label=f"artifact {key!r}")
        return art

    def listing(self, prefix: str | None) -> list[Listing]:
        """The files and folders directly under ``prefix`` (the root when empty), with paths
        relative to the root, sorted."""
        base = check_key(prefix) + "/" if prefix and prefix.strip("/") else ""
        col = t.files.c.path
        q = select(col, t.files.c.size).order_by(col)
        if base:
            q = q.where(col.startswith(base, autoescape=True))
        seen: dict[str, Listing] = {}
        with self.db.read() as conn:
            for path, size in conn.execute(q):
                head, sep, _rest = path[len(base):].partition("/")
                full = base + head
                if sep:
                    seen.setdefault(full, Listing(full, True))
                else:
                    seen[full] = Listing(full, False, size)
        return [seen[k] for k in sorted(seen)]

    def files_under(self, prefix: str) -> list[RunArtifact]:
        """Every file below ``prefix`` (recursively), paths relative to the root."""
        base = check_key(prefix) + "/"
        with self.db.read() as conn:
            rows = conn.execute(select(t.files).where(
                t.files.c.path.startswith(base, autoescape=True)).order_by(t.files.c.path))
            return [RunArtifact(r.path, r.sha256, r.size) for r in rows]

    def download_tree(self, prefix: str, dest: Path) -> list[RunArtifact]:
        """Copy every file under ``prefix`` into ``dest`` (paths kept relative to it)."""
        found = self.files_under(prefix)
        if not found:
            raise NotFoundError(f"No artifacts under {prefix!r}.", field="path")
        base = check_key(prefix) + "/"
        for art in found:
            self.blobs.get_file(art.sha256, dest / art.path[len(base):],
                                label=f"artifact {art.path!r}")
        return found

    def delete(self, key: str) -> None:
        key = _writable(check_key(key))
        with self.db.write() as conn:
            conn.execute(delete(t.files).where(t.files.c.path == key))

    def freeze(self, found: list[RunArtifact], source: str) -> str:
        """Keep ``found`` (the files under ``source``) under a new prefix of
        :data:`FROZEN_ROOT`, where nothing may write or delete; the prefix. The bytes are not
        copied: the rows name the same content-addressed blobs. Every key is checked before
        anything is written."""
        base = f"{FROZEN_ROOT}/{uuid.uuid4().hex}"
        cut = len(check_key(source)) + 1
        rows = [{"path": check_key(f"{base}/{a.path[cut:]}"), "sha256": a.sha256,
                 "size": a.size, "created_at": now_ms()} for a in found]
        with self.db.write() as conn:
            if rows:
                conn.execute(insert(t.files), rows)
        return base

    def thaw(self, prefix: str) -> None:
        """Drop what :meth:`freeze` kept under ``prefix`` (a registration that failed)."""
        base = check_key(prefix) + "/"
        if not base.startswith(FROZEN_ROOT + "/"):
            raise InvalidInputError(f"{prefix[:200]!r} is not a kept prefix.", field="path")
        with self.db.write() as conn:
            conn.execute(delete(t.files).where(t.files.c.path.startswith(base,
                                                                         autoescape=True)))

    # -- logged models (MLflow 3) ----------------------------------------------------------

    def create_logged_model(self, experiment_id: str | int, *, name: str | None = None,
                            source_run_id: str | None = None, model_type: str | None = None,
                            tags: dict[str, str] | None = None,
                            params: dict[str, str] | None = None) -> LoggedModel:
        exp = self.store.get_experiment(experiment_id)
        if source_run_id:
            self.store.get_run(source_run_id)
        model_id = f"m-{uuid.uuid4().hex}"
        name = checks.check_name(name or "model", field="name")
        clean_tags = {checks.check_key(k, field="tags.key"): checks.check_text(
            str(v), field=f"tags.{k}", limit=checks.MAX_TAG_VALUE_CHARS)
            for k, v in (tags or {}).items()}
        clean_params = {checks.check_key(k, field="params.key"): checks.check_text(
            str(v), field=f"params.{k}", limit=checks.MAX_PARAM_VALUE_CHARS)
            for k, v in (params or {}).items()}
        now = now_ms()
        location = f"{exp.artifact_location.rstrip('/')}/models/{model_id}/artifacts"
        with self.db.write() as conn:
            conn.execute(insert(t.logged_models).values(
                model_id=model_id, experiment_id=int(exp.experiment_id), name=name,
                source_run_id=source_run_id or None, artifact_location=location,
                status="LOGGED_MODEL_PENDING", model_type=(model_type or None),
                creation_time=now, last_updated_time=now, tags=clean_tags,
                params=clean_params))
        return self.get_logged_model(model_id)

    def get_logged_model(self, model_id: str) -> LoggedModel:
        with self.db.read() as conn:
            row = conn.execute(select(t.logged_models).where(
                t.logged_models.c.model_id == str(model_id)[:40])).mappings().first()
        if row is None:
            raise NotFoundError(f"No logged model with id {str(model_id)[:60]!r}.",
                                field="model_id")
        return _logged(row)

    def update_logged_model(self, model_id: str, *, status: str | None = None,
                            tags: dict[str, str] | None = None,
                            params: dict[str, str] | None = None,
                            remove_tag: str | None = None) -> LoggedModel:
        current = self.get_logged_model(model_id)
        values: dict[str, Any] = {"last_updated_time": now_ms()}
        if status is not None:
            allowed = ("LOGGED_MODEL_PENDING", "LOGGED_MODEL_READY",
                       "LOGGED_MODEL_UPLOAD_FAILED")
            if status not in allowed:
                raise InvalidInputError(f"status must be one of {', '.join(allowed)}; "
                                        f"received {describe_value(status)}.", field="status")
            values["status"] = status
        if tags or remove_tag:
            merged = dict(current.tags)
            for k, v in (tags or {}).items():
                merged[checks.check_key(k, field="tags.key")] = checks.check_text(
                    str(v), field=f"tags.{k}", limit=checks.MAX_TAG_VALUE_CHARS)
            if remove_tag is not None:
                merged.pop(remove_tag, None)
            values["tags"] = merged
        if params:
            values["params"] = {**current.params, **{
                checks.check_key(k, field="params.key"): checks.check_text(
                    str(v), field=f"params.{k}", limit=checks.MAX_PARAM_VALUE_CHARS)
                for k, v in params.items()}}
        with self.db.write() as conn:
            conn.execute(update(t.logged_models).where(
                t.logged_models.c.model_id == current.model_id).values(**values))
        return self.get_logged_model(current.model_id)

    def search_logged_models(self, experiment_ids: list[str], *, source_run_id: str | None
                             = None, max_results: int = 100, offset: int = 0
                             ) -> tuple[list[LoggedModel], int | None]:
        ids = [checks.check_experiment_id(e, field="experiment_ids") for e in experiment_ids]
        q = select(t.logged_models).order_by(t.logged_models.c.creation_time.desc(),
                                             t.logged_models.c.model_id)
        if ids:
            q = q.where(t.logged_models.c.experiment_id.in_(ids))
        if source_run_id:
            q = q.where(t.logged_models.c.source_run_id == source_run_id)
        with self.db.read() as conn:
            rows = conn.execute(q.limit(max_results + 1).offset(offset)).mappings().all()
        return ([_logged(r) for r in rows[:max_results]],
                offset + max_results if len(rows) > max_results else None)


def _logged(row: RowMapping) -> LoggedModel:
    return LoggedModel(model_id=row["model_id"], experiment_id=str(row["experiment_id"]),
                       name=row["name"], source_run_id=row["source_run_id"],
                       artifact_location=row["artifact_location"], status=row["status"],
                       creation_time=row["creation_time"],
                       last_updated_time=row["last_updated_time"], tags=dict(row["tags"]),
                       params=dict(row["params"]), model_type=row["model_type"])
