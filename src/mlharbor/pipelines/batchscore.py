"""Batch scoring: a registered version scores a dataset into a Parquet folder, on an engine.

:func:`score_batch` checks everything that can be checked before writing a byte (the version,
the input files and their columns, the output folder, the engine), then maps a
:class:`~mlharbor.pipelines.batchparts.PartScorer` over the parts that are not done yet. The
folder's ``_manifest.json`` (rewritten atomically after every part) names the version, the
dataset fingerprint and the parts done, so a rerun after a crash skips those and a rerun on
other inputs or another version is refused. Every run is recorded in the registry's audit
ledger (``model.batch_predict`` on the version: dataset URI, fingerprint, rows, refusals), and
with ``log=True`` the scored rows go to the prediction log as batch traffic of the model's
endpoint.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlharbor.core.errors import ConflictError, InvalidInputError, MlharborError
from mlharbor.pipelines.batchinputs import (
    Inputs,
    Storage,
    check_columns,
    plan_parts,
    resolve_inputs,
)
from mlharbor.pipelines.batchlog import log_part, merge_errors
from mlharbor.pipelines.batchmemory import DEFAULT_BATCH_ROWS
from mlharbor.pipelines.batchparts import ModelSource, PartResult, PartScorer

if TYPE_CHECKING:
    from mlharbor.core.records import ModelVersion
    from mlharbor.registry.service import Registry
    from mlharbor.settings import Settings

MANIFEST = "_manifest.json"
MANIFEST_FORMAT = 1
ON_ERROR = ("stop", "file")


@dataclass(frozen=True)
class BatchOptions:
    input: str
    output: Path
    engine: str = "local"
    scheduler: str | None = None
    workers: int | None = None
    id_column: str | None = None
    on_error: str = "stop"
    errors: Path | None = None
    memory_budget: int | None = None
    log: bool = False
    part_rows: int = 1_000_000


@dataclass
class BatchSummary:
    """What a run did; printed by the CLI and kept in the manifest and the audit record."""

    model: str
    dataset: str
    fingerprint: str
    output: str
    engine: str
    parts: int
    parts_skipped: int = 0
    rows: int = 0
    scored: int = 0
    errors: int = 0
    errors_file: str | None = None
    logged: int = 0
    log_dropped: int = 0
    seconds: float = 0.0  # the scoring loop's wall time (start-up and checks excluded)
    cpu_seconds: float = 0.0  # this process's CPU time over that loop (all its threads)

    def lines(self) -> list[str]:
        rate = self.rows / self.seconds if self.seconds > 0 else 0.0
        text = [f"scored {self.scored:,} of {self.rows:,} rows with {self.model} into "
                f"{self.output} ({self.parts} parts, {self.parts_skipped} already done; "
                f"{rate:,.0f} rows/s on {self.engine})",
                f"refused rows: {self.errors:,}"
                + (f" (listed in {self.errors_file})" if self.errors_file else "")]
        if self.logged or self.log_dropped:
            text.append(f"prediction log: {self.logged:,} rows logged, "
                        f"{self.log_dropped:,} dropped")
        return text


@dataclass
class Progress:
    """Callbacks the CLI's progress bar implements (both optional)."""

    start: Callable[[int | None, int], None] = lambda total, done: None
    advance: Callable[[int], None] = lambda rows: None
    parts: list[PartResult] = field(default_factory=list)


