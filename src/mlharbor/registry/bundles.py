"""The glue between model formats and the registry: register a model, load a predictor.

``register_model`` builds a verified bundle in a temporary folder (format detection, safety
checks, signature, ONNX conversion and parity check) and stores it as a new version with its
manifest; given training data, it also stores the reference profile drift monitoring compares
live inputs with. ``set_reference`` attaches such a profile to a version registered without
one. ``load_predictor`` downloads a version (digests checked by the registry), checks the
bundle against the manifest the registry stored, and loads it on the chosen runtime.

The reference profile is the one ``mlharbor train`` stores
(:func:`mlharbor.data.profile.build_profile`, column kinds by
:func:`mlharbor.data.schema.infer_kind`), built over the signature's input columns.
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
    reference: str | None = None  # what the stored reference profile holds, for people

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

    ``training_data`` (a DataFrame, array or list of records) also becomes the version's
    reference profile for drift monitoring, unless ``lineage`` brings one already (training
    does, with importances); columns outside the signature (the label, ids) are left out.
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
        lineage = dict(lineage or {})
        note = None
        if training_data is not None and "reference_profile" not in lineage:
            sig = Signature.from_dict(built.manifest.signature)
            profile, left_out = reference_profile(training_data, sig, extra_columns="ignore")
            lineage["reference_profile"] = profile
            note = _reference_note(profile, left_out)
        version = registry.register_version(
            name, bundle, description=description, tags=tags, metrics=metrics,
            params=params, lineage=lineage, manifest=built.manifest.to_dict(), actor=actor,
            status=status, status_reason=status_reason,
        )
    return RegistrationResult(built.format, built.runtime, built.parity, version, note)


def reference_profile(
    data: Any, signature: Signature, *, target: str | None = None,
    extra_columns: str = "error", seed: int = 0,
) -> tuple[dict[str, Any], list[str]]:
    """The reference profile of ``data`` over the signature's inputs, and the columns left out.

    Every input column must be present (:class:`SchemaError` naming the missing ones). Other
    columns are refused, naming them, unless ``extra_columns="ignore"``; ``target`` names a
    label column that is always left out.
    """
    import pandas as pd

    from mlharbor.core.errors import InvalidInputError, SchemaError
    from mlharbor.data.profile import build_profile
    from mlharbor.data.schema import infer_kind

    names = list(signature.names)
    if isinstance(data, pd.DataFrame):
        given = [str(c) for c in data.columns]
        if target is not None and target not in given:
            raise SchemaError(
                f"The target column {target!r} is not in the data; its columns are "
                f"{', '.join(given)}.", column=target, expected=target, received=given)
        missing = [n for n in names if n not in given]
        left_out = [c for c in given if c not in names]
        extra = [c for c in left_out if c != target]
        if missing or (extra and extra_columns != "ignore"):
            parts = ([f"lacks the model's input column(s) {', '.join(map(repr, missing))}"]
                     if missing else [])
            if extra and extra_columns != "ignore":
                parts.append(f"has column(s) {', '.join(map(repr, extra))} the model does "
                             "not take")
            raise SchemaError(
                f"The reference data {' and '.join(parts)}; the model's inputs are "
                f"{', '.join(names)}.",
                hint="Give the rows the model was trained on, with its input columns"
                + (" (name the label column with --target)." if extra else "."),
                column=(missing or extra)[0], expected=names, received=given)
        frame = data.rename(columns=str)[names]
    else:
        columns = signature.with_policy(extra_columns="ignore").validator().columns(data)
        frame, left_out = pd.DataFrame(columns, columns=names), []
    if frame.empty:
        raise InvalidInputError("The reference data has no rows; a profile needs the rows "
                                "the model was trained on.")
    kinds = {n: infer_kind(frame[n]) for n in names}
    return build_profile(frame.reset_index(drop=True), kinds, seed=seed), left_out


def set_reference(
    registry: Registry, ref: RefLike, data: Any, *, target: str | None = None,
    actor: str = "local",
) -> ModelVersion:
    """Attach (or replace) the reference profile of version ``ref``, built from ``data``.

    For a version registered without training data: drift monitoring then compares live
    inputs with ``data``. The columns must be the version's inputs (plus ``target``, the label,
    if named); anything else is refused and nothing is changed. The change is audited.
    """
    from mlharbor.core.errors import InvalidInputError

    version = registry.get_version(ref)
    if version.manifest is None or not version.manifest.get("signature"):
        raise InvalidInputError(
            f"Version {version.ref} has no signature (it was registered as raw files), so "
            "its inputs, and what to profile, are unknown.",
            hint="Register the model with `mlharbor models register` (not --raw).")
    sig = Signature.from_dict(version.manifest["signature"])
    profile, _ = reference_profile(data, sig, target=target)
    return registry.update_version(version.ref, lineage={"reference_profile": profile},
                                   actor=actor)


def _reference_note(profile: dict[str, Any], left_out: list[str]) -> str:
    note = f"profile of {profile['rows']} rows over {len(profile['features'])} input column(s)"
    return note + (f" (left out: {', '.join(left_out)})" if left_out else "")


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
