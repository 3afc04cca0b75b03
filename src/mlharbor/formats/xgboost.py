"""XGBoost boosters and their scikit-learn wrappers, stored in XGBoost's own JSON/UBJSON format.

The file holds trees and parameters only, never code. A wrapper (``XGBClassifier`` ...) is
rebuilt from a fixed list of classes named in the manifest, not from anything the file says.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from mlharbor.core.errors import InvalidInputError
from mlharbor.formats.base import (
    ModelFormat,
    ModelInfo,
    NativeModel,
    TrustOptions,
    labels_from_proba,
    plain_list,
)
from mlharbor.formats.bundle import ModelBytes

# The only classes a bundle can ask to be rebuilt as.
WRAPPERS = ("Booster", "XGBClassifier", "XGBRegressor")


class XGBoostModel(NativeModel):
    """A loaded booster or wrapper. A bare ``Booster`` registered as a classifier (``classes``
    given: a probability objective) predicts labels as ``XGBClassifier`` does, the most
    probable class; otherwise it answers its raw predictions."""

    def __init__(self, model: Any, classes: list[Any] | None = None) -> None:
        self.model = model
        self.input_kind = "array"
        self._booster = type(model).__name__ == "Booster"
        own = getattr(model, "classes_", None)
        known = own if own is not None else classes if self._booster else None
        self.classes = None if known is None else np.asarray(known)

    def predict(self, data: Any) -> np.ndarray:
        if not self._booster:
            return np.asarray(self.model.predict(data))
        if self.classes is not None:
            return self.predict_with_proba(data)[0]
        return np.asarray(self.model.inplace_predict(data))

    def predict_with_proba(self, data: Any) -> tuple[np.ndarray, np.ndarray | None]:
        if not self._booster:
            return super().predict_with_proba(data)
        proba = self.predict_proba(data)
        return labels_from_proba(proba, self.classes), proba

    def predict_proba(self, data: Any) -> np.ndarray:
        if type(self.model).__name__ == "Booster":
            return _booster_proba(np.asarray(self.model.inplace_predict(data)))
        return np.asarray(self.model.predict_proba(data))


def _booster_proba(raw: np.ndarray) -> np.ndarray:
    return np.column_stack([1 - raw, raw]) if raw.ndim == 1 else raw


class XGBoostFormat(ModelFormat):
    name = "xgboost"
    summary = "XGBoost Booster / XGBClassifier / XGBRegressor as JSON or UBJSON"
    file_name = "model.ubj"

    def claims_object(self, obj: Any) -> bool:
        return type(obj).__module__.startswith("xgboost") and type(obj).__name__ in WRAPPERS

    def claims_file(self, path: Path, head: bytes) -> bool:
        if head[:1] == b"{" and b'"learner"' in head:
            return True
        # UBJSON: an object marker, then the key "learner" as a length-prefixed string.
        return head[:1] == b"{" and b"learner" in head[:64]

    def read_file(self, blob: ModelBytes, trust: TrustOptions) -> Any:
        return _load_into(blob, "Booster")

    def adopt_file(self, source: Path, model_dir: Path) -> str:
        # Keep the encoding the user chose: XGBoost tells JSON and UBJSON apart by extension.
        data = source.read_bytes()  # read once: the name is decided on the bytes written
        name = "model.json" if _is_json(data) else "model.ubj"
        (model_dir / name).write_bytes(data)
        return name

    def save(self, obj: Any, model_dir: Path) -> str:
        target = model_dir / self.file_name
        obj.save_model(str(target))
        return target.name

    def describe(self, obj: Any) -> ModelInfo:
        import xgboost

        booster = obj.get_booster() if hasattr(obj, "get_booster") else obj
        config = json.loads(booster.save_config())
        objective = config["learner"]["objective"]["name"]
        classifier = objective.startswith(("binary:", "multi:"))
        if hasattr(obj, "classes_"):
            classes = plain_list(obj.classes_)
        elif classifier:
            n_class = int(config["learner"]["learner_model_param"].get("num_class", "0") or 0)
            classes = list(range(max(2, n_class)))
        else:
            classes = None
        wrapper = type(obj).__name__
        if wrapper == "Booster" and classifier and not objective.startswith(
                ("binary:logistic", "multi:softprob")):
            classifier, classes = False, None  # margins or hard labels: serve raw predictions
        return ModelInfo(
            task="classification" if classifier else "regression", classes=classes,
            feature_names=None if booster.feature_names is None else list(booster.feature_names),
            n_features=booster.num_features(), input_kind="array",
            flavor={"wrapper": wrapper, "objective": objective},
            framework_versions={"xgboost": xgboost.__version__},
        )

    def load(self, blob: ModelBytes, flavor: dict[str, Any], trust: TrustOptions) -> NativeModel:
        return XGBoostModel(_load_into(blob, str(flavor.get("wrapper", "Booster"))),
                            flavor.get("classes"))


def _is_json(data: bytes) -> bool:
    return data[:1] == b"{" and b'"learner"' in data[:4096]


def _load_into(blob: ModelBytes, wrapper: str) -> Any:
    """A ``wrapper`` (one of :data:`WRAPPERS`) loaded from the bytes (JSON or UBJSON) given."""
    import xgboost

    if wrapper not in WRAPPERS:
        raise InvalidInputError(
            f"Unknown XGBoost wrapper {wrapper!r}; known: {', '.join(WRAPPERS)}.")
    model = getattr(xgboost, wrapper)()
    try:
        model.load_model(bytearray(blob.data))  # XGBoost detects JSON vs UBJSON in memory
    except xgboost.core.XGBoostError as exc:
        raise InvalidInputError(f"{blob.name!r} is not a loadable XGBoost model: {exc}") \
            from exc
    return model
