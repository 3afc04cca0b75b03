"""Ground truth after the fact, joined with the prediction log into live performance.

Labels arrive for one or many request ids, possibly days later, possibly twice (the last one
wins). Each label is checked against the endpoint's models (:mod:`mlharbor.monitoring.labels`:
one of the classes, or a number for a regressor; 422 otherwise), and each accepted batch is
stored as one small Parquet file, first in an inbox until its request ids are found in the
prediction log (labels for ids never served never reach the store); :meth:`Feedback.performance`
joins labels with the logged predictions (pyarrow hash join on request id and row) and computes
per time window and per version: accuracy, precision, recall, F1, ROC AUC (classification) or
MAE, RMSE (regression), with the number of labelled rows.

Concept drift: when a window's metric falls below the version's validation metric by more than
the larger of ``tolerance`` and three standard errors of the live estimate, the row carries
``degraded`` with the metric names.
"""

from __future__ import annotations

import io
import logging
import math
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from mlharbor.core.clock import epoch_micros, utcnow
from mlharbor.core.errors import InvalidInputError

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from mlharbor.evaluation.slices import SliceSpec
    from mlharbor.monitoring.liveslices import LiveSlices
    from mlharbor.monitoring.predlog import PredictionLog
    from mlharbor.monitoring.segments import SegmentStore
    from mlharbor.settings import Settings

log = logging.getLogger("mlharbor.monitoring.feedback")

MAX_LABELS = 100_000
#: Where labels wait for their request id to reach the prediction log (see Feedback).
PENDING = "pending/"
#: How long a label may wait for its prediction: compaction takes seconds, a store outage
#: hours; a request id still unknown after this was never served.
PENDING_TTL = timedelta(days=2)
#: Row indexes and integer labels are stored as int64.
_INT64 = 2**63
CLASSIFICATION = ("accuracy", "precision", "recall", "f1", "roc_auc")
REGRESSION = ("mae", "rmse")
LOWER_IS_BETTER = frozenset(REGRESSION)


def parse_labels(body: Any) -> list[dict[str, Any]]:
    """``{"request_id", "label"[, "row"]}`` or ``{"labels": [...]}``, checked item by item."""
    items = body.get("labels") if isinstance(body, Mapping) and "labels" in body else [body]
    if not isinstance(items, list) or not items:
        raise InvalidInputError(
            "feedback: expected {'request_id': ..., 'label': ...} or {'labels': [...]} with "
            f"at least one item; received {type(items).__name__}.")
    if len(items) > MAX_LABELS:
        raise InvalidInputError(f"feedback: at most {MAX_LABELS} labels per request; "
                                f"received {len(items)}.", hint="Send them in batches.")
    out = []
    for i, item in enumerate(items):
        where = f"labels[{i}]" if len(items) > 1 or "labels" in body else "body"
        if not isinstance(item, Mapping):
            raise InvalidInputError(f"feedback {where}: expected an object, received "
                                    f"{type(item).__name__}.")
        rid, label, row = item.get("request_id"), item.get("label"), item.get("row", 0)
        if not isinstance(rid, str) or not 0 < len(rid) <= 128:
            raise InvalidInputError(f"feedback {where}.request_id: expected a string of 1 to "
                                    f"128 characters; received {rid!r:.60}.")
        if not isinstance(label, bool | int | float | str) or (
                isinstance(label, int) and not -_INT64 <= label < _INT64) or (
                isinstance(label, str) and len(label) > 256):
            raise InvalidInputError(
                f"feedback {where}.label: expected a number (64-bit), a string of at most 256 "
                f"characters or a boolean; received {type(label).__name__} {label!r:.40}.",
                field=f"{where}.label")
        if not isinstance(row, int) or isinstance(row, bool) or not 0 <= row < _INT64:
            raise InvalidInputError(f"feedback {where}.row: expected a row index >= 0; "
                                    f"received {row!r:.40}.", field=f"{where}.row")
        out.append({"request_id": rid, "row": row, "label": label})
    return out


