"""The interface every model format implements, and what formats hand to the rest.

A format can recognise a model (an in-memory object, or a file *by its content*), save it into a
bundle, describe it (task, classes, features) and load it back as a :class:`NativeModel`.

Reading and loading take a :class:`~mlharbor.formats.bundle.ModelBytes`: a file's bytes read
once together with their sha256. Formats deserialize those bytes and never open the file again,
so what was hashed (against a pin, or against the manifest by
:func:`mlharbor.formats.bundle.open_verified`) is exactly what gets loaded.
"""

from __future__ import annotations

import inspect
import shutil
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from mlharbor.core.errors import InvalidInputError
from mlharbor.formats.bundle import ModelBytes


@dataclass(frozen=True, slots=True)
class TrustOptions:
    """What the caller explicitly trusts; loading never takes trust from the model file."""

    skops_trusted_types: tuple[str, ...] = ()
    pickle_sha256: str | None = None
    code: bool = False


@dataclass(slots=True)
class ModelInfo:
    """What a format learns about a model object when it is saved."""

    task: str
    classes: list[Any] | None = None
    feature_names: list[str] | None = None
    n_features: int | None = None
    input_kind: str | None = None
    flavor: dict[str, Any] = field(default_factory=dict)
    framework_versions: dict[str, str] = field(default_factory=dict)
    categories: dict[str, list[Any]] = field(default_factory=dict)


class NativeModel(ABC):
    """A loaded model. ``input_kind`` says what it takes: a DataFrame or a 2-D float array."""

    input_kind: str = "array"
    classes: np.ndarray | None = None

    @abstractmethod
    def predict(self, data: Any) -> np.ndarray:
        """Predictions (class labels for classifiers)."""

    def predict_proba(self, data: Any) -> np.ndarray:
        raise InvalidInputError(
            f"{type(self).__name__} gives no class probabilities; it is not a classifier."
        )

    @property
    def has_proba(self) -> bool:
        """Whether ``predict_proba`` answers (a classifier may predict labels only)."""
        return type(self).predict_proba is not NativeModel.predict_proba

    def predict_with_proba(self, data: Any) -> tuple[np.ndarray, np.ndarray | None]:
        """The model's own ``predict`` and ``predict_proba`` (None without one) for the same
        rows.

        Labels are never derived from probabilities here: a threshold-tuned classifier or any
        custom ``predict`` answers differently from the most probable class. A subclass may
        answer with one inference when its ``predict`` is, by construction, the most probable
        class of ``predict_proba`` (see :func:`predict_is_argmax`).
        """
        labels = np.asarray(self.predict(data))
        return labels, np.asarray(self.predict_proba(data)) if self.has_proba else None


def labels_from_proba(proba: np.ndarray, classes: np.ndarray | None) -> np.ndarray:
    """The most probable class of each row (its index when ``classes`` is None).

    The one copy of this rule; use it only where it *is* the model's ``predict`` (a format that
    defines its labels so, or an estimator :func:`predict_is_argmax` vouches for).
    """
    index: np.ndarray = np.argmax(proba, axis=1)
    if classes is None:
        return index
    labels: np.ndarray = np.asarray(classes).take(index, axis=0)
    return labels


def predict_is_argmax(model: Any) -> bool:
    """Whether ``model.predict(X)`` is ``model.classes_.take(argmax(model.predict_proba(X)))``
    by construction: the class's ``predict`` is one of scikit-learn's own that computes exactly
    that (forests, ``CalibratedClassifierCV``), or a stock ``Pipeline`` ending in one.

    Looked up on the class, statically: a subclass overriding ``predict`` (a threshold-tuned or
    any custom classifier) is not vouched for, and pays one more inference instead.
    """
    cls = type(model)
    if not cls.__module__.startswith("sklearn."):
        return False
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.ensemble._forest import ForestClassifier
    from sklearn.pipeline import Pipeline

    def same(name: str, owner: type) -> bool:
        return bool(inspect.getattr_static(cls, name, None)
                    is inspect.getattr_static(owner, name))

    if same("predict", Pipeline) and same("predict_proba", Pipeline):
        return predict_is_argmax(model.steps[-1][1])
    if same("predict", ForestClassifier):
        return getattr(model, "n_outputs_", None) == 1
    return same("predict", CalibratedClassifierCV)


class EstimatorModel(NativeModel):
    """Any object with scikit-learn's ``predict`` / ``predict_proba`` / ``classes_``."""

    def __init__(self, model: Any, input_kind: str) -> None:
        self.model = model
        self.input_kind = input_kind
        classes = getattr(model, "classes_", None)
        self.classes = None if classes is None else np.asarray(classes)
        self._argmax = self.classes is not None and predict_is_argmax(model)

    def predict(self, data: Any) -> np.ndarray:
        return np.asarray(self.model.predict(data))

    @property
    def has_proba(self) -> bool:
        return hasattr(self.model, "predict_proba")  # False for SVC(probability=False) ...

    def predict_proba(self, data: Any) -> np.ndarray:
        if not self.has_proba:
            return super().predict_proba(data)
        return np.asarray(self.model.predict_proba(data))

    def predict_with_proba(self, data: Any) -> tuple[np.ndarray, np.ndarray | None]:
        if not self._argmax:
            return super().predict_with_proba(data)
        # One inference: this predict is the most probable class of predict_proba.
        proba = self.predict_proba(data)
        return labels_from_proba(proba, self.classes), proba


class ModelFormat(ABC):
    """One model format: recognise, save, describe and load."""

    name: ClassVar[str]
    summary: ClassVar[str]
    file_name: ClassVar[str] = "model.bin"

    @abstractmethod
    def claims_object(self, obj: Any) -> bool:
        """Whether this format can save the in-memory object ``obj``."""

    @abstractmethod
    def claims_file(self, path: Path, head: bytes) -> bool:
        """Whether ``path`` (whose first bytes are ``head``) holds this format, by content."""

    @abstractmethod
    def read_file(self, blob: ModelBytes, trust: TrustOptions) -> Any:
        """The native object held in a file's bytes (the bundle's copy), refusing anything unsafe.

        Deserialize ``blob.data``; never re-open ``blob.path``.
        """

    @abstractmethod
    def save(self, obj: Any, model_dir: Path) -> str:
        """Write ``obj`` under ``model_dir``; return the written file's name."""

    @abstractmethod
    def describe(self, obj: Any) -> ModelInfo:
        """Task, classes and feature names of a model object."""

    @abstractmethod
    def load(self, blob: ModelBytes, flavor: dict[str, Any], trust: TrustOptions) -> NativeModel:
        """A predicting model from the verified bytes of a bundle file (never re-read)."""

    def adopt_file(self, source: Path, model_dir: Path) -> str:
        """Copy a source file into the bundle unchanged; return the copy's name.

        Nothing about the source is trusted: the builder checks and loads the *copy*.
        """
        target = model_dir / self.file_name
        shutil.copyfile(source, target)
        return target.name


def plain_list(values: Any) -> list[Any]:
    """JSON-safe Python scalars out of a NumPy array or list (for classes and categories)."""
    return [v.item() if isinstance(v, np.generic) else v for v in list(values)]
