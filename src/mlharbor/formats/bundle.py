"""The model bundle: a directory of model files plus ``manifest.json`` describing all of them.

The manifest is defined once, here, and versioned by :data:`FORMAT_VERSION`. It records the
native model format and the runtimes that can serve it, the signature and input example, every
file with its size and sha256, the task and class labels, framework versions, who built it and
when, how loading was trusted, and the ONNX parity result (or why ONNX was not used).

:func:`verify_bundle` checks every byte against the manifest *before* any format deserializes
anything: unlisted files, symlinks, paths leaving the bundle and digest mismatches all fail.
:func:`open_verified` does the same and also hands back the bytes of the files about to be
loaded, read once: formats deserialize exactly the bytes whose digest was checked, and never
re-open the file in between (a file swapped after the check cannot be what gets loaded).

Layout::

    manifest.json          this document (not listed in its own ``files``)
    model/...              the native model file(s)
    onnx/model.onnx        the converted model, when conversion was attempted and succeeded
    input_example.json     a few input rows as records
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from mlharbor.core.errors import IntegrityError, InvalidInputError, UnsafeArtifactError

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
INPUT_EXAMPLE_NAME = "input_example.json"
_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class ModelBytes:
    """A file's bytes, read once, with their sha256: what is hashed is what gets deserialized.

    ``path`` says where the bytes came from (for messages, and as the folder ONNX external data
    is confined to); formats must load from ``data``, never by opening ``path`` again.
    """

    path: Path
    data: bytes
    sha256: str

    @classmethod
    def of(cls, path: Path, data: bytes) -> ModelBytes:
        return cls(path, data, hashlib.sha256(data).hexdigest())

    @classmethod
    def read(cls, path: Path) -> ModelBytes:
        """Read a regular file once (refusing symlinks) and hash those bytes."""
        return cls.of(path, read_regular(path))

    @property
    def name(self) -> str:
        return self.path.name


def read_regular(path: Path) -> bytes:
    """All bytes of the regular file at ``path`` through one descriptor; symlinks are refused."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError as exc:
        raise InvalidInputError(f"{str(path)!r} does not exist.") from exc
    except OSError as exc:
        raise UnsafeArtifactError(
            f"Cannot open {str(path)!r} as a regular file: {exc}.",
            hint="Model files must be regular files, not symlinks.",
        ) from exc
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise UnsafeArtifactError(f"{str(path)!r} is not a regular file.")
        return handle.read()


@dataclass(frozen=True, slots=True)
class BundleFile:
    """One file of the bundle, relative to its root (POSIX separators)."""

    path: str
    size: int
    sha256: str


@dataclass(slots=True)
class BundleManifest:
    """Everything needed to verify, load and serve a bundle. JSON through to_dict/from_dict."""

    model_format: str
    model_path: str
    task: str
    signature: dict[str, Any]
    flavor: dict[str, Any] = field(default_factory=dict)
    classes: list[Any] | None = None
    runtimes: list[str] = field(default_factory=lambda: ["native"])
    default_runtime: str = "native"
    onnx_path: str | None = None
    onnx: dict[str, Any] = field(default_factory=dict)
    input_example: str | None = None
    files: list[BundleFile] = field(default_factory=list)
    framework_versions: dict[str, str] = field(default_factory=dict)
    trust: dict[str, Any] = field(default_factory=lambda: {"mode": "safe-format"})
    created_by: str = "local"
    created_at: str = ""
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> BundleManifest:
        version = body.get("format_version")
        if version != FORMAT_VERSION:
            raise IntegrityError(
                f"Bundle manifest format_version is {version!r}; this mlharbor reads version "
                f"{FORMAT_VERSION}.", hint="Re-register the model with this mlharbor version.",
            )
        try:
            data = dict(body)
            data["files"] = [BundleFile(**f) for f in body.get("files", [])]
            return cls(**data)
        except TypeError as exc:
            raise IntegrityError(f"The bundle manifest is malformed: {exc}.") from exc

    def file(self, path: str) -> BundleFile:
        for entry in self.files:
            if entry.path == path:
                return entry
        raise IntegrityError(f"The manifest names {path!r} but does not list its digest.")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def list_files(root: Path) -> list[BundleFile]:
    """Every regular file under ``root`` except the manifest, sorted, with size and digest."""
    entries = []
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            full = Path(dirpath) / name
            rel = full.relative_to(root).as_posix()
            if rel == MANIFEST_NAME:
                continue
            if full.is_symlink():
                raise UnsafeArtifactError(f"Bundle file {rel!r} is a symlink; bundles hold only "
                                          "regular files.")
            entries.append(BundleFile(rel, full.stat().st_size, sha256_file(full)))
    return sorted(entries, key=lambda e: e.path)


