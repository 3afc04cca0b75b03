"""Bind a recipe to its data: load it, check every column the recipe names exists, infer the
schema and run the data contract. Errors name the recipe line of the offending field.
"""

from __future__ import annotations

from collections.abc import Callable

from mlharbor.core.errors import InvalidInputError, MlharborError
from mlharbor.data.checks import CheckReport, Thresholds, check_dataset
from mlharbor.data.loading import Dataset, load_table
from mlharbor.data.numbers import parse_numbers
from mlharbor.data.schema import Schema, infer_schema
from mlharbor.training.recipe import Recipe


def load_data(
    recipe: Recipe, *, s3_endpoint_url: str | None = None, s3_region: str = "us-east-1"
) -> Dataset:
    spec = recipe.data
    try:
        return load_table(spec.path, query=spec.query, url=spec.url, format=spec.format,
                          base_dir=recipe.base_dir, s3_endpoint_url=s3_endpoint_url,
                          s3_region=s3_region)
    except MlharborError as exc:
        field = ("data", "path") if spec.path else ("data", "query")
        raise type(exc)(f"{recipe.where(*field)}: {exc.message}", hint=exc.hint) from exc


def bind_schema(recipe: Recipe, dataset: Dataset) -> Schema:
    """The schema of ``dataset`` under the recipe's overrides and exclusions."""
    spec = recipe.data
    columns = {str(c) for c in dataset.frame.columns}
    named: list[tuple[tuple[str | int, ...], str]] = [(("data", "target"), spec.target)]
    named += [(("data", "exclude", i), c) for i, c in enumerate(spec.exclude)]
    named += [(("data", "id_columns", i), c) for i, c in enumerate(spec.id_columns)]
    named += [(("data", "features", c), c) for c in spec.features]
    if spec.time_column:
        named.append((("data", "time_column"), spec.time_column))
    if recipe.validation.group_column:
        named.append((("validation", "group_column"), recipe.validation.group_column))
    for loc, column in named:
        if column not in columns:
            raise recipe.error(
                loc, f"unknown column {column!r}; the data has {sorted(columns)}",
                hint="Fix the spelling (column names are case-sensitive).",
            )
    excluded = [*spec.exclude, *spec.id_columns]
    excluded += [c for c in (spec.time_column, recipe.validation.group_column) if c]
    schema = infer_schema(dataset.frame, spec.target, task=spec.task, overrides=spec.features,
                          exclude=list(dict.fromkeys(excluded)))
    if not schema.features:
        raise recipe.error(("data",), "no feature columns are left after exclusions")
    if spec.positive_class is not None:
        if schema.task == "regression":
            raise recipe.error(("data", "positive_class"),
                               "positive_class only fits classification")
        if spec.positive_class not in schema.classes:
            raise recipe.error(
                ("data", "positive_class"),
                f"{spec.positive_class!r} is not a class of the target; classes are "
                f"{list(schema.classes)}",
            )
    return schema


def check_data(
    recipe: Recipe, dataset: Dataset, schema: Schema,
    warn: Callable[[str], None] | None = None,
) -> CheckReport:
    """Run the data contract; violations raise InvalidInputError naming column and figure.

    When the contract holds, every column the schema calls numeric is stored as numbers in
    ``dataset.frame`` (text cells parsed; bad cells missing, which only happens when the recipe
    sets ``data.unparseable_numbers: coerce``), so fitting, the reference profile and the
    serving signature all see the numeric column that was checked.
    """
    import pandas as pd

    c = recipe.checks
    thresholds = Thresholds(
        max_missing_share=c.max_missing_share, max_duplicate_share=c.max_duplicate_share,
        max_target_missing_share=c.max_target_missing_share, max_categories=c.max_categories,
        min_class_share=c.min_class_share, min_class_count=recipe.validation.folds,
        leakage_threshold=c.leakage_threshold,
    )
    report = check_dataset(dataset.frame, schema, thresholds, seed=recipe.validation.seed,
                           unparseable_numbers=recipe.data.unparseable_numbers)
    if warn is not None:
        for finding in report.warnings:
            warn(f"warning: {finding.message}")
    if report.violations:
        raise InvalidInputError(
            "The data breaks its contract: " + " ".join(f.message for f in report.violations),
            hint="Nothing was trained or registered.",
            violations=[f.to_dict() for f in report.violations],
        )
    frame = dataset.frame
    for column in schema.columns("numeric"):
        if not pd.api.types.is_numeric_dtype(frame[column]):
            frame[column] = parse_numbers(frame[column]).values
    return report