def open_feedback(settings: Settings, log: PredictionLog, registry: Any = None) -> Feedback:
    """The label store of ``settings``, joined with ``log``; labels are checked against the
    output signatures ``registry`` holds (only for one kind per batch without one)."""
    from mlharbor.monitoring.segments import open_segments
    from mlharbor.monitoring.service import feedback_uri

    return Feedback(open_segments(feedback_uri(settings), settings), log, registry)


class Feedback:
    """Stores labels per endpoint and measures live performance against the log.

    Layout of the store: ``endpoint=<name>/<received>-<id>.parquet`` holds labels whose request
    id is in the prediction log; ``pending/endpoint=<name>/...`` (the inbox) holds labels as
    they arrive, kept apart until their request id is found in the log. Each read moves the
    found ones into the store; labels still unmatched after :data:`PENDING_TTL` are dropped
    (logged), so ids that were never served never reach the store. Posting a label answers
    before the prediction is compacted into the log, which is why the inbox exists at all.
    """

    def __init__(self, store: SegmentStore, log: PredictionLog, registry: Any = None) -> None:
        self.store = store
        self.log = log
        self.registry = registry

    def add(self, endpoint: str, body: Any, *, now: datetime | None = None) -> int:
        """Check ``body`` (shape, then each label against the endpoint's models) and keep it
        in the inbox; SchemaError (422) names the first label that cannot be one."""
        from mlharbor.monitoring.labels import check_labels, expected_labels

        labels = parse_labels(body)
        values = check_labels(labels, expected_labels(self.registry, endpoint, self.log))
        received = epoch_micros(now or utcnow())
        table = _label_table([item["request_id"] for item in labels],
                             [item["row"] for item in labels], values, received)
        self.store.put(f"{PENDING}endpoint={endpoint}/{received}-{uuid.uuid4().hex}.parquet",
                       _parquet(table))
        return len(labels)

    def labels(self, endpoint: str, *, now: datetime | None = None) -> pa.Table:
        """The latest label of each (request id, row) whose request id is logged.

        Files that cannot be read, or whose columns are not a label table, are skipped and
        logged (one bad file written by an older version never fails the whole read); label
        columns of different types are read as their canonical text."""
        import pyarrow as pa

        self._promote(endpoint, now or utcnow())
        tables = [t for t in (self._read(name) for name in
                              self.store.names(f"endpoint={endpoint}/")) if t is not None]
        if not tables:
            return pa.table({"request_id": pa.array([], pa.string()),
                             "row": pa.array([], pa.int64()), "label": pa.array([], pa.string())})
        table = pa.concat_tables(_one_label_type(tables))
        table = table.sort_by([("received_at", "descending")])
        frame = table.to_pandas().drop_duplicates(["request_id", "row"], keep="first")
        return pa.Table.from_pandas(frame[["request_id", "row", "label"]], preserve_index=False)

    def pending(self, endpoint: str) -> int:
        """How many labels wait in the inbox for their request id to reach the log."""
        return sum(t.num_rows for t in (self._read(n) for n in
                                        self.store.names(f"{PENDING}endpoint={endpoint}/"))
                   if t is not None)

    def _promote(self, endpoint: str, now: datetime) -> None:
        """Move inbox labels whose request id is logged into the store; drop expired ones."""
        import pyarrow.compute as pc

        names = self.store.names(f"{PENDING}endpoint={endpoint}/")
        if not names:
            return
        inbox = {name: self._read(name) for name in names}
        wanted = {rid for t in inbox.values() if t is not None
                  for rid in t["request_id"].to_pylist()}
        logged = self.log.scan(endpoint, columns=["request_id"])
        known: set[str] = set()
        if "request_id" in logged.column_names and wanted:
            ids = logged["request_id"].cast("string")
            known = set(ids.filter(pc.is_in(ids, value_set=pa_strings(wanted))).to_pylist())
        expiry = epoch_micros(now - PENDING_TTL)
        for name, table in inbox.items():
            if table is None:  # unreadable: already logged by _read; never blocks the rest
                self.store.delete(name)
                continue
            found = pc.is_in(table["request_id"], value_set=pa_strings(known))
            matched, unmatched = table.filter(found), table.filter(pc.invert(found))
            if matched.num_rows:
                self.store.put(f"endpoint={endpoint}/{name.rsplit('/', 1)[1]}",
                               _parquet(matched))
            if unmatched.num_rows == table.num_rows:
                if _received(table) < expiry:
                    log.warning("feedback: dropped %d labels for %s whose request ids were "
                                "never logged (%s)", table.num_rows, endpoint, name)
                    self.store.delete(name)
                continue
            if unmatched.num_rows:
                self.store.put(name, _parquet(unmatched))
            else:
                self.store.delete(name)

    def _read(self, name: str) -> pa.Table | None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(pa.BufferReader(self.store.get(name)))
            table = table.select(["request_id", "row", "label", "received_at"]).cast(pa.schema([
                ("request_id", pa.string()), ("row", pa.int64()),
                ("label", table.schema.field("label").type), ("received_at", pa.int64())]))
        except (OSError, KeyError, ValueError, pa.ArrowException) as exc:
            log.warning("feedback: skipped the unreadable label file %s (%s: %s)", name,
                        type(exc).__name__, exc)
            return None
        if not _is_label_type(table.schema.field("label").type):
            log.warning("feedback: skipped %s: its labels are %s, not numbers, booleans or "
                        "text", name, table.schema.field("label").type)
            return None
        return table

    def performance(self, endpoint: str, *, start: datetime, end: datetime,
                    window: timedelta, task: str | None = None,
                    validation: Mapping[int, Mapping[str, float]] | None = None,
                    tolerance: float = 0.05, slices: LiveSlices | None = None,
                    recipe_slices: Callable[[int], Sequence[SliceSpec]] | None = None,
                    ) -> list[dict[str, Any]]:
        """One row per (window, version) with labelled rows and live metrics.

        With ``slices`` (:mod:`mlharbor.monitoring.liveslices`), each row also has
        ``slices``: the same metrics on each slice of its rows, with the slice's labelled row
        count; ``recipe_slices`` gives a version's recipe slices when ``slices.recipe``."""
        from mlharbor.monitoring.logrows import answers

        columns = ["request_id", "row", "version", "prediction", "score", "error"]
        logged = answers(self.log.scan(endpoint, start, end,
                                       columns=None if slices else columns))
        if slices is not None:
            from mlharbor.monitoring.liveslices import add_slices, logged_inputs

            logged = logged_inputs(logged, [*columns, "at"], slices, endpoint)
        labels = self.labels(endpoint)
        if logged.num_rows == 0 or labels.num_rows == 0 or "request_id" not in logged.column_names:
            return []
        joined = _join_labels(logged, labels).to_pandas()
        if joined.empty:
            return []
        task = task or _infer_task(joined)
        joined, unusable = _usable(joined, task)
        from mlharbor.monitoring.windows import MICROSECOND, moment_of

        step = window // MICROSECOND  # exact: total_seconds() * 1e6 is a float
        origin = epoch_micros(start)
        joined["window"] = (joined["at"] - origin) // step
        joined["version"] = joined["version"].astype("Int64")
        out = []
        for (index, version), part in joined.groupby(["window", "version"], dropna=False):
            lo = moment_of(origin + int(index) * step).astimezone(start.tzinfo)
            metrics = _metrics(part, task)
            row: dict[str, Any] = {
                "start": lo.isoformat(), "end": (lo + window).isoformat(),
                "version": None if version is None or version != version else int(version),
                "labelled_rows": len(part), "task": task, "metrics": metrics,
            }
            skipped = unusable.get((int(index), row["version"]), 0)
            if skipped:  # labels a regressor cannot be scored on (text written by old code)
                row["unusable_labels"] = skipped
            if slices is not None:
                add_slices(row, part, slices, recipe_slices, lambda rows: _metrics(rows, task))
            out.append(row)
        out.sort(key=lambda r: (r["start"], r["version"] or 0))
        return compare_with_validation(out, validation or {}, tolerance)


    def labelled_rows(self, endpoint: str, *, start: datetime, end: datetime,
                      target: str = "label") -> pd.DataFrame:
        """The inputs of the rows ``endpoint`` served in ``[start, end)`` that have a label,
        with the label as column ``target``: training rows for a retraining job.

        The same join as :meth:`performance` (latest label of each request id and row), on
        the primary answers only: a shadow's copy of a request is the same input twice. Input
        columns lose their ``in.`` prefix; a row logged twice (a retried flush) counts once.
        InvalidInputError when ``target`` is also the name of an input column.
        """
        import pandas as pd
        import pyarrow.compute as pc

        from mlharbor.monitoring.logrows import INPUT_PREFIX, answers

        logged = answers(self.log.scan(endpoint, start, end))
        labels = self.labels(endpoint)
        inputs = [c for c in logged.column_names if c.startswith(INPUT_PREFIX)]
        names = [c.removeprefix(INPUT_PREFIX) for c in inputs]
        if target in names:
            raise InvalidInputError(
                f"The target column {target!r} is also an input column of endpoint "
                f"{endpoint!r}; the labelled rows cannot hold both.", field="target")
        if logged.num_rows == 0 or labels.num_rows == 0 or not inputs:
            return pd.DataFrame(columns=[*names, target])
        if "shadow" in logged.column_names:
            logged = logged.filter(pc.invert(pc.fill_null(logged["shadow"], False)))
        logged = logged.select(["request_id", "row", *inputs])
        joined = _join_labels(logged, labels).to_pandas()
        joined = joined.drop_duplicates(["request_id", "row"], keep="first")
        frame = joined[[*inputs, "label"]].rename(
            columns={**dict(zip(inputs, names, strict=True)), "label": target})
        return frame.reset_index(drop=True)

    def scored_rows(self, endpoint: str, *, start: datetime | None, end: datetime | None,
                    labelled: bool) -> pd.DataFrame:
        """The primary answers ``endpoint`` logged in ``[start, end)`` (None: unbounded) as
        columns ``at``, ``version``, ``prediction``, ``score``; with ``labelled``, only the rows
        that have a label, with the latest one as ``label`` (the join :meth:`performance`
        uses). What confidence-based estimation reads: the served probabilities, and for its
        reference their outcome."""
        import pandas as pd
        import pyarrow as pa
        import pyarrow.compute as pc

        from mlharbor.monitoring.logrows import answers

        columns = ["request_id", "row", "version", "prediction", "score", "shadow",
                   "error"]  # + at
        logged = answers(self.log.scan(endpoint, start, end, columns=columns))
        names = ["at", "version", "prediction", "score", *(["label"] if labelled else [])]
        if logged.num_rows == 0 or not {"request_id", "prediction"} <= set(
                logged.column_names):
            return pd.DataFrame(columns=names)
        if "shadow" in logged.column_names:
            logged = logged.filter(pc.invert(pc.fill_null(logged["shadow"], False)))
        for name in ("version", "score"):
            if name not in logged.column_names:
                logged = logged.append_column(name, pa.nulls(logged.num_rows, pa.float64()))
        if labelled:
            labels = self.labels(endpoint)
            if labels.num_rows == 0:
                return pd.DataFrame(columns=names)
            logged = _join_labels(logged, labels)
        frame = logged.to_pandas().drop_duplicates(["request_id", "row"], keep="first")
        return frame[names].reset_index(drop=True)


