"""Candidate estimators: resolve import paths, check params, expand search spaces, build the
Pipeline ``[feature functions] -> preparation -> model``.

Any class with ``fit`` and ``predict`` that follows the scikit-learn estimator API works;
scikit-learn, XGBoost and LightGBM are the ones tested. Names are import paths
(``sklearn.ensemble.RandomForestClassifier``); a bare class name is looked up in the known
estimators so ``RandomForestClassifier`` works too.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any

from mlharbor.core.errors import ConfigError

KNOWN_ESTIMATORS: tuple[str, ...] = (
    "sklearn.linear_model.LogisticRegression",
    "sklearn.linear_model.LinearRegression",
    "sklearn.linear_model.Ridge",
    "sklearn.linear_model.Lasso",
    "sklearn.linear_model.ElasticNet",
    "sklearn.ensemble.RandomForestClassifier",
    "sklearn.ensemble.RandomForestRegressor",
    "sklearn.ensemble.GradientBoostingClassifier",
    "sklearn.ensemble.GradientBoostingRegressor",
    "sklearn.ensemble.HistGradientBoostingClassifier",
    "sklearn.ensemble.HistGradientBoostingRegressor",
    "sklearn.ensemble.ExtraTreesClassifier",
    "sklearn.ensemble.ExtraTreesRegressor",
    "sklearn.tree.DecisionTreeClassifier",
    "sklearn.tree.DecisionTreeRegressor",
    "sklearn.neighbors.KNeighborsClassifier",
    "sklearn.neighbors.KNeighborsRegressor",
    "sklearn.svm.SVC",
    "sklearn.svm.SVR",
    "xgboost.XGBClassifier",
    "xgboost.XGBRegressor",
    "lightgbm.LGBMClassifier",
    "lightgbm.LGBMRegressor",
)

MODEL_STEP = "model"


def resolve_estimator(path: str) -> type[Any]:
    """The estimator class named by ``path``; ConfigError with suggestions when it is unknown."""
    full = path
    if "." not in path:
        matches = [k for k in KNOWN_ESTIMATORS if k.rsplit(".", 1)[1] == path]
        if not matches:
            raise _unknown(path, "it is not an import path nor a known estimator name")
        full = matches[0]
    module_name, _, class_name = full.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        missing = module_name.split(".")[0]
        raise _unknown(
            path, f"the module {module_name!r} cannot be imported ({exc})",
            hint=f"Install it (pip install {missing}) or fix the path." if missing in (
                "xgboost", "lightgbm") else None,
        ) from exc
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        raise _unknown(path, f"the module {module_name!r} has no class {class_name!r}")
    if not (hasattr(cls, "fit") and hasattr(cls, "predict") and hasattr(cls, "get_params")):
        raise ConfigError(
            f"The estimator {path!r} is not a scikit-learn style estimator (it needs fit, "
            "predict and get_params).",
            field="estimator",
        )
    return cls


def _unknown(path: str, why: str, hint: str | None = None) -> ConfigError:
    close = difflib.get_close_matches(path, KNOWN_ESTIMATORS, n=3, cutoff=0.5)
    close += [
        k for k in KNOWN_ESTIMATORS
        if k.rsplit(".", 1)[1].lower() == path.rsplit(".", 1)[-1].lower() and k not in close
    ]
    suggestion = f" Did you mean {', '.join(close)}?" if close else ""
    return ConfigError(
        f"Unknown estimator {path!r}: {why}.{suggestion}",
        hint=hint or "Give a full import path such as sklearn.ensemble.RandomForestClassifier.",
        field="estimator",
    )


def make_estimator(cls: type[Any], params: dict[str, Any], seed: int) -> Any:
    """Instantiate with ``params``; unknown params raise ConfigError listing the valid ones."""
    valid = set(cls().get_params(deep=False))
    unknown = sorted(set(params) - valid)
    if unknown:
        raise ConfigError(
            f"{cls.__name__} has no parameter(s) {unknown}; valid ones are {sorted(valid)}.",
            field="params",
        )
    values = dict(params)
    if "random_state" in valid and "random_state" not in values:
        values["random_state"] = seed
    if cls.__module__.startswith("lightgbm") and "verbose" not in values:
        values["verbose"] = -1
    try:
        estimator = cls(**values)
        # scikit-learn checks params only in fit; check now, before any data is read.
        validate = getattr(estimator, "_validate_params", None)
        if callable(validate) and getattr(estimator, "_parameter_constraints", None):
            validate()
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"Invalid parameters for {cls.__name__}: {exc}", field="params"
        ) from exc
    return estimator


def expand_search(
    cls: type[Any], method: str, space: dict[str, Any], n_iter: int, seed: int
) -> list[dict[str, Any]]:
    """The parameter settings a grid or random search will try (pipeline-independent names)."""
    from sklearn.model_selection import ParameterGrid, ParameterSampler

    valid = set(cls().get_params(deep=False))
    unknown = sorted(set(space) - valid)
    if unknown:
        raise ConfigError(
            f"The search space names {unknown}, which {cls.__name__} does not have; valid "
            f"parameters are {sorted(valid)}.",
            field="search.space",
        )
    if method == "grid":
        return [dict(p) for p in ParameterGrid(space)]
    dists = {key: _distribution(value) for key, value in space.items()}
    return [dict(p) for p in ParameterSampler(dists, n_iter=n_iter, random_state=seed)]


def _distribution(value: Any) -> Any:
    if isinstance(value, list):
        return value
    from scipy import stats

    spec = value if isinstance(value, dict) else value.model_dump()
    kind, low, high = spec["distribution"], spec["low"], spec["high"]
    if kind == "uniform":
        return stats.uniform(low, high - low)
    if kind == "loguniform":
        return stats.loguniform(low, high)
    return stats.randint(int(low), int(high) + 1)


def build_pipeline(preprocessor: Any, estimator: Any, feature_step: Any | None = None) -> Any:
    """One Pipeline taking the raw input columns: [features] -> prepare -> model."""
    from sklearn.pipeline import Pipeline

    steps: list[tuple[str, Any]] = []
    if feature_step is not None:
        steps.append(("features", feature_step))
    steps += [("prepare", preprocessor), (MODEL_STEP, estimator)]
    return Pipeline(steps)


def describe_params(estimator: Any) -> dict[str, str]:
    """The model's non-default-looking params as strings, for the registry's ``params``."""
    return {k: repr(v) if not isinstance(v, str) else v for k, v in
            sorted(estimator.get_params(deep=False).items())}
