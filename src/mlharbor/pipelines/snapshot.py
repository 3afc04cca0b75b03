"""Training data for a retraining job, frozen as one content-addressed Parquet file.

A snapshot is assembled from up to three parts (:class:`~mlharbor.core.records.DatasetPart`):

* ``champion_data`` -- the rows the champion was trained on, re-read from the source its
  lineage names and checked against the fingerprint recorded there; a mismatch is an
  :class:`~mlharbor.core.errors.IntegrityError`, never silent use of changed data;
* ``production`` -- the endpoint's logged inputs joined with feedback labels within a window
  (:meth:`mlharbor.monitoring.feedback.Feedback.labelled_rows`);
* ``dataset_uri`` -- a new dataset (CSV/Parquet path or ``s3://``) instead of the champion's.

The rows are aligned to one set of columns and dtypes, written as Parquet into the registry's
artifact store under their SHA-256 (so the same rows are stored once) and described by a
:class:`~mlharbor.core.records.DatasetSnapshot` whose ``uri`` is ``artifact:sha256:<hex>``.
A version trained on a snapshot records that ``uri`` as its dataset, so the next retraining
reads its champion's data back from the artifact store, digest-verified.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlharbor.core.errors import IntegrityError, InvalidInputError, MlharborError
from mlharbor.core.records import DatasetPart, DatasetSnapshot

if TYPE_CHECKING:
    import pandas as pd

    from mlharbor.core.records import ModelVersion
    from mlharbor.data.loading import Dataset
    from mlharbor.registry.service import Registry
    from mlharbor.settings import Settings

#: The ``uri`` of a snapshot kept in the artifact store: this prefix and the blob's digest.
ARTIFACT_PREFIX = "artifact:sha256:"
#: Fewer rows than this in a holdout drawn from new rows alone would judge the challenger
#: on too little: the holdout is then drawn from every row, as for a first training.
MIN_UNSEEN_HOLDOUT_ROWS = 30


def champion_data(registry: Registry, version: ModelVersion, settings: Settings) -> Dataset:
    """The rows ``version`` was trained on, re-read from its lineage and fingerprint-checked.

    Reads an ``artifact:`` snapshot from the artifact store, a SQL source by re-running the
    recipe's query, anything else (file, ``s3://``) from the recorded location.
    """
    from mlharbor.data.loading import load_table

    recorded = version.lineage.get("dataset")
    if not isinstance(recorded, Mapping) or not recorded.get("fingerprint"):
        raise InvalidInputError(
            f"Version {version.ref} records no training dataset (source and fingerprint) in "
            "its lineage, so its data cannot be re-read.",
            hint="Retrain from a new dataset instead (policy data.uri).")
    uri, expected = str(recorded.get("uri") or ""), str(recorded["fingerprint"])
    what = f"the training data of {version.ref}"
    if uri.startswith(ARTIFACT_PREFIX):
        return read_snapshot(registry, uri, expected, label=what)
    try:
        if recorded.get("format") == "sql":
            from mlharbor.training.binding import load_data

            dataset = load_data(_recipe_of(version), s3_endpoint_url=settings.s3_endpoint_url,
                                s3_region=settings.s3_region)
        else:
            dataset = load_table(uri, format=recorded.get("format"),
                                 s3_endpoint_url=settings.s3_endpoint_url,
                                 s3_region=settings.s3_region)
    except MlharborError as exc:
        raise type(exc)(f"Cannot re-read {what} from {uri!r}: {exc.message}",
                        hint=exc.hint) from exc
    if dataset.fingerprint != expected:
        raise IntegrityError(
            f"The training data of {version.ref} changed since it was trained: {uri!r} now "
            f"has fingerprint {dataset.fingerprint[:19]}..., its lineage recorded "
            f"{expected[:19]}....",
            hint="Restore the original file, or retrain without it (policy data: "
                 "champion_data: false, or a new data.uri).",
            expected=expected, actual=dataset.fingerprint, uri=uri)
    return dataset


def read_snapshot(registry: Registry, uri: str, fingerprint: str | None = None, *,
                  label: str = "a training snapshot") -> Dataset:
    """The rows of an ``artifact:sha256:`` snapshot; the store verifies the digest on read."""
    import pandas as pd

    from mlharbor.data.loading import Dataset
    from mlharbor.registry.artifacts.base import check_digest

    if not uri.startswith(ARTIFACT_PREFIX):
        raise InvalidInputError(f"{uri!r} is not a snapshot URI ({ARTIFACT_PREFIX}<hex>).")
    digest = check_digest(uri.removeprefix(ARTIFACT_PREFIX))
    if fingerprint is not None and fingerprint != f"sha256:{digest}":
        raise IntegrityError(
            f"{label} is recorded as {uri} but with fingerprint {fingerprint[:19]}...; the "
            "lineage contradicts itself.", expected=fingerprint, actual=f"sha256:{digest}")
    if not registry.artifacts.exists(digest):
        raise IntegrityError(f"{label} ({uri}) is missing from the artifact store "
                             f"{registry.artifacts.uri}.",
                             hint="Restore the artifact store from a backup.")
    with tempfile.TemporaryDirectory(prefix="mlharbor-snapshot-") as tmp:
        path = Path(tmp) / "snapshot.parquet"
        registry.artifacts.get_file(digest, path, label=label)
        frame = pd.read_parquet(path)
    return Dataset(frame, uri, f"sha256:{digest}", "parquet")


def new_dataset(uri: str, settings: Settings) -> Dataset:
    """A dataset that replaces the champion's (policy ``data.uri``)."""
    from mlharbor.data.loading import load_table

    return load_table(uri, s3_endpoint_url=settings.s3_endpoint_url,
                      s3_region=settings.s3_region)