def compare_with_validation(
        rows: list[dict[str, Any]], validation: Mapping[int, Mapping[str, float]],
        tolerance: float = 0.05,
        slice_validation: Mapping[int, Mapping[str, Mapping[str, float]]] | None = None,
) -> list[dict[str, Any]]:
    """Mark each window whose live metrics fell below its version's validation metrics, and
    each slice of it below the same slice's holdout metrics (``slice_validation``: version ->
    slice key as :func:`mlharbor.evaluation.gates.slice_key` folds it -> metrics)."""
    from mlharbor.evaluation.gates import slice_key

    for row in rows:
        reference = validation.get(row["version"]) if row["version"] else None
        if reference:
            metrics = row["metrics"]
            row["validation"] = {k: reference[k] for k in metrics if k in reference}
            row["degraded"] = _degraded(metrics, reference, row["labelled_rows"], tolerance)
        by_key = (slice_validation or {}).get(row["version"]) if row["version"] else None
        for item in row.get("slices", []) if by_key else []:
            held = by_key.get(slice_key(item["key"])) if by_key else None
            if held and item["labelled_rows"]:
                item["validation"] = {k: held[k] for k in item["metrics"] if k in held}
                item["degraded"] = _degraded(item["metrics"], held, item["labelled_rows"],
                                             tolerance)
    return rows