def score_batch(registry: Registry, settings: Settings, ref: str, options: BatchOptions, *,
                actor: str, progress: Progress | None = None) -> BatchSummary:
    """Score ``options.input`` with the version ``ref`` names into ``options.output``."""
    from mlharbor.compute import open_engine
    from mlharbor.core.signature import Signature

    progress = progress or Progress()
    _check_options(options)
    version = _ready_version(registry, ref)
    inputs = resolve_inputs(options.input, Storage(settings.s3_endpoint_url, settings.s3_region))
    names = list(Signature.from_dict((version.manifest or {})["signature"]).names)
    check_columns(inputs, names + ([options.id_column] if options.id_column else []))
    output = options.output.expanduser().resolve()
    header = _header(version, inputs, options)
    done = _resume(output, header)
    parts = plan_parts(inputs, names, options.part_rows)
    with open_engine(options.engine, options.scheduler, options.workers) as engine:
        source = _model_source(registry, version, settings, ship=engine.name != "local")
        todo = [p for p in parts if str(p.index) not in done]
        scorer = PartScorer(source, inputs.storage, str(output), options.id_column,
                            options.on_error, DEFAULT_BATCH_ROWS, log_inputs=options.log,
                            memory_budget=options.memory_budget,
                            slots=max(1, min(engine.threads_per_process(), len(todo))))
        if engine.name == "local":
            scorer.predictor()  # a model that cannot load fails before anything is written
            if todo:  # and so does a budget too small for it (Dask workers size their own)
                scorer.size_batches(todo[0])
            scorer.progress = progress.advance
        summary = BatchSummary(f"{version.name}:{version.version}", inputs.uri,
                               inputs.fingerprint, str(output), engine.name, len(parts))
        output.mkdir(parents=True, exist_ok=True)
        _clean_temporaries(output)
        manifest = {**header, "parts": [p.to_dict() for p in parts], "done": done}
        _write_manifest(output, manifest)
        summary.parts_skipped = len(parts) - len(todo)
        known = [p.rows for p in parts]
        progress.start(None if None in known else sum(int(r or 0) for r in known),
                       sum(int(d["rows"]) for d in done.values()))
        started, cpu_started = time.monotonic(), time.process_time()
        log = _open_log(settings) if options.log else None
        try:
            for _, result in engine.map_unordered(scorer, todo):
                if engine.name != "local":
                    progress.advance(result.rows)
                if log is not None and result.log_file and result.output:
                    summary.logged += log_part(log, output, result, version, ref)
                done[str(result.index)] = asdict(result)
                _write_manifest(output, manifest)
                progress.parts.append(result)
        except MlharborError as exc:
            _tally(summary, done)
            _audit(registry, actor, version, summary, "failure", exc)
            raise
        finally:
            if log is not None:
                log.close()
                summary.log_dropped = log.dropped
        summary.seconds = time.monotonic() - started
        summary.cpu_seconds = time.process_time() - cpu_started
    _tally(summary, done)
    errors_path = options.errors or output / "_errors.csv"
    if summary.errors:
        merge_errors(output, [done[str(p.index)].get("errors_file") for p in parts],
                     errors_path)
        summary.errors_file = str(errors_path)
    manifest["summary"] = asdict(summary)
    _write_manifest(output, manifest)
    _audit(registry, actor, version, summary, "success")
    return summary


def _tally(summary: BatchSummary, done: dict[str, Any]) -> None:
    summary.rows = sum(int(r["rows"]) for r in done.values())
    summary.scored = sum(int(r["scored"]) for r in done.values())
    summary.errors = sum(int(r["errors"]) for r in done.values())


def _check_options(options: BatchOptions) -> None:
    if options.on_error not in ON_ERROR:
        raise InvalidInputError(f"--on-error must be one of {', '.join(ON_ERROR)}; received "
                                f"{options.on_error!r}", field="on_error")
    if options.memory_budget is not None and options.memory_budget <= 0:
        raise InvalidInputError(f"--memory-budget must be a positive number of bytes; "
                                f"received {options.memory_budget}", field="memory_budget")
    if str(options.output).startswith("s3:/"):  # a Path folds "s3://" into "s3:/"
        # Parts, errors files, the logged inputs and the manifest are written as files that
        # are renamed into place, and resuming lists them; S3 has no rename, so each of those
        # would need its own single-PUT write path. Not done yet.
        raise InvalidInputError(
            "--output must be a local folder, or one shared by every Dask worker (NFS, a "
            "mounted volume); writing the parts to s3:// is not supported yet",
            hint="Score into a folder, then copy it: aws s3 sync OUTPUT s3://bucket/prefix.",
            field="output")
    if options.part_rows < 1:
        raise InvalidInputError("part_rows must be at least 1", field="part_rows")


def _ready_version(registry: Registry, ref: str) -> ModelVersion:
    from mlharbor.core.records import VersionStatus

    version = registry.get_version(ref)
    if version.status is not VersionStatus.READY or not version.manifest:
        raise InvalidInputError(
            f"version {version.ref} is {version.status.value}"
            f"{'' if version.manifest else ' and has no bundle manifest'}; only ready, "
            "registered versions can score", field="model")
    return version


