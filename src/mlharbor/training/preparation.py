"""Data preparation as scikit-learn steps, so preparation and model form ONE Pipeline that takes
the raw input columns: ``[feature functions] -> ColumnTransformer -> estimator``.

Imputation, scaling, one-hot or ordinal encoding and date parts are built in. User feature
functions come from a module the recipe names; their source is kept inside the fitted step so a
bundle is self-contained, and running it needs ``trust_code: true`` (it is arbitrary code).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sklearn.base import BaseEstimator, TransformerMixin

from mlharbor.core.errors import ConfigError, InvalidInputError

if TYPE_CHECKING:
    import pandas as pd

    from mlharbor.training.recipe import FeatureFunctionsSpec, Preparation, Recipe


_PANDAS_PARTS = {"dayofweek": "day_of_week", "dayofyear": "day_of_year"}


class DateParts(TransformerMixin, BaseEstimator):  # type: ignore[misc]
    """Turns datetime (or ISO date string) columns into numeric parts: year, month, ..."""

    def __init__(self, parts: tuple[str, ...] = ("year", "month", "day", "dayofweek")) -> None:
        self.parts = parts

    def fit(self, X: pd.DataFrame, y: Any = None) -> DateParts:
        self.feature_names_in_ = [str(c) for c in X.columns]
        return self

    def transform(self, X: pd.DataFrame) -> Any:
        import numpy as np
        import pandas as pd

        blocks = []
        for column in X.columns:
            stamps = pd.to_datetime(X[column], errors="coerce", format="mixed")
            for part in self.parts:
                attribute = _PANDAS_PARTS.get(part, part)
                blocks.append(getattr(stamps.dt, attribute).astype(float).to_numpy())
        return np.column_stack(blocks) if blocks else np.empty((len(X), 0))

    def get_feature_names_out(self, input_features: Any = None) -> Any:
        import numpy as np

        names = input_features if input_features is not None else self.feature_names_in_
        return np.array([f"{c}_{p}" for c in names for p in self.parts], dtype=object)


class FeatureFunctions(TransformerMixin, BaseEstimator):  # type: ignore[misc]
    """Adds the columns computed by user functions ``f(frame) -> DataFrame | Series``.

    ``source`` holds the module's code (read when the recipe is bound), so predicting does not
    need the original file; it is executed once per process, on first use.
    """

    def __init__(self, module: str = "", source: str = "", functions: tuple[str, ...] = ()) -> None:
        self.module = module
        self.source = source
        self.functions = functions

    def fit(self, X: pd.DataFrame, y: Any = None) -> FeatureFunctions:
        self._callables()
        return self

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        return apply_feature_functions(X, self._callables(), self.module)

    def _callables(self) -> list[Any]:
        cached = getattr(self, "_loaded", None)
        if cached is None:
            namespace: dict[str, Any] = {"__name__": f"mlharbor_features_{self.module}"}
            exec(compile(self.source, self.module, "exec"), namespace)  # trusted by the recipe
            cached = [namespace[name] for name in self.functions]
            self._loaded = cached
        return cached

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_loaded", None)
        return state


def apply_feature_functions(frame: pd.DataFrame, funcs: list[Any], module: str) -> pd.DataFrame:
    import pandas as pd

    out = frame.copy()
    for func in funcs:
        name = getattr(func, "__name__", "function")
        try:
            result = func(frame)
        except Exception as exc:
            raise InvalidInputError(
                f"The feature function {name!r} from {module!r} failed: "
                f"{type(exc).__name__}: {exc}."
            ) from exc
        if isinstance(result, pd.Series):
            result = result.to_frame(name=result.name or name)
        if not isinstance(result, pd.DataFrame) or len(result) != len(frame):
            raise InvalidInputError(
                f"The feature function {name!r} from {module!r} must return a DataFrame or "
                f"Series with one row per input row; it returned {type(result).__name__}."
            )
        for column in result.columns:
            out[str(column)] = result[column].to_numpy()
    return out


def load_feature_functions(spec: FeatureFunctionsSpec, base_dir: Path) -> FeatureFunctions:
    """Read the named module's source and check each function exists."""
    if spec.module.endswith(".py"):
        path = Path(spec.module)
        path = path if path.is_absolute() else base_dir / path
        try:
            source = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                f"Cannot read the feature module {str(path)!r}: {exc.strerror or exc}.",
                hint="`preparation.feature_functions.module` is read relative to the recipe.",
            ) from exc
    else:
        try:
            source = inspect.getsource(importlib.import_module(spec.module))
        except (ImportError, OSError, TypeError) as exc:
            raise ConfigError(
                f"Cannot import the feature module {spec.module!r}: {exc}.",
                hint="Name a .py file next to the recipe or an importable module.",
            ) from exc
    step = FeatureFunctions(Path(spec.module).stem, source, tuple(spec.functions))
    try:
        step._callables()
    except KeyError as exc:
        raise ConfigError(
            f"The feature module {spec.module!r} has no function {exc.args[0]!r}.",
            hint="List functions defined at the top level of that module.",
        ) from exc
    except Exception as exc:
        raise ConfigError(
            f"The feature module {spec.module!r} fails to load: {type(exc).__name__}: {exc}."
        ) from exc
    return step