def _join_labels(logged: pa.Table, labels: pa.Table) -> pa.Table:
    """Logged rows inner-joined with their labels on (request id, row); columns never set
    (all null, e.g. no scores) are typed as float64 first so the join can carry them."""
    import pyarrow as pa

    for i, field in enumerate(logged.schema):
        if pa.types.is_null(field.type):
            logged = logged.set_column(i, field.name, logged[i].cast(pa.float64()))
    return logged.join(labels.cast(pa.schema([
        ("request_id", logged.schema.field("request_id").type),
        ("row", logged.schema.field("row").type), ("label", labels.schema.field("label").type),
    ])), keys=["request_id", "row"], join_type="inner")

def _infer_task(frame: Any) -> str:
    import pandas as pd

    if "score" in frame and frame["score"].notna().any():
        return "classification"
    prediction = pd.to_numeric(frame["prediction"], errors="coerce")
    if prediction.isna().any():
        return "classification"
    return "classification" if (prediction % 1 == 0).all() and prediction.nunique() <= 20 \
        else "regression"


def _metrics(part: Any, task: str) -> dict[str, float | None]:
    import numpy as np
    from sklearn import metrics as skm

    from mlharbor.monitoring.labels import label_text

    if task == "regression":
        y = np.asarray(part["label"], dtype=float)
        p = np.asarray(part["prediction"], dtype=float)
        return {"mae": float(np.mean(np.abs(y - p))),
                "rmse": float(math.sqrt(np.mean((y - p) ** 2)))}
    y = np.asarray([label_text(v) for v in part["label"]], dtype=object)
    p = np.asarray([label_text(v) for v in part["prediction"]], dtype=object)
    classes = sorted(set(y) | set(p))
    binary = len(classes) <= 2
    positive = _positive(classes)
    average = "binary" if binary and len(classes) == 2 else "macro"
    kwargs: dict[str, Any] = {"average": average, "zero_division": 0}
    if average == "binary":
        kwargs["pos_label"] = positive
    out: dict[str, float | None] = {
        "accuracy": float(skm.accuracy_score(y, p)),
        "precision": float(skm.precision_score(y, p, **kwargs)),
        "recall": float(skm.recall_score(y, p, **kwargs)),
        "f1": float(skm.f1_score(y, p, **kwargs)),
        "roc_auc": None,
    }
    if binary and "score" in part and part["score"].notna().all() and len(set(y)) == 2:
        out["roc_auc"] = float(skm.roc_auc_score(y == positive, part["score"].astype(float)))
    if average == "binary":  # no value where undefined (scikit-learn would answer 0.0)
        if not np.any(y == positive):
            out["recall"] = None  # no positive label: a slice of negatives, all right or not
        if not np.any(p == positive):
            out["precision"] = None
    return out


