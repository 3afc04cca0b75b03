"""Load a table from CSV or Parquet (local or ``s3://``) or a SQL query, with a content hash.

The fingerprint is the sha256 of the bytes read (files) or of a canonical hash of the rows
(SQL), so the same data gives the same fingerprint wherever it is read from.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from mlharbor.core.errors import ConfigError, InvalidInputError, NotFoundError, UnavailableError

if TYPE_CHECKING:
    import pandas as pd


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Rows read for training plus where they came from (the ``DatasetSnapshot`` of DESIGN)."""

    frame: pd.DataFrame
    uri: str
    fingerprint: str
    format: str
    # Which rows the holdout may be drawn from (a boolean mask over ``frame``), or None: any.
    # A retraining snapshot sets it to the rows the champion never trained on, so the
    # champion comparison is not judged on the champion's own training data.
    holdout_from: Any = None

    @property
    def rows(self) -> int:
        return len(self.frame)

    def snapshot(self) -> dict[str, Any]:
        return {
            "uri": self.uri,
            "fingerprint": self.fingerprint,
            "format": self.format,
            "rows": self.rows,
            "columns": [str(c) for c in self.frame.columns],
        }


def load_table(
    path: str | Path | None = None,
    *,
    query: str | None = None,
    url: str | None = None,
    format: str | None = None,
    base_dir: Path | None = None,
    s3_endpoint_url: str | None = None,
    s3_region: str = "us-east-1",
) -> Dataset:
    """Read a CSV/Parquet file (local path or ``s3://bucket/key``) or run ``query`` on ``url``."""
    if query is not None:
        if not url:
            raise ConfigError("A SQL query needs a SQLAlchemy URL; none was given.")
        return _read_sql(query, url)
    if path is None:
        raise ConfigError("No data source given: pass a file path or a SQL query and URL.")
    text = str(path)
    fmt = format or _format_from_name(text)
    if text.startswith("s3://"):
        raw = _read_s3(text, s3_endpoint_url, s3_region)
        uri = text
    else:
        file = Path(text).expanduser()
        if not file.is_absolute() and base_dir is not None:
            file = base_dir / file
        try:
            raw = file.read_bytes()
        except FileNotFoundError as exc:
            raise NotFoundError(
                f"The data file {str(file)!r} does not exist.",
                hint="Fix `data.path` (relative paths are read from the recipe's folder).",
            ) from exc
        except OSError as exc:
            raise InvalidInputError(
                f"Cannot read the data file {str(file)!r}: {exc.strerror or exc}."
            ) from exc
        uri = str(file.resolve())
    frame = _parse(raw, fmt, uri)
    return Dataset(frame, uri, "sha256:" + hashlib.sha256(raw).hexdigest(), fmt)


def _format_from_name(name: str) -> str:
    lowered = name.lower()
    if lowered.endswith((".parquet", ".pq")):
        return "parquet"
    if lowered.endswith((".csv", ".csv.gz", ".txt")):
        return "csv"
    raise ConfigError(
        f"Cannot tell the format of {name!r} from its name; expected a .csv or .parquet file.",
        hint="Set `data.format: csv` or `data.format: parquet` in the recipe.",
    )


def _parse(raw: bytes, fmt: str, uri: str) -> pd.DataFrame:
    import pandas as pd

    try:
        if fmt == "parquet":
            frame = pd.read_parquet(io.BytesIO(raw))
        else:
            compression = "gzip" if uri.endswith(".gz") else None
            frame = pd.read_csv(io.BytesIO(raw), compression=compression)
    except Exception as exc:
        raise InvalidInputError(
            f"Cannot parse {uri!r} as {fmt}: {exc}.",
            hint="Check the file is a valid CSV (with a header row) or Parquet file.",
        ) from exc
    if frame.empty:
        raise InvalidInputError(f"The data at {uri!r} has no rows; expected at least one.")
    return frame


def _read_s3(uri: str, endpoint_url: str | None, region: str) -> bytes:
    import boto3

    parts = urlsplit(uri)
    bucket, key = parts.netloc, parts.path.lstrip("/")
    if not bucket or not key:
        raise ConfigError(f"The S3 URL {uri!r} must look like s3://bucket/path/file.csv.")
    client = boto3.client("s3", endpoint_url=endpoint_url, region_name=region)
    try:
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except client.exceptions.NoSuchKey as exc:
        raise NotFoundError(f"The object {uri!r} does not exist.") from exc
    except Exception as exc:
        raise UnavailableError(
            f"Cannot read {uri!r} from S3: {exc}.",
            hint="Check the bucket, the credentials and MLHARBOR_S3_ENDPOINT_URL.",
        ) from exc
    return bytes(body)


def _read_sql(query: str, url: str) -> Dataset:
    import pandas as pd
    import sqlalchemy

    from mlharbor.settings import mask_url

    try:
        engine = sqlalchemy.create_engine(url)
    except Exception as exc:
        raise ConfigError(f"The SQLAlchemy URL {mask_url(url)!r} is not usable: {exc}.") from exc
    try:
        with engine.connect() as connection:
            frame = pd.read_sql_query(sqlalchemy.text(query), connection)
    except Exception as exc:
        raise InvalidInputError(
            f"The SQL query failed on {mask_url(url)!r}: {exc}.",
            hint="Run the query in a SQL client to check it.",
        ) from exc
    finally:
        engine.dispose()
    if frame.empty:
        raise InvalidInputError("The SQL query returned no rows; expected at least one.")
    return Dataset(frame, f"{mask_url(url)}#{query}", fingerprint_frame(frame), "sql")


def fingerprint_frame(frame: pd.DataFrame) -> str:
    """Content hash of a frame: column names, dtypes and row hashes, order included."""
    import pandas as pd

    digest = hashlib.sha256()
    digest.update(repr([(str(c), str(t)) for c, t in frame.dtypes.items()]).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return "sha256:" + digest.hexdigest()
