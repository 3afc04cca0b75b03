"""Ground truth after the fact, joined with the prediction log into live performance.

Labels arrive for one or many request ids, possibly days later, possibly twice (the last one
wins). Each accepted batch is stored as one small Parquet file; :meth:`Feedback.performance`
joins labels with the logged predictions (pyarrow hash join on request id and row) and computes
per time window and per version: accuracy, precision, recall, F1, ROC AUC (classification) or
MAE, RMSE (regression), with the number of labelled rows.

Concept drift: when a window's metric falls below the version's validation metric by more than
the larger of ``tolerance`` and three standard errors of the live estimate, the row carries
``degraded`` with the metric names.
"""

from __future__ import annotations

import io
import math
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from mlharbor.core.clock import epoch_micros, utcnow
from mlharbor.core.errors import InvalidInputError

if TYPE_CHECKING:
    import pyarrow as pa

    from mlharbor.monitoring.predlog import PredictionLog
    from mlharbor.monitoring.segments import SegmentStore
    from mlharbor.settings import Settings

MAX_LABELS = 100_000
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
        if not isinstance(label, bool | int | float | str):
            raise InvalidInputError(
                    f"feedback {where}.label: expected a number, string or boolean; received "
                    f"{type(label).__name__}.")
        if not isinstance(row, int) or isinstance(row, bool) or row < 0:
            raise InvalidInputError(f"feedback {where}.row: expected a row index >= 0; "
                                    f"received {row!r:.40}.")
        out.append({"request_id": rid, "row": row, "label": label})
    return out


def open_feedback(settings: Settings, log: PredictionLog) -> Feedback:
    """The label store of ``settings``, joined with ``log``."""
    from mlharbor.monitoring.segments import open_segments
    from mlharbor.monitoring.service import feedback_uri

    return Feedback(open_segments(feedback_uri(settings), settings), log)


class Feedback:
    """Stores labels per endpoint and measures live performance against the log."""

    def __init__(self, store: SegmentStore, log: PredictionLog) -> None:
        self.store = store
        self.log = log

    def add(self, endpoint: str, body: Any, *, now: datetime | None = None) -> int:
        import pyarrow as pa
        import pyarrow.parquet as pq

        labels = parse_labels(body)
        received = epoch_micros(now or utcnow())
        kinds = {type(item["label"]) for item in labels}
        values = [item["label"] for item in labels]
        if len(kinds) > 1:
            values = [str(v) for v in values]  # one column type per file
        table = pa.table({
            "request_id": [item["request_id"] for item in labels],
            "row": pa.array([item["row"] for item in labels], pa.int64()),
            "label": values,
            "received_at": pa.array([received] * len(labels), pa.int64()),
        })
        sink = io.BytesIO()
        pq.write_table(table, sink)
        self.store.put(f"endpoint={endpoint}/{received}-{uuid.uuid4().hex}.parquet",
                       sink.getvalue())
        return len(labels)

    def labels(self, endpoint: str) -> pa.Table:
        """The latest label of each (request id, row)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        tables = [pq.read_table(pa.BufferReader(self.store.get(name)))
                  for name in self.store.names(f"endpoint={endpoint}/")]
        if not tables:
            return pa.table({"request_id": pa.array([], pa.string()),
                             "row": pa.array([], pa.int64()), "label": pa.array([], pa.string())})
        table = pa.concat_tables(tables, promote_options="permissive")
        table = table.sort_by([("received_at", "descending")])
        frame = table.to_pandas().drop_duplicates(["request_id", "row"], keep="first")
        return pa.Table.from_pandas(frame[["request_id", "row", "label"]], preserve_index=False)

    def performance(self, endpoint: str, *, start: datetime, end: datetime,
                    window: timedelta, task: str | None = None,
                    validation: Mapping[int, Mapping[str, float]] | None = None,
                    tolerance: float = 0.05) -> list[dict[str, Any]]:
        """One row per (window, version) with labelled rows and live metrics."""
        import pyarrow as pa

        logged = self.log.scan(endpoint, start, end,
                               columns=["request_id", "row", "version", "prediction", "score"])
        labels = self.labels(endpoint)
        if logged.num_rows == 0 or labels.num_rows == 0 or "request_id" not in logged.column_names:
            return []
        for i, field in enumerate(logged.schema):
            if pa.types.is_null(field.type):  # a column never set (no scores): make it typed
                logged = logged.set_column(i, field.name, logged[i].cast(pa.float64()))
        joined = logged.join(labels.cast(pa.schema([
            ("request_id", logged.schema.field("request_id").type),
            ("row", logged.schema.field("row").type), ("label", labels.schema.field("label").type),
        ])), keys=["request_id", "row"], join_type="inner").to_pandas()
        if joined.empty:
            return []
        task = task or _infer_task(joined)
        step = int(window.total_seconds() * 1_000_000)
        origin = epoch_micros(start)
        joined["window"] = (joined["at"] - origin) // step
        joined["version"] = joined["version"].astype("Int64")
        out = []
        for (index, version), part in joined.groupby(["window", "version"], dropna=False):
            lo = datetime.fromtimestamp((origin + int(index) * step) / 1e6, tz=start.tzinfo)
            metrics = _metrics(part, task)
            row: dict[str, Any] = {
                "start": lo.isoformat(), "end": (lo + window).isoformat(),
                "version": None if version is None or version != version else int(version),
                "labelled_rows": len(part), "task": task, "metrics": metrics,
            }
            out.append(row)
        out.sort(key=lambda r: (r["start"], r["version"] or 0))
        return compare_with_validation(out, validation or {}, tolerance)


def compare_with_validation(rows: list[dict[str, Any]],
                            validation: Mapping[int, Mapping[str, float]],
                            tolerance: float = 0.05) -> list[dict[str, Any]]:
    """Mark each window whose live metrics fell below its version's validation metrics."""
    for row in rows:
        reference = validation.get(row["version"]) if row["version"] else None
        if reference:
            metrics = row["metrics"]
            row["validation"] = {k: reference[k] for k in metrics if k in reference}
            row["degraded"] = _degraded(metrics, reference, row["labelled_rows"], tolerance)
    return rows


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

    if task == "regression":
        y = np.asarray(part["label"], dtype=float)
        p = np.asarray(part["prediction"], dtype=float)
        return {"mae": float(np.mean(np.abs(y - p))),
                "rmse": float(math.sqrt(np.mean((y - p) ** 2)))}
    y = part["label"].astype(str).to_numpy()
    p = part["prediction"].astype(str).to_numpy()
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
