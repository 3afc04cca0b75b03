"""The inputs of a batch-scoring job: which files, in which parts, read how, with what fingerprint.

An input is a CSV or Parquet file, a folder of them, or a glob, on the local disk or under
``s3://``. Files are listed in name order, so a dataset always splits into the same parts:

- a Parquet file splits along its row groups, consecutive groups joined until a part holds
  about ``part_rows`` rows (a row group is never split);
- a CSV file is one part (CSV has no index to start reading in the middle of).

Parts are the unit of work and of resuming: each is read, scored and written on its own, in
record batches of bounded size, so no part is ever held in memory whole. CSV columns are read
as text and converted here, so one bad cell becomes one bad row (with the same message serving
gives for that value) instead of failing the whole block.

The fingerprint is what the ledger records as "the dataset": for one local file it is the
sha256 of its bytes, exactly ``data.loading``'s fingerprint of the same file; for several files
(or S3 objects, whose ETag stands for their content) it is the sha256 of the list of their names
(relative to the input), sizes and digests.
"""

from __future__ import annotations

import fnmatch
import glob
import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from mlharbor.core.errors import InvalidInputError, NotFoundError, UnavailableError
from mlharbor.pipelines.batchmemory import CSV_MAX_BLOCK, CSV_MIN_BLOCK, READ_BUFFER

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.fs as pafs

SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
_GLOB_CHARS = "*?["


@dataclass(frozen=True, slots=True)
class Storage:
    """Where files are read from: the local disk, or S3 at an endpoint (picklable, so a Dask
    worker rebuilds the same filesystem)."""

    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"

    def filesystem(self, uri: str) -> pafs.FileSystem:
        import pyarrow.fs as pafs

        if not uri.startswith("s3://"):
            return pafs.LocalFileSystem()
        endpoint = self.s3_endpoint_url
        options: dict[str, Any] = {"region": self.s3_region}
        if endpoint:
            parts = urlsplit(endpoint)
            options.update(endpoint_override=parts.netloc or endpoint,
                           scheme=parts.scheme or "https")
        return pafs.S3FileSystem(**options)


@dataclass(frozen=True, slots=True)
class InputFile:
    """One file of the input: its URI, format, size and a digest of its content."""

    uri: str
    name: str  # relative to the input (what the fingerprint and the errors file name)
    format: str
    size: int
    digest: str

    @property
    def path(self) -> str:
        """The path the filesystem takes (S3: ``bucket/key``)."""
        return self.uri[len("s3://"):] if self.uri.startswith("s3://") else self.uri


@dataclass(frozen=True, slots=True)
class InputPart:
    """A piece of one file scored as one unit: row groups of a Parquet file, or a whole CSV."""

    index: int
    file: InputFile
    row_groups: tuple[int, ...] | None
    first_row: int  # row number (in its file) of the part's first row
    rows: int | None  # known for Parquet, counted while reading for CSV
    row_bytes: float  # decoded bytes per row (estimated for CSV), for sizing batches

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "file": self.file.name, "row_groups":
                None if self.row_groups is None else list(self.row_groups),
                "first_row": self.first_row, "rows": self.rows}


@dataclass(frozen=True, slots=True)
class Inputs:
    uri: str
    files: tuple[InputFile, ...]
    storage: Storage
    fingerprint: str


def resolve_inputs(text: str, storage: Storage) -> Inputs:
    """The files ``text`` names (file, folder or glob; local or ``s3://``), with the dataset
    fingerprint; a name that matches nothing raises :class:`NotFoundError`."""
    text = text.strip()
    if not text:
        raise InvalidInputError("--input is empty; give a CSV or Parquet file, a folder or a "
                                "glob (local or s3://bucket/prefix).", field="input")
    files = _s3_files(text, storage) if text.startswith("s3://") else _local_files(text)
    if not files:
        raise NotFoundError(
            f"the input {text!r} matched no CSV or Parquet files",
            hint="Name files ending in .csv, .parquet or .pq, a folder holding some, or a "
            "glob such as 'data/*.parquet'.", field="input")
    return Inputs(text, tuple(files), storage, _fingerprint(files))