def _positive(classes: Sequence[str]) -> str:
    for name in ("1", "1.0", "True", "true", "yes"):
        if name in classes:
            return name
    return classes[-1]


def _degraded(metrics: Mapping[str, float | None], reference: Mapping[str, float], n: int,
              tolerance: float) -> list[str]:
    out = []
    for name, live in metrics.items():
        if live is None or name not in reference:
            continue
        expected = float(reference[name])
        if name in LOWER_IS_BETTER:
            if live > expected * (1 + tolerance) + 1e-12:
                out.append(name)
            continue
        spread = 3 * math.sqrt(max(expected * (1 - expected), 1e-6) / max(n, 1))
        if live < expected - max(tolerance, spread):
            out.append(name)
    return out


def _usable(joined: Any, task: str) -> tuple[Any, dict[tuple[int, int | None], int]]:
    """For regression, the rows whose label is a number, and per (window, version) how many
    were not (label files of older versions may hold text)."""
    import pandas as pd

    if task != "regression":
        return joined, {}
    numbers = pd.to_numeric(joined["label"], errors="coerce")
    bad = numbers.isna()
    counts: dict[tuple[int, int | None], int] = {}
    if bad.any():
        for (index, version), n in joined[bad].groupby(["window", "version"],
                                                       dropna=False).size().items():
            key = (int(index), None if version is None or version != version else int(version))
            counts[key] = int(n)
        log.warning("feedback: %d labels are not numbers and were left out of regression "
                    "metrics", int(bad.sum()))
    joined = joined[~bad].copy()
    joined["label"] = numbers[~bad]
    return joined, counts


