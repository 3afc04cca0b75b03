"""Schema inference and the data contract: each finding names column and figure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import mlharbor
from mlharbor.core.errors import InvalidInputError
from mlharbor.data.checks import Thresholds, check_dataset
from mlharbor.data.schema import infer_schema

CHURN = Path(mlharbor.__file__).parent / "demo" / "churn.csv"


@pytest.fixture(scope="module")
def churn() -> pd.DataFrame:
    return pd.read_csv(CHURN).head(1500)


def test_infer_schema(churn: pd.DataFrame) -> None:
    frame = churn.assign(signup=pd.date_range("2024-01-01", periods=len(churn)).astype(str))
    schema = infer_schema(frame, "churn", exclude=["customer_id"],
                          overrides={"senior": "categorical"})
    assert schema.task == "classification" and schema.classes == (0, 1)
    assert schema.features["tenure_months"] == "numeric"
    assert schema.features["contract"] == "categorical"
    assert schema.features["senior"] == "categorical"
    assert schema.features["signup"] == "datetime"
    assert "customer_id" not in schema.features
    assert infer_schema(frame, "monthly_charges").task == "regression"
    with pytest.raises(InvalidInputError, match="'nope' is not in the data"):
        infer_schema(frame, "nope")


def test_clean_demo_data_only_warns(churn: pd.DataFrame) -> None:
    schema = infer_schema(churn, "churn", exclude=["customer_id"])
    report = check_dataset(churn, schema, Thresholds())
    assert report.violations == []
    assert [(f.check, f.column) for f in report.warnings] == [
        ("missing_values", "total_charges")]
    assert "1.0%" in report.warnings[0].message or "%" in report.warnings[0].message


def test_each_check_fires(churn: pd.DataFrame) -> None:
    rng = np.random.default_rng(0)
    frame = churn.assign(
        constant=1,
        mostly_missing=np.where(rng.random(len(churn)) < 0.7, np.nan, 1.0),
        leak=churn["churn"] * 10 + rng.normal(0, 0.1, len(churn)),
    )
    frame.loc[:4, "churn"] = np.nan
    schema = infer_schema(frame, "churn")  # customer_id kept: high cardinality
    report = check_dataset(frame, schema, Thresholds(max_categories=50))
    found = {(f.check, f.severity, f.column) for f in report.findings}
    assert ("constant_column", "warning", "constant") in found
    assert ("missing_values", "violation", "mostly_missing") in found
    assert ("leakage", "violation", "leak") in found
    assert ("target_missing", "violation", "churn") in found
    assert ("high_cardinality", "warning", "customer_id") in found
    leak = next(f for f in report.findings if f.check == "leakage")
    assert leak.value >= 0.98 and "'leak'" in leak.message and "churn" in leak.message


def test_duplicates_and_imbalance() -> None:
    frame = pd.DataFrame({"x": [1.0, 2.0] * 50, "y": [0] * 97 + [1] * 3})
    schema = infer_schema(frame, "y")
    report = check_dataset(frame, schema, Thresholds(max_duplicate_share=0.5, min_class_count=5))
    found = {(f.check, f.severity) for f in report.findings}
    assert ("duplicate_rows", "violation") in found
    assert ("class_too_small", "violation") in found