def _local_files(text: str) -> list[InputFile]:
    if any(c in text for c in _GLOB_CHARS):
        head = text[:min(text.find(c) for c in _GLOB_CHARS if c in text)]
        base = Path(head) if head.endswith("/") else Path(head).parent
        paths = sorted(Path(p) for p in glob.glob(text, recursive=True))  # noqa: PTH207 - absolute patterns
        paths = [p for p in paths if p.is_file() and _format_of(p.name)]
    else:
        root = Path(text).expanduser()
        if root.is_dir():
            base = root
            paths = sorted(p for p in root.rglob("*") if p.is_file() and _format_of(p.name)
                           and not any(part.startswith(("_", ".")) for part in
                                       p.relative_to(root).parts))
        elif root.is_file():
            base = root.parent
            if _format_of(root.name) is None:
                raise InvalidInputError(
                    f"cannot tell the format of {text!r} from its name; expected a .csv, "
                    ".parquet or .pq file", field="input")
            paths = [root]
        else:
            raise NotFoundError(f"the input {text!r} does not exist",
                                hint="Check the path (a file, a folder or a glob).",
                                field="input")
    return [InputFile(str(p.resolve()), str(p.relative_to(base)) if p.is_relative_to(base)
                      else p.name, str(_format_of(p.name)), p.stat().st_size, _sha256(p))
            for p in paths]


def _s3_files(text: str, storage: Storage) -> list[InputFile]:
    import boto3

    parts = urlsplit(text)
    bucket, key = parts.netloc, parts.path.lstrip("/")
    if not bucket:
        raise InvalidInputError(f"the S3 URL {text!r} must look like s3://bucket/path",
                                field="input")
    client = boto3.client("s3", endpoint_url=storage.s3_endpoint_url,
                          region_name=storage.s3_region)
    pattern = key if any(c in key for c in _GLOB_CHARS) else None
    prefix = key if pattern is None else key[:min(key.find(c) for c in _GLOB_CHARS
                                                  if c in key)]
    prefix = prefix.rsplit("/", 1)[0] + "/" if pattern is not None and "/" in prefix else (
        "" if pattern is not None else prefix)
    found: list[tuple[str, int, str]] = []
    try:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for page in pages:
            for item in page.get("Contents", []):
                found.append((item["Key"], int(item["Size"]), str(item["ETag"]).strip('"')))
    except client.exceptions.NoSuchBucket as exc:
        raise NotFoundError(f"the S3 bucket {bucket!r} does not exist", field="input") from exc
    except Exception as exc:
        raise UnavailableError(
            f"cannot list {text!r} on S3: {exc}",
            hint="Check the bucket, the credentials and MLHARBOR_S3_ENDPOINT_URL.") from exc
    if pattern is not None:
        chosen = [f for f in found if fnmatch.fnmatchcase(f[0], pattern)]
        base = prefix
    else:
        exact = [f for f in found if f[0] == key]
        base = key.rsplit("/", 1)[0] + "/" if exact else key.rstrip("/") + "/"
        chosen = exact or [f for f in found if f[0].startswith(base)]
    chosen = [f for f in sorted(chosen) if _format_of(f[0])
              and not any(p.startswith(("_", ".")) for p in f[0][len(base):].split("/"))]
    return [InputFile(f"s3://{bucket}/{k}", k[len(base):] or k, str(_format_of(k)), size,
                      f"etag:{etag}") for k, size, etag in chosen]


def _format_of(name: str) -> str | None:
    return SUFFIXES.get(Path(name.lower()).suffix)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def _fingerprint(files: Sequence[InputFile]) -> str:
    if len(files) == 1 and files[0].digest.startswith("sha256:"):
        return files[0].digest
    listing = [[f.name, f.size, f.digest] for f in files]
    return "sha256:" + hashlib.sha256(json.dumps(listing).encode()).hexdigest()


# -- parts -------------------------------------------------------------------------------------