def align(parts: Sequence[tuple[DatasetPart, pd.DataFrame]], *, target: str,
          features: Sequence[str], columns: Sequence[str] = ()) -> pd.DataFrame:
    """One frame of every part's rows, with the first part's columns and dtypes.

    ``columns`` the first part lacks are added empty: production rows hold only the inputs
    and the target, while the recipe may name identifiers the champion's data had.

    Later parts (production rows) must hold every feature and the target: a missing one is an
    InvalidInputError naming it. Their values are converted to the first part's dtypes; a
    value that is not a number in a numeric column (a redacted input, say) is an error too,
    rather than a row trained on a guess. Columns the first part lacks are dropped; columns
    a later part lacks (identifiers) stay empty.
    """
    import pandas as pd

    if not parts:
        raise InvalidInputError("A snapshot needs at least one source of rows.")
    first = parts[0][1].reset_index(drop=True)
    for column in columns:
        if column not in first.columns:
            first[column] = pd.Series([None] * len(first), dtype=object)
    names = list(dict.fromkeys([*map(str, first.columns)]))
    frames = [first]
    for part, frame in parts[1:]:
        needed = [c for c in (*features, target) if c not in frame.columns]
        if needed:
            raise InvalidInputError(
                f"The {part.kind} rows from {part.uri} lack column(s) {needed} that training "
                f"needs (features {list(features)} and target {target!r}).",
                hint="Redacted (dropped) inputs cannot be trained on; relax monitoring "
                     "redaction for these columns or train without production rows.")
        aligned = pd.DataFrame(index=range(len(frame)))
        for column in names:
            if column not in frame.columns:
                aligned[column] = pd.Series([None] * len(frame), dtype=first[column].dtype
                                            if first[column].dtype == object else "float64")
                continue
            aligned[column] = _as_dtype(frame[column].reset_index(drop=True), first[column],
                                        column, part)
        frames.append(aligned)
    return pd.concat(frames, ignore_index=True)


