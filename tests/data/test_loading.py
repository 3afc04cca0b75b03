"""Loading CSV, Parquet, SQL and s3:// tables, with stable content fingerprints."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pandas as pd
import pytest

from mlharbor.core.errors import ConfigError, InvalidInputError, NotFoundError
from mlharbor.data.loading import load_table


@pytest.fixture
def frame() -> pd.DataFrame:
    return pd.DataFrame({"a": [1, 2, 3], "b": ["x", "y", None], "t": [0, 1, 0]})


def test_csv_and_parquet(tmp_path: Path, frame: pd.DataFrame) -> None:
    frame.to_csv(tmp_path / "d.csv", index=False)
    frame.to_parquet(tmp_path / "d.parquet")
    csv = load_table("d.csv", base_dir=tmp_path)
    parquet = load_table(tmp_path / "d.parquet")
    assert csv.rows == parquet.rows == 3
    assert csv.format == "csv" and parquet.format == "parquet"
    assert csv.fingerprint.startswith("sha256:")
    assert load_table(tmp_path / "d.csv").fingerprint == csv.fingerprint
    (tmp_path / "e.csv").write_text("a,b,t\n1,x,0\n2,y,1\n3,,1\n")
    assert load_table(tmp_path / "e.csv").fingerprint != csv.fingerprint


def test_sql(tmp_path: Path, frame: pd.DataFrame) -> None:
    db = tmp_path / "d.db"
    with sqlite3.connect(db) as conn:
        frame.to_sql("rows", conn, index=False)
    data = load_table(query="select a, b, t from rows where a > 1", url=f"sqlite:///{db}")
    assert data.rows == 2 and data.format == "sql"
    again = load_table(query="select a, b, t from rows where a > 1", url=f"sqlite:///{db}")
    assert again.fingerprint == data.fingerprint
    with pytest.raises(InvalidInputError, match="The SQL query failed"):
        load_table(query="select nope from rows", url=f"sqlite:///{db}")


def test_s3(s3_bucket: str, moto_server: str, frame: pd.DataFrame) -> None:
    import boto3

    body = frame.to_csv(index=False).encode()
    boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1").put_object(
        Bucket=s3_bucket, Key="train/d.csv", Body=body)
    data = load_table(f"s3://{s3_bucket}/train/d.csv", s3_endpoint_url=moto_server)
    assert data.rows == 3 and data.uri == f"s3://{s3_bucket}/train/d.csv"
    with pytest.raises(NotFoundError):
        load_table(f"s3://{s3_bucket}/nope.csv", s3_endpoint_url=moto_server)


def test_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="does not exist"):
        load_table(tmp_path / "missing.csv")
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(InvalidInputError, match="Cannot parse"):
        load_table(tmp_path / "bad.parquet")
    (tmp_path / "empty.csv").write_text("a,b\n")
    with pytest.raises(InvalidInputError, match="no rows"):
        load_table(tmp_path / "empty.csv")
    with pytest.raises(ConfigError, match="Cannot tell the format"):
        load_table(tmp_path / "data.xlsx")