def write_manifest(root: Path, manifest: BundleManifest) -> BundleManifest:
    """List and hash every file under ``root`` into the manifest, then write manifest.json."""
    manifest.files = list_files(root)
    (root / MANIFEST_NAME).write_text(
        json.dumps(manifest.to_dict(), indent=2, sort_keys=True, default=str), encoding="utf-8"
    )
    return manifest


def read_manifest(root: Path) -> BundleManifest:
    path = root / MANIFEST_NAME
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise IntegrityError(
            f"{str(root)!r} is not a model bundle: it has no {MANIFEST_NAME}.",
            hint="Register the model first, or point at the bundle directory.",
        ) from exc
    except (OSError, ValueError) as exc:
        raise IntegrityError(f"Cannot read the bundle manifest {str(path)!r}: {exc}.") from exc
    if not isinstance(body, dict):
        raise IntegrityError(f"The bundle manifest {str(path)!r} is not a JSON object.")
    return BundleManifest.from_dict(body)


def safe_member(root: Path, rel: str) -> Path:
    """The path of ``rel`` inside ``root``, refusing absolute paths and escapes like ``../x``."""
    pure = PurePosixPath(rel)
    if not rel or pure.is_absolute() or "\\" in rel or ".." in pure.parts or rel.startswith("~"):
        raise UnsafeArtifactError(
            f"Bundle path {rel!r} escapes the bundle; expected a relative path inside it.",
            hint="Bundles may only reference their own files.",
        )
    full = root / pure
    resolved_root = root.resolve()
    if not full.resolve().is_relative_to(resolved_root):
        raise UnsafeArtifactError(f"Bundle path {rel!r} resolves outside the bundle.")
    return full


def verify_bundle(root: Path, expected: dict[str, Any] | None = None) -> BundleManifest:
    """Check every file against the manifest before anything is deserialized.

    ``expected`` is the manifest the registry stored; when given, the bundle's own manifest must
    equal it, so a bundle cannot swap in its own trust record or file list.
    """
    return open_verified(root, expected)[0]


def open_verified(
    root: Path,
    expected: dict[str, Any] | None = None,
    hold: Callable[[BundleManifest], Iterable[str | None]] | None = None,
) -> tuple[BundleManifest, dict[str, ModelBytes]]:
    """Verify the whole bundle like :func:`verify_bundle`, keeping some files' checked bytes.

    ``hold(manifest)`` names the files about to be loaded (the model, the ONNX file); each is
    read once into memory and its size and sha256 are checked on those very bytes, which are
    returned keyed by path. Loading them instead of the file closes the window between the
    check and the load.
    """
    manifest = read_manifest(root)
    if expected is not None and _normal(expected) != _normal(manifest.to_dict()):
        raise IntegrityError(
            "The bundle's manifest.json differs from the manifest the registry stored.",
            hint="The bundle was altered after registration; re-register the model.",
        )
    listed = {entry.path: entry for entry in manifest.files}
    wanted = {rel for rel in (hold(manifest) if hold is not None else ()) if rel is not None}
    held: dict[str, ModelBytes] = {}
    for entry in manifest.files:
        full = safe_member(root, entry.path)
        if full.is_symlink() or not full.is_file():
            raise IntegrityError(f"Bundle file {entry.path!r} is missing or not a regular file.")
        if entry.path in wanted:
            blob = ModelBytes.read(full)
            size, actual = len(blob.data), blob.sha256
            held[entry.path] = blob
        else:
            size, actual = full.stat().st_size, ""
        if size != entry.size:
            raise IntegrityError(
                f"Bundle file {entry.path!r} has {size} bytes; the manifest says {entry.size}.",
                hint="The file was altered or truncated; re-download or re-register the model.",
            )
        actual = actual or sha256_file(full)
        if actual != entry.sha256:
            raise IntegrityError(
                f"Bundle file {entry.path!r} has sha256 {actual}; the manifest says "
                f"{entry.sha256}.", hint="The file was altered; re-download or re-register.",
            )
    on_disk = {p.relative_to(root).as_posix() for p in root.rglob("*")
               if (p.is_file() or p.is_symlink())} - {MANIFEST_NAME}
    unlisted = sorted(on_disk - set(listed))
    if unlisted:
        raise IntegrityError(
            f"Bundle holds file(s) the manifest does not list: {', '.join(unlisted)}.",
            hint="Only files listed with their digest may be part of a bundle.",
        )
    for rel in (manifest.model_path, manifest.onnx_path, manifest.input_example):
        if rel is not None and rel not in listed:
            raise IntegrityError(f"The manifest points at {rel!r}, which it does not list.")
    for rel in wanted:
        if rel not in held:
            raise IntegrityError(f"The manifest names {rel!r} but does not list its digest.")
    return manifest, held


def _normal(body: dict[str, Any]) -> Any:
    return json.loads(json.dumps(body, sort_keys=True, default=str))
