"""Where a version came from: code version, Python and package versions.

The environment recorded is the one that *built* the model. Registering in-process (the CLI,
the training job, the Python API) records this process's own environment; a version uploaded
over HTTP records what the client declared, or says it was not provided, never the server's
environment (which built nothing). ``environment_source`` says which it is.
"""

from __future__ import annotations

import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from mlharbor.core.errors import InvalidInputError

TRACKED_PACKAGES = ("mlharbor", "numpy", "pandas", "scikit-learn", "skops", "onnx",
                    "onnxruntime", "skl2onnx", "xgboost", "lightgbm", "torch")


def git_commit(cwd: Path | None = None) -> str | None:
    """The current git commit (with ``-dirty`` when the tree has changes), if in a checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                              text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=cwd, capture_output=True, text=True, timeout=5,
                               check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}-dirty" if dirty else head


def package_versions(names: tuple[str, ...] = TRACKED_PACKAGES) -> dict[str, str]:
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


SOURCE_LOCAL = "registering process"
SOURCE_CLIENT = "declared by the client"
SOURCE_MANIFEST = "bundle manifest"
SOURCE_UNKNOWN = "not provided"
_TEXT_KEYS = ("code_version", "python", "platform")
MAX_TEXT = 300
MAX_PACKAGES = 500


def environment_lineage() -> dict[str, Any]:
    """This process's environment: for models built and registered here."""
    return {
        "code_version": git_commit(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": package_versions(),
        "environment_source": SOURCE_LOCAL,
    }


def unknown_environment() -> dict[str, Any]:
    """The environment of a model whose builder did not say: recorded as unknown."""
    return {"code_version": None, "python": None, "platform": None, "packages": {},
            "environment_source": SOURCE_UNKNOWN}


def declared_environment(body: Any, *, source: str = SOURCE_CLIENT,
                         field: str = "environment") -> dict[str, Any]:
    """A client's account of the environment that built its model, checked.

    ``body`` is a JSON object with any of ``code_version``, ``python``, ``platform`` (strings)
    and ``packages`` (package name -> version string).
    """
    if not isinstance(body, dict):
        raise InvalidInputError(f"{field} must be a JSON object; received "
                                f"{type(body).__name__}.", field=field)
    unknown = sorted(str(k) for k in body if k not in (*_TEXT_KEYS, "packages"))
    if unknown:
        raise InvalidInputError(
            f"{field} has unknown key(s) {', '.join(unknown)}; known: "
            f"{', '.join((*_TEXT_KEYS, 'packages'))}.", field=f"{field}.{unknown[0]}")
    recorded = unknown_environment() | {"environment_source": source}
    for key in _TEXT_KEYS:
        value = body.get(key)
        if value is not None and (not isinstance(value, str) or len(value) > MAX_TEXT):
            raise InvalidInputError(f"{field}.{key} must be a string of at most {MAX_TEXT} "
                                    "characters.", field=f"{field}.{key}")
        recorded[key] = value
    packages = body.get("packages") or {}
    if not isinstance(packages, dict) or len(packages) > MAX_PACKAGES or not all(
            isinstance(k, str) and isinstance(v, str) and 0 < len(k) <= MAX_TEXT
            and len(v) <= MAX_TEXT for k, v in packages.items()):
        raise InvalidInputError(
            f"{field}.packages must map at most {MAX_PACKAGES} package names to version "
            "strings.", field=f"{field}.packages")
    recorded["packages"] = dict(packages)
    return recorded


def manifest_environment(manifest: Any) -> dict[str, Any] | None:
    """The build environment a bundle manifest records (``framework_versions``), if any."""
    versions = manifest.get("framework_versions") if isinstance(manifest, dict) else None
    if not isinstance(versions, dict) or not versions:
        return None
    packages = {k: v for k, v in versions.items() if k != "python"}
    try:
        return declared_environment({"python": versions.get("python"), "packages": packages},
                                    source=SOURCE_MANIFEST, field="manifest.framework_versions")
    except InvalidInputError:
        return None
