"""Turn a registered version into a :class:`ServedModel`: download, verify, load, warm up.

Loading goes through the formats layer (``formats.predictor.load_bundle``) with the manifest the
registry stored, so every byte is checked before anything is deserialized and the runtime is
chosen exactly as in the Python API (ONNX Runtime after a passed parity check, else native).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mlharbor.core.errors import IntegrityError
from mlharbor.serving.model import ServedModel, runner_for

if TYPE_CHECKING:
    from mlharbor.core.records import ModelVersion
    from mlharbor.registry.service import Registry
    from mlharbor.settings import Settings

ModelLoader = Callable[["ModelVersion"], ServedModel]


def registry_loader(registry: Registry, settings: Settings) -> ModelLoader:
    """A loader reading bundles from ``registry`` with the trust policy of ``settings``."""

    def load(mv: ModelVersion) -> ServedModel:
        return load_served_model(registry, mv, settings)

    return load


def load_served_model(registry: Registry, mv: ModelVersion, settings: Settings) -> ServedModel:
    from mlharbor.formats.base import TrustOptions
    from mlharbor.formats.bundle import safe_member
    from mlharbor.formats.predictor import load_bundle

    if not mv.manifest:
        raise IntegrityError(
            f"Version {mv.ref} has no bundle manifest, so it cannot be served.",
            hint="Register the model with mlharbor (models register or register_model).",
        )
    root = registry.download(mv)
    trust = TrustOptions(skops_trusted_types=tuple(settings.formats.skops_trusted_types))
    predictor = load_bundle(root, expected_manifest=mv.manifest, trust=trust)
    manifest = predictor.manifest
    example: Any = None
    if manifest.input_example:
        try:
            example = json.loads(safe_member(root, manifest.input_example).read_text("utf-8"))
        except ValueError as exc:
            raise IntegrityError(f"The input example of {mv.ref} is not JSON: {exc}.") from exc
    model = ServedModel(mv.name, mv.version, predictor.signature, runner_for(predictor),
                        task=predictor.task, classes=predictor.classes, input_example=example)
    model.warm_up()
    return model