def _label_table(request_ids: list[str], rows: list[int], values: list[Any],
                 received: int) -> pa.Table:
    import pyarrow as pa

    return pa.table({
        "request_id": pa.array(request_ids, pa.string()),
        "row": pa.array(rows, pa.int64()),
        "label": pa.array(values),
        "received_at": pa.array([received] * len(values), pa.int64()),
    })


def _parquet(table: pa.Table) -> bytes:
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def _received(table: pa.Table) -> int:
    import pyarrow.compute as pc

    newest = pc.max(table["received_at"]).as_py()
    return int(newest) if newest is not None else 0


def pa_strings(values: set[Any]) -> pa.Array:
    import pyarrow as pa

    return pa.array(sorted(str(v) for v in values if v is not None), pa.string())


def _is_label_type(kind: pa.DataType) -> bool:
    import pyarrow as pa

    return bool(pa.types.is_integer(kind) or pa.types.is_floating(kind)
                or pa.types.is_boolean(kind) or pa.types.is_string(kind)
                or pa.types.is_large_string(kind) or pa.types.is_null(kind))


def _one_label_type(tables: list[pa.Table]) -> list[pa.Table]:
    """Tables whose label columns share one type: as stored when they already do (or are all
    numbers, read as float64), else each label as its canonical text."""
    import pyarrow as pa

    from mlharbor.monitoring.labels import label_text

    kinds = {t.schema.field("label").type for t in tables}
    kinds.discard(pa.null())
    if len(kinds) <= 1:
        target = next(iter(kinds), pa.string())
    elif all(pa.types.is_integer(k) or pa.types.is_floating(k) for k in kinds):
        target = pa.float64()
    else:
        target = pa.string()
    out = []
    for table in tables:
        column = table["label"]
        if column.type != target:
            if target == pa.string() and not pa.types.is_null(column.type):
                column = pa.array([None if v is None else label_text(v)
                                   for v in column.to_pylist()], pa.string())
            else:
                column = column.cast(target)
            table = table.set_column(table.schema.get_field_index("label"), "label", column)
        out.append(table)
    return out

