"""Explainers for loaded models, and :func:`explainer_for`, which picks the exact one.

=====================  ==========================================  ==============  =========
model                  method                                      space           exact
=====================  ==========================================  ==============  =========
scikit-learn trees     TreeSHAP (``shap``, path-dependent)         probability     yes
(forests, trees)
scikit-learn boosting  TreeSHAP                                    margin          yes
(GradientBoosting,
HistGradientBoosting)
XGBoost                the booster's ``pred_contribs=True``        margin/value    yes
LightGBM               the booster's ``pred_contrib=True``         margin/value    yes
linear (coef_)         ``coef * (x - mean of the background)``     margin/value    yes
anything else          sampled orderings (:mod:`.permutation`)     probability/    additive;
                                                                   value           estimated
=====================  ==========================================  ==============  =========

A scikit-learn ``Pipeline`` is explained on its last step, fed the output of the steps before
it, and the attributions are summed back into the signature's input columns
(:mod:`.columns`); when a step mixes columns the whole pipeline takes the fallback instead.
Output spaces, shapes and the additivity contract are described in :mod:`.attributions`.
Explanations always use the native model: a version served by ONNX Runtime is loaded again
with ``runtime="native"`` (see :mod:`mlharbor.serving.explaining`).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from mlharbor.core.errors import InvalidInputError
from mlharbor.explain.attributions import Attributions
from mlharbor.explain.columns import grouping, source_columns
from mlharbor.explain.permutation import DEFAULT_BUDGET, permutation_values

if TYPE_CHECKING:
    from mlharbor.core.signature import Signature


class NativeModel(Protocol):
    """What an explainer needs of a loaded model: the shape of
    :class:`mlharbor.formats.base.NativeModel`, restated here because ``explain`` and
    ``formats`` are siblings that do not import each other (DESIGN.md, import direction)."""

    input_kind: str
    classes: Any

    @property
    def has_proba(self) -> bool: ...

    def predict(self, data: Any) -> np.ndarray: ...

    def predict_proba(self, data: Any) -> np.ndarray: ...

log = logging.getLogger("mlharbor.explain")
SHAP_TREES = frozenset({
    "RandomForestClassifier", "RandomForestRegressor", "ExtraTreesClassifier",
    "ExtraTreesRegressor", "DecisionTreeClassifier", "DecisionTreeRegressor",
    "ExtraTreeClassifier", "ExtraTreeRegressor", "GradientBoostingClassifier",
    "GradientBoostingRegressor", "HistGradientBoostingClassifier",
    "HistGradientBoostingRegressor",
})
BOOSTING = frozenset({"GradientBoostingClassifier", "HistGradientBoostingClassifier"})
# Objectives with a link function: their contributions are in margin space, not the output's.
_LINKED = ("binary", "multi", "reg:logistic", "count:", "reg:gamma", "reg:tweedie",
           "survival:", "poisson", "gamma", "tweedie", "cross_entropy", "xentropy", "rank")


class Explainer(ABC):
    """Explains rows of one model: ``explain`` validates input against the signature, then
    the method's ``_explain`` works on model input (a DataFrame or a float matrix)."""

    method: str = ""

    def __init__(self, signature: Signature, *, frame: bool, classes: Sequence[Any] | None,
                 space: str) -> None:
        self.signature = signature
        self.feature_names = tuple(signature.names)
        self.frame = frame
        self.classes = None if classes is None else list(classes)
        self.space = space
        self._validator = signature.validator()

    @property
    def output_names(self) -> tuple[str, ...]:
        if self.classes is None:
            return ("prediction",)
        if len(self.classes) == 2:
            return (str(self.classes[1]),)
        return tuple(str(c) for c in self.classes)

    def inputs(self, data: Any) -> Any:
        """``data`` (records, columns, a DataFrame ...) validated into model input."""
        if self.frame:
            return self._validator.frame(data)
        return self._validator.matrix(data, np.float64)

    def explain(self, data: Any) -> Attributions:
        """Attributions of every row of ``data`` (see :class:`Attributions`)."""
        x = self.inputs(data)
        if len(x) < 1:
            raise InvalidInputError("There are no rows to explain; send at least one.",
                                    field="rows", expected=">= 1", received=0)
        base, values = self._explain(x)
        return Attributions(base, values, self.feature_names, self.output_names, self.space,
                            self.method)

    @abstractmethod
    def _explain(self, x: Any) -> tuple[np.ndarray, np.ndarray]:
        """(base ``(n, k)``, values ``(n, features, k)``) of validated model input."""

    def _positive(self, values: np.ndarray, base: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A binary classifier's outputs for both classes cut to the positive one."""
        if self.classes is not None and len(self.classes) == 2 and values.shape[-1] == 2:
            return values[..., 1:], base[..., 1:]
        return values, base


class _Transformed(Explainer):
    """An estimator explained on its own columns, behind the pipeline steps before it."""

    def __init__(self, signature: Signature, *, frame: bool, classes: Sequence[Any] | None,
                 space: str, steps: Sequence[Any], mapping: Sequence[int]) -> None:
        super().__init__(signature, frame=frame, classes=classes, space=space)
        self.steps = list(steps)
        self.group = grouping(mapping, len(self.feature_names))

    def transform(self, x: Any) -> np.ndarray:
        for step in self.steps:
            if step != "passthrough" and step is not None:
                x = step.transform(x)
        if hasattr(x, "toarray"):
            x = x.toarray()
        return np.asarray(x, dtype=np.float64)

    def grouped(self, values: np.ndarray) -> np.ndarray:
        """``(n, transformed, k)`` values summed into ``(n, inputs, k)``."""
        if values.shape[1] != self.group.shape[0]:  # einsum would broadcast a width of 1
            raise ValueError(
                f"The model sees {values.shape[1]} columns but the column map names "
                f"{self.group.shape[0]}: the preprocessing was not read right.")
        out: np.ndarray = np.einsum("ntk,ts->nsk", values, self.group)
        return out


class TreeShapExplainer(_Transformed):
    """Exact TreeSHAP (path-dependent: no background needed; the base value is the trees'
    expected output over the training data, from their node counts)."""

    method = "tree_shap"

    def __init__(self, estimator: Any, **kwargs: Any) -> None:
        import warnings

        with warnings.catch_warnings():
            # shap builds its plotting colormaps on import with matplotlib calls that warn
            # of their own deprecation: nothing a caller can act on.
            warnings.simplefilter("ignore", PendingDeprecationWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            import shap

        super().__init__(**kwargs)
        self._tree = shap.TreeExplainer(estimator)

    def _explain(self, x: Any) -> tuple[np.ndarray, np.ndarray]:
        xt = self.transform(x)
        values = np.asarray(self._tree.shap_values(xt, check_additivity=False), dtype=float)
        if values.ndim == 2:
            values = values[:, :, None]
        expected = np.atleast_1d(np.asarray(self._tree.expected_value, dtype=float))
        base = np.tile(expected, (len(xt), 1))
        values, base = self._positive(values, base)
        return base, self.grouped(values)


class LinearExplainer(_Transformed):
    """Exact for a linear model: ``coef * (x - mean)``, base ``intercept + coef . mean``, the
    mean taken over the background rows in the model's own columns (features independent)."""

    method = "linear"

    def __init__(self, estimator: Any, background: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._coef = np.atleast_2d(np.asarray(estimator.coef_, dtype=float))  # (k, t)
        self._intercept = np.atleast_1d(np.asarray(estimator.intercept_, dtype=float))
        mean = self.transform(self.inputs(background)).mean(axis=0)
        self._mean = mean
        self._base = self._intercept + self._coef @ mean

    def _explain(self, x: Any) -> tuple[np.ndarray, np.ndarray]:
        centred = self.transform(x) - self._mean
        values = centred[:, :, None] * self._coef.T[None, :, :]
        base = np.tile(self._base, (len(centred), 1))
        return base, self.grouped(values)


class BoosterExplainer(Explainer):
    """XGBoost's and LightGBM's own exact TreeSHAP (``pred_contribs`` / ``pred_contrib``):
    the last contribution column is the base value."""

    def __init__(self, model: Any, kind: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.method = kind
        self._model = model
        self._booster = model.get_booster() if hasattr(model, "get_booster") else model

    def _explain(self, x: Any) -> tuple[np.ndarray, np.ndarray]:
        f = len(self.feature_names)
        if self.method == "xgboost":
            import xgboost

            matrix = xgboost.DMatrix(x, feature_names=self._booster.feature_names)
            raw = np.asarray(self._booster.predict(matrix, pred_contribs=True), dtype=float)
        else:
            raw = np.asarray(self._booster.predict(x, pred_contrib=True), dtype=float)
        if raw.ndim == 2 and raw.shape[1] != f + 1:  # LightGBM multi-class: classes side by side
            raw = raw.reshape(len(raw), -1, f + 1)
        if raw.ndim == 2:
            raw = raw[:, None, :]
        # raw: (n, k, f + 1)
        values = np.transpose(raw[:, :, :f], (0, 2, 1))
        return raw[:, :, f], values


class PermutationExplainer(Explainer):
    """The model-agnostic fallback (see :mod:`mlharbor.explain.permutation`)."""

    def __init__(self, model: NativeModel, background: Any, *, budget: int,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._model = model
        self._budget = budget
        self._background = self.inputs(background)
        self.method = "permutation"

    def _outputs(self, x: Any) -> np.ndarray:
        if self.space == "probability":
            proba = np.asarray(self._model.predict_proba(x), dtype=float)
            return proba[:, 1:] if proba.shape[1] == 2 else proba
        return np.asarray(self._model.predict(x), dtype=float).reshape(len(x), -1)

    def _explain(self, x: Any) -> tuple[np.ndarray, np.ndarray]:
        base, values, self.method = permutation_values(
            self._outputs, x, self._background, frame=self.frame, budget=self._budget)
        return base, values


def explainer_for(
    model: Any, background: Any = None, *,
    signature: Signature | None = None, task: str | None = None,
    budget: int = DEFAULT_BUDGET,
) -> Explainer:
    """The exact explainer for ``model`` when there is one, else the sampled fallback.

    ``model`` is a :class:`~mlharbor.formats.predictor.Predictor` loaded with
    ``runtime="native"`` (or a native model with its ``signature`` and ``task``);
    ``background`` holds rows in the signature's columns (records, a DataFrame ...): the
    linear rule takes its mean, the fallback samples it; trees need none. ``budget`` bounds
    the fallback's model evaluations per explained row.
    """
    runner = getattr(model, "runner", None)
    if runner is not None and hasattr(model, "manifest"):  # a formats Predictor
        if getattr(runner, "name", None) != "native":
            raise InvalidInputError(
                "Explanations need the native model; this predictor runs ONNX Runtime.",
                hint="Load the bundle with load_bundle(path, runtime='native').")
        signature, task, native = model.signature, model.task, runner.model
    else:
        native = model
    if signature is None:
        raise InvalidInputError("A native model needs its signature to be explained.",
                                hint="Pass signature=..., or pass the Predictor.")
    task = task or ("classification" if native.classes is not None else "regression")
    classes = native.classes if task == "classification" else None
    frame = native.input_kind == "frame" or not signature.all_numeric
    common: dict[str, Any] = {"signature": signature, "frame": frame,
                              "classes": None if classes is None else list(classes)}
    exact = _exact(native, background, common)
    if exact is not None:
        return exact
    if classes is not None and not native.has_proba:
        raise InvalidInputError(
            "This classifier gives labels only (no predict_proba), and labels cannot be "
            "attributed.", hint="Serve a classifier with probabilities to explain it.")
    if background is None:
        raise InvalidInputError(
            "This model has no exact explainer, and the sampled one needs background rows.",
            hint="Pass background rows (e.g. a sample of the training data).")
    space = "probability" if classes is not None else "value"
    return PermutationExplainer(native, background, budget=budget, space=space, **common)


def _exact(native: NativeModel, background: Any, common: dict[str, Any]) -> Explainer | None:
    """The exact explainer of a native model, or None (the caller takes the fallback)."""
    obj: Any = getattr(native, "model", None)
    module = type(obj).__module__
    if module.startswith(("xgboost", "lightgbm")):
        kind = "xgboost" if module.startswith("xgboost") else "lightgbm"
        objective = str(_objective(obj, kind))
        space = "margin" if objective.startswith(_LINKED) or common["classes"] else "value"
        return BoosterExplainer(obj, kind, space=space, **common)
    if not module.startswith("sklearn."):
        return None
    steps = list(obj.steps) if type(obj).__name__ == "Pipeline" else [("model", obj)]
    estimator = steps[-1][1]
    before = [s for _n, s in steps[:-1]]
    mapping = source_columns(before, common["signature"].names)
    if mapping is None:
        return None
    kind = type(estimator).__name__
    classifier = common["classes"] is not None
    if kind in SHAP_TREES:
        space = ("margin" if kind in BOOSTING else "probability") if classifier else "value"
        try:
            return TreeShapExplainer(estimator, steps=before, mapping=mapping, space=space,
                                     **common)
        except ImportError:
            log.warning("shap is not installed (pip install 'mlharbor[explain]'): %s is "
                        "explained by the sampled fallback", kind)
            return None
        except Exception as exc:  # a tree shap cannot read (categorical splits ...)
            log.warning("TreeSHAP cannot read this %s (%s: %s): the sampled fallback "
                        "explains it", kind, type(exc).__name__, exc)
            return None
    if _linear(estimator, classifier) and background is not None:
        return LinearExplainer(estimator, background, steps=before, mapping=mapping,
                               space="margin" if classifier else "value", **common)
    return None


def _linear(estimator: Any, classifier: bool) -> bool:
    from sklearn.linear_model._base import LinearClassifierMixin, LinearModel

    coef = getattr(estimator, "coef_", None)
    if coef is None or not hasattr(estimator, "intercept_"):
        return False
    if classifier:
        return isinstance(estimator, LinearClassifierMixin)
    return isinstance(estimator, LinearModel) and np.ndim(coef) == 1


def _objective(obj: Any, kind: str) -> str:
    try:
        if kind == "xgboost":
            import json

            booster = obj.get_booster() if hasattr(obj, "get_booster") else obj
            return str(json.loads(booster.save_config())["learner"]["objective"]["name"])
        booster = obj.booster_ if hasattr(obj, "booster_") else obj
        return str(booster.params.get("objective")
                   or str(booster.dump_model().get("objective", "")).split(" ")[0])
    except Exception:  # an objective we cannot read: the classes decide the space
        return ""