def plan_parts(inputs: Inputs, columns: Sequence[str], part_rows: int) -> list[InputPart]:
    """Every file split into parts of about ``part_rows`` rows (Parquet: whole row groups)."""
    parts: list[InputPart] = []
    for file in inputs.files:
        if file.format == "csv":
            parts.append(InputPart(len(parts), file, None, 0, None,
                                   row_bytes=24.0 * max(1, len(columns))))
            continue
        meta = _parquet(inputs.storage, file).metadata
        wanted = set(columns)
        group_rows: list[int] = []
        group_bytes: list[int] = []
        for g in range(meta.num_row_groups):
            rg = meta.row_group(g)
            group_rows.append(rg.num_rows)
            group_bytes.append(sum(rg.column(c).total_uncompressed_size
                                   for c in range(rg.num_columns)
                                   if rg.column(c).path_in_schema in wanted))
        first, start = 0, 0
        for g in range(len(group_rows) + 1):
            held = sum(group_rows[start:g])
            if g == len(group_rows) or (held and held + group_rows[g] > part_rows):
                if g > start:
                    size = sum(group_bytes[start:g])
                    parts.append(InputPart(len(parts), file, tuple(range(start, g)), first,
                                           held, row_bytes=max(8.0, size / max(held, 1))))
                first += held
                start = g
    return parts


def _parquet(storage: Storage, file: InputFile) -> Any:
    import pyarrow.parquet as pq

    fs = storage.filesystem(file.uri)
    try:
        # A buffered stream per column and no pre-buffering: the reader holds about one page
        # per column, never a whole row group (whose size is the file writer's choice).
        return pq.ParquetFile(fs.open_input_file(file.path), buffer_size=READ_BUFFER,
                              pre_buffer=False)
    except FileNotFoundError as exc:
        raise NotFoundError(f"the input file {file.uri!r} is gone", field="input") from exc
    except OSError as exc:
        raise UnavailableError(f"cannot read {file.uri!r}: {exc}") from exc
    except Exception as exc:  # pyarrow.ArrowInvalid: not a Parquet file
        raise InvalidInputError(f"cannot read {file.uri!r} as Parquet: {exc}",
                                field="input") from exc


def check_columns(inputs: Inputs, columns: Sequence[str]) -> None:
    """Every file holds every column the model needs (and the id column): a missing column is
    the whole file's problem, said before any scoring starts."""
    import pyarrow.csv as pacsv

    for file in inputs.files:
        if file.format == "parquet":
            have = list(_parquet(inputs.storage, file).schema_arrow.names)
        else:
            fs = inputs.storage.filesystem(file.uri)
            with fs.open_input_stream(file.path) as stream:
                try:
                    reader = pacsv.open_csv(stream, read_options=pacsv.ReadOptions(
                        block_size=1 << 16), convert_options=pacsv.ConvertOptions(
                        column_types={}, strings_can_be_null=True))
                    have = list(reader.schema.names)
                except Exception as exc:  # pyarrow.ArrowInvalid: empty or not CSV
                    raise InvalidInputError(f"cannot read {file.uri!r} as CSV: {exc}",
                                            field="input") from exc
        missing = [c for c in columns if c not in have]
        if missing:
            raise InvalidInputError(
                f"the input file {file.uri!r} has no column(s) {', '.join(map(repr, missing))}; "
                f"it has {', '.join(map(repr, have[:30]))}",
                hint="Score files holding every input column of the model signature (and the "
                "--id-column, if given).", field="input", missing=missing)


def read_batches(storage: Storage, part: InputPart, columns: Sequence[str],
                 text_columns: Sequence[str], batch_rows: int, *,
                 csv_block: int | None = None) -> Iterator[pa.RecordBatch]:
    """The part's rows, ``columns`` only, in record batches of at most ``batch_rows`` rows.
    CSV: ``text_columns`` are read as text (converted later, cell by cell where needed), in
    blocks of ``csv_block`` bytes (default: about a batch, at most 4 MiB; Arrow reads up to
    32 blocks ahead)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    if part.file.format == "parquet":
        parquet = _parquet(storage, part.file)
        yield from parquet.iter_batches(batch_size=batch_rows, row_groups=part.row_groups,
                                        columns=list(columns), use_threads=False)
        return
    fs = storage.filesystem(part.file.uri)
    block = csv_block or int(min(CSV_MAX_BLOCK, max(CSV_MIN_BLOCK,
                                                     batch_rows * part.row_bytes)))
    with fs.open_input_stream(part.file.path) as stream:
        reader = pacsv.open_csv(
            stream, read_options=pacsv.ReadOptions(block_size=block, use_threads=False),
            convert_options=pacsv.ConvertOptions(
                include_columns=list(columns), strings_can_be_null=True,
                column_types={c: pa.string() for c in text_columns}))
        for batch in reader:
            for start in range(0, batch.num_rows, batch_rows):
                yield batch.slice(start, batch_rows)
