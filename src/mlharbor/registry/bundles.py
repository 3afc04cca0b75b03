"""The glue between model formats and the registry: register a model, load a predictor.

``register_model`` builds a verified bundle in a temporary folder (format detection, safety
checks, signature, ONNX conversion and parity check) and stores it as a new version with its
manifest. ``load_predictor`` downloads a version (digests checked by the registry), checks the
bundle against the manifest the registry stored, and loads it on the chosen runtime.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlharbor.core.records import ModelVersion
from mlharbor.core.signature import Signature

if TYPE_CHECKING:
    from mlharbor.core.refs import RefLike
    from mlharbor.formats.predictor import Predictor
    from mlharbor.registry.service import Registry
    from mlharbor.settings import Settings


@dataclass(frozen=True, slots=True)
class RegistrationResult:
    """What registering found and decided, and the stored version."""

    format: str
    runtime: str
    parity: dict[str, Any]
    version: ModelVersion

    def summary(self) -> str:
        """One line for people: detected format, serving runtime, parity verdict."""
        verdict = self.parity.get("status", "n/a")
        reason = self.parity.get("reason")
        parity = f"{verdict} ({reason})" if reason else verdict
        return (f"{self.version.ref}: format {self.format}, served by {self.runtime}, "
                f"ONNX parity {parity}")


def register_model(
    registry: Registry,
    name: str,
    source: Any,
    *,
    settings: Settings,
    sample_input: Any = None,
    training_data: Any = None,
    signature: Signature | None = None,
    trust_pickle_sha256: str | None = None,
    trust_code: bool = False,
    runtime: str = "auto",
    extra_columns: str | None = None,
    unseen_categories: str | None = None,
    description: str = "",
    tags: dict[str, str] | None = None,
    metrics: dict[str, float] | None = None,
    params: dict[str, Any] | None = None,
    lineage: dict[str, Any] | None = None,
    actor: str = "local",
    status: str = "ready",
    status_reason: str | None = None,
) -> RegistrationResult:
    """Bundle ``source`` (a file, a folder or an in-memory model) and register it as a version.

    Nothing is stored when any check fails: unsafe files, unknown formats, a pickle whose
    sha256 does not match ``trust_pickle_sha256``, or ``runtime='onnx'`` without ONNX parity.
    ``status="failed"`` (with a reason) records a version that failed its promotion gates: it
    is stored for the record but never resolves as latest and takes no alias.
    """
    from mlharbor.formats.base import TrustOptions
    from mlharbor.formats.builder import build_bundle

    trust = TrustOptions(
        skops_trusted_types=tuple(settings.formats.skops_trusted_types),
        pickle_sha256=trust_pickle_sha256, code=trust_code,
    )
    with tempfile.TemporaryDirectory(prefix="mlharbor-bundle-") as tmp:
        bundle = Path(tmp) / "bundle"
        built = build_bundle(
            source, bundle, sample_input=sample_input, training_data=training_data,
            signature=signature, trust=trust, runtime=runtime,
            tolerance=settings.formats.onnx_parity_tolerance, created_by=actor,
            extra_columns=extra_columns, unseen_categories=unseen_categories,
        )
        version = registry.register_version(
            name, bundle, description=description, tags=tags, metrics=metrics,
            params=params, lineage=lineage, manifest=built.manifest.to_dict(), actor=actor,
            status=status, status_reason=status_reason,
        )
    return RegistrationResult(built.format, built.runtime, built.parity, version)


def load_predictor(
    registry: Registry, ref: RefLike, settings: Settings, runtime: str | None = None
) -> Predictor:
    """The version ``ref`` (``name:3``, ``name@alias``, ``name``), verified and loaded.

    Trust recorded at registration (a pickle pin, trusted code) is honoured because the
    manifest comes from the registry, not from the downloaded files.
    """
    from mlharbor.core.errors import IntegrityError
    from mlharbor.formats.base import TrustOptions
    from mlharbor.formats.predictor import load_bundle

    version = registry.get_version(ref)
    if version.manifest is None:
        raise IntegrityError(
            f"Version {version.ref} has no bundle manifest, so it cannot be verified or loaded.",
            hint="Register the model with register_model (mlharbor models register).",
        )
    folder = registry.download(version)
    trust = TrustOptions(skops_trusted_types=tuple(settings.formats.skops_trusted_types))
    return load_bundle(folder, expected_manifest=version.manifest, trust=trust,
                       runtime=runtime)
