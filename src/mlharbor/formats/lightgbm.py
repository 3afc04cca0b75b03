"""LightGBM boosters and their scikit-learn wrappers, stored in LightGBM's text model format.

The text format holds trees and parameters only. Loading always builds a plain ``Booster``;
class labels come from the manifest, so wrappers need not be rebuilt.
"""

from __future__ import annotations

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


class LightGBMModel(NativeModel):
    def __init__(self, booster: Any, classes: list[Any] | None, objective: str) -> None:
        self.model = booster
        self.input_kind = "array"
        self.classes = None if classes is None else np.asarray(classes)
        self._objective = objective

    def predict_proba(self, data: Any) -> np.ndarray:
        raw = np.asarray(self.model.predict(data))
        return np.column_stack([1 - raw, raw]) if raw.ndim == 1 else raw

    def predict(self, data: Any) -> np.ndarray:
        if self.classes is None:
            return np.asarray(self.model.predict(data))
        return self.predict_with_proba(data)[0]

    def predict_with_proba(self, data: Any) -> tuple[np.ndarray, np.ndarray | None]:
        # LGBMClassifier.predict is the most probable class of predict_proba: one inference.
        proba = self.predict_proba(data)
        return labels_from_proba(proba, self.classes), proba


class LightGBMFormat(ModelFormat):
    name = "lightgbm"
    summary = "LightGBM Booster / LGBMClassifier / LGBMRegressor as a text model"
    file_name = "model.txt"

    def claims_object(self, obj: Any) -> bool:
        return type(obj).__module__.startswith("lightgbm") and hasattr(obj, "predict")

    def claims_file(self, path: Path, head: bytes) -> bool:
        return head.startswith(b"tree\nversion=")

    def read_file(self, blob: ModelBytes, trust: TrustOptions) -> Any:
        import lightgbm

        try:
            text = blob.data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInputError(f"{blob.name!r} is not a LightGBM text model: {exc}") \
                from exc
        try:
            return lightgbm.Booster(model_str=text)  # from the bytes read, not the file
        except lightgbm.basic.LightGBMError as exc:
            raise InvalidInputError(f"{blob.name!r} is not a loadable LightGBM model: {exc}") \
                from exc

    def save(self, obj: Any, model_dir: Path) -> str:
        booster = obj.booster_ if hasattr(obj, "booster_") else obj
        target = model_dir / self.file_name
        booster.save_model(str(target))
        return target.name

    def describe(self, obj: Any) -> ModelInfo:
        import lightgbm

        booster = obj.booster_ if hasattr(obj, "booster_") else obj
        objective = str(booster.params.get("objective") or _objective_from_dump(booster))
        classifier = objective.startswith(("binary", "multiclass", "cross_entropy"))
        if hasattr(obj, "classes_"):
            classes = plain_list(obj.classes_)
        elif classifier:
            classes = list(range(max(2, booster.num_model_per_iteration())))
        else:
            classes = None
        names = booster.feature_name()
        generic = all(n == f"Column_{i}" for i, n in enumerate(names))
        return ModelInfo(
            task="classification" if classifier else "regression", classes=classes,
            feature_names=None if generic else list(names), n_features=booster.num_feature(),
            input_kind="array", flavor={"objective": objective},
            framework_versions={"lightgbm": lightgbm.__version__},
        )

    def load(self, blob: ModelBytes, flavor: dict[str, Any], trust: TrustOptions) -> NativeModel:
        booster = self.read_file(blob, trust)
        return LightGBMModel(booster, flavor.get("classes"), str(flavor.get("objective", "")))


def _objective_from_dump(booster: Any) -> str:
    return str(booster.dump_model().get("objective", "")).split(" ")[0]
