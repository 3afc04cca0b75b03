"""What a batch-scoring job leaves besides its outputs: prediction-log records (``--log``) and
the one errors file merged from the parts' errors files.

Logged rows are batch traffic of the model's endpoint (named after the model, as ``mlharbor
serve REF`` names it), so drift, traffic and live accuracy see them beside served requests. They
are journaled synchronously, part by part (the log's ``flush``), so a long job cannot outrun the
journal and lose rows to a full buffer; what the log still drops is counted and reported.
"""

from __future__ import annotations

import csv
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlharbor.pipelines.batchparts import ERROR_FIELDS, PartResult, iter_log_batches, part_name

if TYPE_CHECKING:
    from mlharbor.core.records import ModelVersion

LOG_RECORD_ROWS = 8_192  # rows per PredictionRecord (one "request" of the batch)


def log_part(log: Any, output: Path, result: PartResult, version: ModelVersion,
             ref: str) -> int:
    """Journal a scored part's rows as prediction records; returns the rows logged. The part's
    inputs file is removed once journaled."""
    from mlharbor.core.clock import utcnow
    from mlharbor.core.records import PredictionRecord
    from mlharbor.formats.predictor import Outputs

    assert result.log_file is not None and result.output is not None
    logged = 0
    for number, (inputs, outputs) in enumerate(iter_log_batches(
            output, result.log_file, result.output, LOG_RECORD_ROWS)):
        names = tuple(inputs.schema.names)
        columns = {n: inputs.column(n).to_numpy(zero_copy_only=False) for n in names}
        matrix = None
        if all(c.dtype.kind in "fiub" for c in columns.values()):
            matrix = np.column_stack([columns[n].astype(np.float64) for n in names])
        probability = [n for n in outputs.schema.names if n.startswith("probability_")]
        proba = np.column_stack([outputs.column(n).to_numpy() for n in probability]) \
            if probability else None
        answers = Outputs(np.asarray(outputs.column("prediction").to_numpy(
            zero_copy_only=False)), proba)
        log.emit(PredictionRecord(
            request_id=f"batch-{part_name(result.index)}-{number}-{uuid.uuid4().hex[:8]}",
            endpoint=version.name, model_ref=ref, served_version=version.version,
            inputs={"inputs": {n: v.tolist() for n, v in columns.items()}}
            if matrix is None else None,
            outputs=answers, latency_s=0.0, at=utcnow(), matrix=matrix,
            columns=names if matrix is not None else None))
        log.flush()
        logged += inputs.num_rows
    (output / result.log_file).unlink(missing_ok=True)
    return logged


def merge_errors(output: Path, files: Sequence[str | None], target: Path) -> None:
    """Concatenate the parts' errors files, in part order, into ``target`` (atomically)."""
    target = target.expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
    try:
        with tmp.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=ERROR_FIELDS)
            writer.writeheader()
            for name in files:
                if not name:
                    continue
                with (output / name).open(newline="", encoding="utf-8") as part:
                    writer.writerows(csv.DictReader(part))
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