def _as_dtype(values: pd.Series, like: pd.Series, column: str, part: DatasetPart) -> pd.Series:
    import pandas as pd

    if pd.api.types.is_bool_dtype(like) or pd.api.types.is_numeric_dtype(like):
        numbers = pd.to_numeric(values, errors="coerce")
        bad = numbers.isna() & values.notna()
        if bad.any():
            raise InvalidInputError(
                f"Column {column!r} of the {part.kind} rows holds {int(bad.sum())} value(s) "
                f"that are not numbers (first: {values[bad].iloc[0]!r:.40}); the training "
                "data holds numbers there.",
                hint="A redacted (hashed or masked) input cannot be trained on.",
                field=column)
        if pd.api.types.is_integer_dtype(like) and numbers.notna().all() and \
                (numbers % 1 == 0).all():
            return numbers.astype(like.dtype)
        return numbers.astype("float64")
    return values.map(lambda v: v if v is None or v != v else str(v)).astype(object)


def store_snapshot(registry: Registry, frame: pd.DataFrame, *, target: str,
                   parts: Sequence[DatasetPart], created_at: datetime) -> DatasetSnapshot:
    """Write ``frame`` as Parquet into the artifact store (a no-op when already there)."""
    with tempfile.TemporaryDirectory(prefix="mlharbor-snapshot-") as tmp:
        path = Path(tmp) / "snapshot.parquet"
        frame.to_parquet(path, index=False)
        info = registry.artifacts.put_file(path)
    return DatasetSnapshot(
        uri=f"{ARTIFACT_PREFIX}{info.sha256}", fingerprint=f"sha256:{info.sha256}",
        format="parquet", rows=len(frame),
        columns={str(c): str(t) for c, t in frame.dtypes.items()}, target=target,
        parts=tuple(parts), created_at=created_at)


def snapshot_from_dict(body: Mapping[str, Any]) -> DatasetSnapshot:
    """The record back from a step result (:func:`mlharbor.core.records.to_dict` form)."""
    try:
        return DatasetSnapshot(
            uri=str(body["uri"]), fingerprint=str(body["fingerprint"]),
            format=str(body["format"]), rows=int(body["rows"]),
            columns={str(k): str(v) for k, v in body["columns"].items()},
            target=str(body["target"]),
            parts=tuple(DatasetPart(str(p["kind"]), str(p["uri"]), str(p["fingerprint"]),
                                    int(p["rows"])) for p in body["parts"]),
            created_at=datetime.fromisoformat(str(body["created_at"])))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InvalidInputError(f"Not a dataset snapshot record: {exc}.") from exc


def _recipe_of(version: ModelVersion) -> Any:
    from mlharbor.training.recipe import recipe_from_dict

    stored = version.lineage.get("recipe")
    if not isinstance(stored, dict):
        raise InvalidInputError(f"Version {version.ref} has no stored recipe in its lineage.")
    return recipe_from_dict(stored, source=f"recipe of {version.ref}",
                            base_dir=Path(version.lineage.get("recipe_base_dir") or "."))


def unseen_by_champion(frame: pd.DataFrame, parts: Sequence[DatasetPart], *,
                       columns: Sequence[str], holdout: float) -> Any:
    """The snapshot rows the champion never trained on (a boolean mask), or None.

    When the snapshot starts with the champion's own data and adds production rows, a holdout
    drawn from every row would hold rows the champion was fitted on, and the champion
    comparison would favour it. The rows the champion cannot have seen are the added ones
    whose ``columns`` (features and target) match no row of its data: a production window
    that overlaps the previous job's repeats rows already in the champion's snapshot.
    None when there is nothing to limit (no champion data, or no added rows) or too few
    unseen rows for a holdout (``MIN_UNSEEN_HOLDOUT_ROWS``).
    """
    import numpy as np
    import pandas as pd

    if len(parts) < 2 or parts[0].kind != "champion_data":
        return None
    first = parts[0].rows
    if sum(p.rows for p in parts) != len(frame) or first >= len(frame):
        return None
    digests = pd.util.hash_pandas_object(frame[list(columns)], index=False).to_numpy()
    unseen = np.zeros(len(frame), dtype=bool)
    unseen[first:] = ~np.isin(digests[first:], digests[:first])
    if int(unseen.sum() * holdout) < MIN_UNSEEN_HOLDOUT_ROWS:
        return None
    return unseen

