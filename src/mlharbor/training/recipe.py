"""Training recipes: a declarative YAML file, or the same models built in Python.

A recipe names the data, how to prepare it, the candidate estimators (with optional search
spaces), how to validate, which metric decides and which gates a version must pass::

    data: {path: churn.csv, target: churn, exclude: [customer_id]}
    candidates:
      - estimator: sklearn.ensemble.RandomForestClassifier
        params: {n_estimators: 100}
    validation: {holdout: 0.2, folds: 5, seed: 42}
    metrics: {primary: f1}
    gates: ["f1 >= 0.6", "better than baseline"]
    register: {name: churn, alias: champion}
    training: {backend: dask, scheduler: "tcp://10.0.0.5:8786"}   # optional; default local

YAML is composed with node positions kept, so every error names the line and the field:
``recipe.yaml line 9, candidates[0].params: ...``. Checks that need other layers (estimator
import paths, column names, gate grammar) run later and use :meth:`Recipe.where` for the line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from mlharbor.core.errors import ConfigError
from mlharbor.core.yamldoc import Location
from mlharbor.data.numbers import UnparseablePolicy

Task = Literal["classification", "regression"]
FeatureKind = Literal["numeric", "categorical", "datetime"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False, populate_by_name=True)


class DataSpec(_Strict):
    """Where the rows come from and what to predict."""

    path: str | None = Field(None, description="CSV or Parquet file: local path or s3:// URL.")
    query: str | None = Field(None, description="SQL query, read with SQLAlchemy from `url`.")
    url: str | None = Field(None, description="SQLAlchemy URL for `query`.")
    format: Literal["csv", "parquet"] | None = Field(None, description="Default: from suffix.")
    target: str = Field(description="Column to predict.")
    task: Task | None = Field(None, description="Inferred from the target when omitted.")
    positive_class: str | int | bool | None = Field(
        None, description="Label counted as positive in binary metrics (default: the largest)."
    )
    features: dict[str, FeatureKind] = Field(
        default_factory=dict, description="Override inferred feature types."
    )
    exclude: list[str] = Field(default_factory=list, description="Columns never used as features.")
    id_columns: list[str] = Field(default_factory=list, description="Identifiers; excluded.")
    time_column: str | None = Field(None, description="Orders rows for time splits; excluded.")
    unparseable_numbers: UnparseablePolicy = Field(
        "fail",
        description="Cells of a numeric column that are not numbers (`abc`, `n/a`): `fail` "
        "stops training and names them; `coerce` treats them as missing values.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> DataSpec:
        if self.path and self.query:
            raise ValueError("give either `path` or `query` + `url`, not both")
        if not self.path and not self.query:
            raise ValueError("give `path` (CSV or Parquet) or `query` + `url` (SQL)")
        if self.query and not self.url:
            raise ValueError("`query` needs `url`, a SQLAlchemy URL such as sqlite:///data.db")
        return self


class NumericPreparation(_Strict):
    impute: Literal["median", "mean", "most_frequent", "constant", "none"] = "median"
    fill_value: float = 0.0
    scale: Literal["standard", "minmax", "robust", "none"] = "standard"


class CategoricalPreparation(_Strict):
    impute: Literal["most_frequent", "constant", "none"] = "constant"
    fill_value: str = "missing"
    encode: Literal["onehot", "ordinal"] = "onehot"


DatePart = Literal["year", "month", "day", "dayofweek", "dayofyear", "hour", "minute"]


def _default_parts() -> list[DatePart]:
    return ["year", "month", "day", "dayofweek"]


class DatetimePreparation(_Strict):
    parts: list[DatePart] = Field(default_factory=_default_parts)


class FeatureFunctionsSpec(_Strict):
    """User functions ``f(frame) -> DataFrame | Series`` whose outputs become new columns."""

    module: str = Field(description="A .py file (relative to the recipe) or a dotted module.")
    functions: list[str] = Field(min_length=1)


class Preparation(_Strict):
    numeric: NumericPreparation = Field(default_factory=NumericPreparation)
    categorical: CategoricalPreparation = Field(default_factory=CategoricalPreparation)
    datetime: DatetimePreparation = Field(default_factory=DatetimePreparation)
    feature_functions: FeatureFunctionsSpec | None = None
    trust_code: bool = Field(False, description="Must be true to run feature_functions.")

    @model_validator(mode="after")
    def _trusted(self) -> Preparation:
        if self.feature_functions is not None and not self.trust_code:
            raise ValueError(
                "feature_functions run code from your module at training and at prediction; "
                "set `trust_code: true` in `preparation` to allow it"
            )
        return self


class Distribution(_Strict):
    distribution: Literal["uniform", "loguniform", "randint"]
    low: float
    high: float

    @model_validator(mode="after")
    def _ordered(self) -> Distribution:
        if not self.low < self.high:
            raise ValueError(f"`low` ({self.low}) must be below `high` ({self.high})")
        return self


class SearchSpec(_Strict):
    method: Literal["grid", "random"] = "grid"
    space: dict[str, list[Any] | Distribution] = Field(min_length=1)
    n_iter: int = Field(10, ge=1, le=1000, description="Settings sampled by random search.")

    @model_validator(mode="after")
    def _grid_lists(self) -> SearchSpec:
        for key, value in self.space.items():
            if isinstance(value, list) and not value:
                raise ValueError(f"the search space for {key!r} is an empty list")
            if self.method == "grid" and not isinstance(value, list):
                raise ValueError(
                    f"grid search needs a list of values for {key!r}; distributions need "
                    "`method: random`"
                )
        return self


class Candidate(_Strict):
    estimator: str = Field(description="Import path, e.g. sklearn.ensemble.RandomForestClassifier")
    name: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    search: SearchSpec | None = None

    @property
    def label(self) -> str:
        return self.name or self.estimator.rsplit(".", 1)[-1]


class ValidationSpec(_Strict):
    holdout: float = Field(0.2, gt=0.0, lt=0.9, description="Share of rows kept for the holdout.")
    folds: int = Field(5, ge=2, le=50)
    strategy: Literal["auto", "kfold", "stratified", "group", "time"] = "auto"
    group_column: str | None = None
    seed: int = 42
    bootstrap: int = Field(500, ge=0, le=100_000, description="Resamples for holdout CIs.")

    @model_validator(mode="after")
    def _groups(self) -> ValidationSpec:
        if self.strategy == "group" and not self.group_column:
            raise ValueError("`strategy: group` needs `group_column`")
        return self


class MetricsSpec(_Strict):
    primary: str | None = Field(None, description="Default: f1 (binary), f1_macro, rmse.")
    baseline: Literal["auto", "majority", "stratified", "mean", "median"] = "auto"


class ChecksSpec(_Strict):
    max_missing_share: float = Field(0.5, ge=0.0, le=1.0)
    max_duplicate_share: float = Field(0.5, ge=0.0, le=1.0)
    max_target_missing_share: float = Field(0.0, ge=0.0, le=1.0)
    max_categories: int = Field(50, ge=2, description="Warn on categoricals with more levels.")
    min_class_share: float = Field(0.05, ge=0.0, le=0.5, description="Warn below this share.")
    leakage_threshold: float = Field(
        0.98, gt=0.5, le=1.0, description="Stop when one feature alone scores this well."
    )


class RegisterSpec(_Strict):
    name: str
    alias: str | None = Field("challenger", description="Alias moved to a passing version.")
    description: str = ""
    tags: dict[str, str] = Field(default_factory=dict)


class TrainingSpec(_Strict):
    """Where the cross-validation and search fits run (``mlharbor train --backend`` overrides)."""

    backend: Literal["local", "dask"] | None = Field(
        None, description="`local` (this machine's cores) or `dask` (a Dask cluster); default: "
        "the settings' training.backend.")
    scheduler: str | None = Field(
        None, description="The Dask scheduler, tcp://HOST:PORT (backend dask only).")

    @field_validator("scheduler")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from mlharbor.compute.engine import check_scheduler
        from mlharbor.core.errors import InvalidInputError

        try:
            return check_scheduler(value)
        except InvalidInputError as exc:
            raise ValueError(exc.message) from exc

    @model_validator(mode="after")
    def _scheduler_needs_dask(self) -> TrainingSpec:
        if self.scheduler is not None and self.backend == "local":
            raise ValueError("a `scheduler` is only used with `backend: dask`; drop it or set "
                             "`backend: dask`")
        return self


class SliceEntry(_Strict):
    """A slice of the holdout scored on its own: a column's values, a numeric column cut at
    ``bins``, or the rows a ``where`` filter selects (named by ``name``); see
    :mod:`mlharbor.evaluation.slices`."""

    column: str | None = Field(None, description="Slice by this column's values.")
    bins: list[float] | None = Field(None, min_length=1, description="Edges cutting `column`.")
    name: str | None = Field(None, description="The filter slice's name (gates use it).")
    where: str | None = Field(None, description="Filter: contract == 'month-to-month' and ...")

    @model_validator(mode="after")
    def _one_kind(self) -> SliceEntry:
        import math

        if (self.column is None) == (self.where is None):
            raise ValueError("give either `column` (with optional `bins`) or `name` + `where`")
        if self.where is not None and (self.bins is not None or not self.name):
            raise ValueError("a `where` slice needs a `name` and takes no `bins`")
        if self.column is not None and self.name is not None:
            raise ValueError("a `column` slice is named by its values; drop `name`")
        edges = self.bins or []
        if any(not math.isfinite(b) for b in edges) or edges != sorted(set(edges)):
            raise ValueError(f"`bins` must be finite and strictly increasing; got {edges}")
        return self


class CardSpec(_Strict):
    """What the model card says that no record knows (``mlharbor models card --set`` adds)."""

    intended_use: str | None = None
    out_of_scope: str | None = None
    limitations: str | None = None
    ethical_considerations: str | None = None
    owners: str | None = None


class Recipe(_Strict):
    """A whole training recipe. Build it in Python or with :func:`load_recipe`."""

    data: DataSpec
    preparation: Preparation = Field(default_factory=Preparation)
    candidates: list[Candidate] = Field(min_length=1)
    validation: ValidationSpec = Field(default_factory=ValidationSpec)
    metrics: MetricsSpec = Field(default_factory=MetricsSpec)
    gates: list[str] = Field(default_factory=list)
    checks: ChecksSpec = Field(default_factory=ChecksSpec)
    registration: RegisterSpec | None = Field(None, alias="register")
    slices: list[SliceEntry] | None = None
    card: CardSpec | None = None
    training: TrainingSpec | None = None

    _source: str = PrivateAttr("recipe")
    _lines: dict[Location, int] = PrivateAttr(default_factory=dict)
    _base_dir: Path = PrivateAttr(default_factory=Path.cwd)

    @property
    def source(self) -> str:
        return self._source

    @property
    def base_dir(self) -> Path:
        """Folder that relative paths in the recipe are read from."""
        return self._base_dir

    def where(self, *loc: str | int) -> str:
        """``"recipe.yaml line 7, data.target"`` for error messages (line when known)."""
        from mlharbor.core.yamldoc import where

        return where(self._source, self._lines, loc)

    def error(self, loc: Location, message: str, *, hint: str | None = None) -> ConfigError:
        """A ConfigError that names the recipe, the line and the field."""
        from mlharbor.core.yamldoc import dotted

        return ConfigError(f"{self.where(*loc)}: {message}", hint=hint, field=dotted(loc))

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True, by_alias=True)


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe file; every error names the file, line and field."""
    from mlharbor.core.yamldoc import read_text

    file = Path(path)
    text = read_text(file, what="recipe",
                     hint="Check the path; a recipe is a YAML file such as recipe.yaml.")
    return recipe_from_yaml(text, source=str(file), base_dir=file.resolve().parent)


def recipe_from_yaml(text: str, *, source: str = "recipe", base_dir: Path | None = None) -> Recipe:
    from mlharbor.core.yamldoc import load_yaml

    doc = load_yaml(text, source=source)
    return recipe_from_dict(doc.data, source=source, lines=doc.lines, base_dir=base_dir)


def recipe_from_dict(
    data: Any,
    *,
    source: str = "recipe",
    lines: dict[Location, int] | None = None,
    base_dir: Path | None = None,
) -> Recipe:
    from mlharbor.core.yamldoc import validate_model

    lines = lines or {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: a recipe must be a mapping with at least `data` and `candidates`; "
            f"received {type(data).__name__}."
        )
    recipe = validate_model(
        Recipe, data, source=source, lines=lines, what="recipe",
        hint="See the recipe reference in the docs, or src/mlharbor/demo/recipe.yaml.")
    recipe._source = source
    recipe._lines = lines
    if base_dir is not None:
        recipe._base_dir = base_dir
    return recipe