def build_preprocessor(
    features: dict[str, str], preparation: Preparation, numeric_coded: frozenset[str] = frozenset()
) -> Any:
    """A ColumnTransformer for ``features`` (column -> numeric | categorical | datetime).

    ``numeric_coded`` names categorical columns stored as numbers (codes such as 0/1/2); they
    are imputed with the most frequent code, since a text fill value cannot go in a number.
    """
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import (
        MinMaxScaler,
        OneHotEncoder,
        OrdinalEncoder,
        RobustScaler,
        StandardScaler,
    )

    numeric = [c for c, k in features.items() if k == "numeric"]
    categorical = [c for c, k in features.items() if k == "categorical" and c not in numeric_coded]
    coded = [c for c, k in features.items() if k == "categorical" and c in numeric_coded]
    dates = [c for c, k in features.items() if k == "datetime"]
    transformers: list[tuple[str, Any, list[str]]] = []

    def numeric_steps() -> list[tuple[str, Any]]:
        spec = preparation.numeric
        steps: list[tuple[str, Any]] = []
        if spec.impute != "none":
            imputer = SimpleImputer(strategy=spec.impute, fill_value=spec.fill_value)
            steps.append(("impute", imputer))
        scalers = {"standard": StandardScaler, "minmax": MinMaxScaler, "robust": RobustScaler}
        if spec.scale != "none":
            steps.append(("scale", scalers[spec.scale]()))
        return steps or [("identity", "passthrough")]

    if numeric:
        transformers.append(("num", Pipeline(numeric_steps()), numeric))
    def categorical_steps(strategy: str) -> list[tuple[str, Any]]:
        spec = preparation.categorical
        steps: list[tuple[str, Any]] = []
        if spec.impute != "none":
            steps.append(("impute", SimpleImputer(strategy=strategy, fill_value=spec.fill_value)))
        if spec.encode == "onehot":
            steps.append(("encode", OneHotEncoder(handle_unknown="ignore")))
        else:
            steps.append((
                "encode",
                OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1),
            ))
        return steps

    if categorical:
        transformers.append(
            ("cat", Pipeline(categorical_steps(preparation.categorical.impute)), categorical))
    if coded:
        transformers.append(("code", Pipeline(categorical_steps("most_frequent")), coded))
    if dates:
        date_steps = [("parts", DateParts(tuple(preparation.datetime.parts))), *numeric_steps()]
        transformers.append(("date", Pipeline(date_steps), dates))
    return ColumnTransformer(transformers, remainder="drop", verbose_feature_names_out=True)


def check_trusted(recipe: Recipe, pipeline: Any, trusted: Collection[str]) -> None:
    """Refuse, before any fitting, a pipeline whose own steps the registry would not load.

    The answer comes from the skops policy itself (:func:`mlharbor.formats.sklearn.
    untrusted_types`), so training and loading never disagree: mlharbor's pure transformers
    (:class:`DateParts`) are trusted by the platform, while :class:`FeatureFunctions` runs the
    recipe's code when a version loads and needs the operator's setting.
    """
    from mlharbor.formats.sklearn import untrusted_types

    needed: list[type[Any]] = []
    if "features" in pipeline.named_steps:
        needed.append(FeatureFunctions)
    prepare_step = pipeline.named_steps["prepare"]
    if any(name == "date" for name, _, _ in prepare_step.transformers):
        needed.append(DateParts)
    missing = untrusted_types([_full_name(c) for c in needed], tuple(trusted))
    if missing:
        raise recipe.error(
            ("preparation",),
            f"the prepared pipeline uses {', '.join(missing)}, which the registry loads only "
            "when trusted (it runs the feature functions' code when a version loads); nothing "
            "was trained or registered",
            hint=f"Add {', '.join(missing)} to formats.skops_trusted_types "
                 "(MLHARBOR_FORMATS__SKOPS_TRUSTED_TYPES) or drop preparation.feature_functions.",
        )


def _full_name(cls: type[Any]) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"