def _model_source(registry: Registry, version: ModelVersion, settings: Settings, *,
                  ship: bool) -> ModelSource:
    root = registry.download(version)
    trusted = tuple(settings.formats.skops_trusted_types)
    ref = f"{version.name}:{version.version}"
    if not ship:
        return ModelSource(ref, dict(version.manifest or {}), trusted, root=str(root))
    files = {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
             if p.is_file()}
    return ModelSource(ref, dict(version.manifest or {}), trusted, files=files)


def _header(version: ModelVersion, inputs: Inputs, options: BatchOptions) -> dict[str, Any]:
    return {"format": MANIFEST_FORMAT, "model": f"{version.name}:{version.version}",
            "dataset": inputs.uri, "fingerprint": inputs.fingerprint,
            "files": [[f.name, f.size, f.digest] for f in inputs.files],
            "id_column": options.id_column, "part_rows": options.part_rows,
            "log": options.log}


_COMPARED = ("format", "model", "fingerprint", "id_column", "part_rows", "log")


def _resume(output: Path, header: dict[str, Any]) -> dict[str, Any]:
    """The parts already done in ``output`` by the same job; refuses a folder holding another
    job's results or anything else. Checks only: nothing is created here."""
    if output.exists() and not output.is_dir():
        raise InvalidInputError(f"--output {str(output)!r} is a file; give a folder",
                                field="output")
    manifest_path = output / MANIFEST
    if not manifest_path.exists():
        if output.exists() and any(output.iterdir()):
            raise InvalidInputError(
                f"--output {str(output)!r} is not empty and holds no batch-scoring manifest",
                hint="Give a new or empty folder (a rerun resumes from the manifest it "
                "leaves).", field="output")
        parent = output if output.exists() else output.parent
        while not parent.exists():
            parent = parent.parent
        if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
            raise InvalidInputError(f"cannot write --output {str(output)!r}: {str(parent)!r} "
                                    "is not writable", field="output")
        return {}
    try:
        stored = json.loads(manifest_path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"cannot read {str(manifest_path)!r}: {exc}",
                                field="output") from exc
    changed = [k for k in _COMPARED if stored.get(k) != header.get(k)]
    if changed:
        raise ConflictError(
            f"--output {str(output)!r} holds the results of another job (its "
            f"{', '.join(changed)} differ: {', '.join(f'{k}={stored.get(k)!r}' for k in changed)}"
            ")", hint="Give a new --output, or remove that folder to score again.",
            field="output")
    done = dict(stored.get("done") or {})
    # A part counts as done only if its output file is still there.
    return {k: v for k, v in done.items()
            if not v.get("output") or (output / str(v["output"])).is_file()}


def _write_manifest(output: Path, manifest: dict[str, Any]) -> None:
    tmp = output / f".{MANIFEST}.{uuid.uuid4().hex}.tmp"
    with tmp.open("w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=1, default=str)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(output / MANIFEST)


def _clean_temporaries(output: Path) -> None:
    """Half-written files a crashed run left (never renamed into place)."""
    for folder in (output, output / "_errors", output / "_log"):
        if folder.is_dir():
            for tmp in folder.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)


def _open_log(settings: Settings) -> Any:
    from mlharbor.monitoring.service import open_prediction_log

    return open_prediction_log(settings)


def _audit(registry: Registry, actor: str, version: ModelVersion, summary: BatchSummary,
           outcome: str, exc: MlharborError | None = None) -> None:
    details: dict[str, Any] = {
        "dataset": summary.dataset, "fingerprint": summary.fingerprint,
        "output": summary.output, "engine": summary.engine, "rows": summary.rows,
        "scored": summary.scored, "errors": summary.errors, "parts": summary.parts}
    if exc is not None:
        details.update(error=exc.code, message=exc.message)
    registry.store.record(actor=actor, action="model.batch_predict",
                          resource=f"model/{version.name}/version/{version.version}",
                          outcome=outcome, details=details)  # type: ignore[arg-type]
