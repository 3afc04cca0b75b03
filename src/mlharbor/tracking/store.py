"""The tracking store: experiments, runs, params, tags and metric series in the registry's
database (SQLite or PostgreSQL), one transaction per call.

Readers get typed records from :mod:`mlharbor.core.runs`. The store is what the Python API
(:mod:`mlharbor.tracking.fluent`), the MLflow REST adapter (``api/routes/mlflow_*``), the CLI
and the dashboard all use:

* experiments (:class:`~mlharbor.tracking.experiments.ExperimentStore`, which this class
  extends): create, get, get by name, list (with run counts), rename, delete or restore, tag;
* runs: :meth:`create_run`, :meth:`get_run`, :meth:`get_runs`, :meth:`update_run`,
  :meth:`set_run_lifecycle`, :meth:`log_batch` (metrics, params, tags in one transaction),
  :meth:`log_metrics_nowait` (a few points, only if no other writer must be waited for),
  :meth:`delete_tag`, :meth:`metric_history`, :meth:`child_runs`, :meth:`record_io`;
* search: :meth:`search_runs` (MLflow's filter and order_by grammar, :mod:`.search`, compiled
  to one SQL query by :mod:`.query`).

Rows become records in :mod:`mlharbor.tracking.rows`; the metric write path is
:mod:`mlharbor.tracking.writes`; files (run artifacts, logged models) are in
:mod:`mlharbor.tracking.files`. Metric writes also keep ``tracking_latest_metrics``, which
search filters and sorts on.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, insert, select, update

from mlharbor.core.errors import ConflictError, InvalidInputError, NotFoundError
from mlharbor.core.runs import (
    DatasetInput,
    LifecycleStage,
    MetricPoint,
    ModelOutput,
    Run,
    RunIO,
    RunPage,
    RunStatus,
)
from mlharbor.tracking import checkpoint, checks, dbapi, quick, rows, runio, writes
from mlharbor.tracking import schema as t
from mlharbor.tracking.experiments import (
    PROXY_SCHEME,
    ExperimentStore,
    TransactionalDb,
    now_ms,
)

if TYPE_CHECKING:
    from sqlalchemy import Connection

__all__ = ["PARENT_TAG", "PROXY_SCHEME", "RUN_NAME_TAG", "USER_TAG", "TrackingStore",
           "TransactionalDb", "now_ms"]

PARENT_TAG = "mlflow.parentRunId"
RUN_NAME_TAG = "mlflow.runName"
USER_TAG = "mlflow.user"


class TrackingStore(ExperimentStore):
    """Experiments and runs in the metadata database."""

    # -- runs -----------------------------------------------------------------------------

    def create_run(self, experiment_id: str | int, *, run_name: str | None = None,
                   user_id: str = "", start_time: int | None = None,
                   tags: Mapping[str, str] | None = None,
                   parent_run_id: str | None = None) -> Run:
        eid = checks.check_experiment_id(experiment_id)
        clean_tags = rows.check_tags(tags or {})
        parent = parent_run_id or clean_tags.get(PARENT_TAG)
        if parent is not None:
            checks.check_run_id(parent, field="parent_run_id")
            clean_tags[PARENT_TAG] = parent
        name = run_name or clean_tags.get(RUN_NAME_TAG) or rows.run_name()
        name = checks.check_name(name, field="run_name")
        clean_tags[RUN_NAME_TAG] = name
        user = checks.check_text(user_id or "", field="user_id", limit=checks.MAX_NAME_CHARS)
        if user:
            clean_tags.setdefault(USER_TAG, user)
        start = checks.check_int(start_time, field="start_time", minimum=0, default=now_ms())
        run_id = uuid.uuid4().hex
        with self.db.write() as conn:
            exp = self._experiment_row(conn, eid)
            if exp["lifecycle_stage"] != LifecycleStage.ACTIVE.value:
                raise InvalidInputError(
                    f"Experiment {exp['name']!r} is deleted; runs are created in active "
                    "experiments.", hint="Restore it first.", field="experiment_id")
            if parent is not None:
                rows.run_row(conn, parent)
            conn.execute(insert(t.runs).values(
                run_id=run_id, experiment_id=eid, name=name, status=RunStatus.RUNNING.value,
                start_time=start, end_time=None, lifecycle_stage=LifecycleStage.ACTIVE.value,
                user_id=user, artifact_uri=f"{exp['artifact_location'].rstrip('/')}/{run_id}"
                f"/artifacts", parent_run_id=parent, error=None, inputs=[], outputs=[]))
            conn.execute(insert(t.tags), [{"run_id": run_id, "key": k, "value": v}
                                          for k, v in clean_tags.items()])
            return rows.run_record(conn, run_id)

    def get_run(self, run_id: str) -> Run:
        checks.check_run_id(run_id)
        with self.db.read() as conn:
            return rows.run_record(conn, run_id)

    def get_runs(self, run_ids: Sequence[str]) -> list[Run]:
        """The runs ``run_ids`` in that order (NotFoundError naming the first missing)."""
        ids = [checks.check_run_id(r) for r in run_ids]
        with self.db.read() as conn:
            found = {r[0]: r for r in conn.execute(
                select(*rows.RUN_COLUMNS).where(t.runs.c.run_id.in_(ids)))}
            missing = [r for r in ids if r not in found]
            if missing:
                raise rows.no_run(missing[0])
            return rows.hydrate(conn, [found[r] for r in ids])

    def child_runs(self, run_id: str) -> list[Run]:
        checks.check_run_id(run_id)
        with self.db.read() as conn:
            children = conn.execute(select(*rows.RUN_COLUMNS)
                                    .where(t.runs.c.parent_run_id == run_id)
                                    .order_by(t.runs.c.start_time, t.runs.c.run_id)).all()
            return rows.hydrate(conn, list(children))

    def update_run(self, run_id: str, *, status: RunStatus | str | None = None,
                   end_time: int | None = None, run_name: str | None = None,
                   error: str | None = None) -> Run:
        """Change a run's status (ending it sets ``end_time``), name or recorded error."""
        checks.check_run_id(run_id)
        values: dict[str, Any] = {}
        if status is not None:
            try:
                values["status"] = RunStatus(status).value
            except ValueError as exc:
                raise InvalidInputError(
                    f"status must be one of {', '.join(s.value for s in RunStatus)}; received "
                    f"{str(status)[:40]!r}.", field="status") from exc
        if end_time is not None:
            values["end_time"] = checks.check_int(end_time, field="end_time", minimum=0)
        elif status is not None and RunStatus(status) not in (RunStatus.RUNNING,
                                                              RunStatus.SCHEDULED):
            values["end_time"] = now_ms()
        if run_name:
            values["name"] = checks.check_name(run_name, field="run_name")
        if error is not None:
            values["error"] = checks.check_text(error[:8000], field="error", limit=8000)
        with self.db.write() as conn:
            rows.active_run(conn, run_id)
            if values:
                conn.execute(update(t.runs).where(t.runs.c.run_id == run_id).values(**values))
            if "name" in values:
                rows.upsert(conn, t.tags, [{"run_id": run_id, "key": RUN_NAME_TAG,
                                            "value": values["name"]}], ("run_id", "key"),
                            ("value",))
            return rows.run_record(conn, run_id)

    def set_run_lifecycle(self, run_id: str, stage: LifecycleStage) -> None:
        checks.check_run_id(run_id)
        with self.db.write() as conn:
            rows.run_row(conn, run_id)
            conn.execute(update(t.runs).where(t.runs.c.run_id == run_id).values(
                lifecycle_stage=stage.value))

    def log_batch(self, run_id: str, *, metrics: Iterable[MetricPoint] = (),
                  params: Mapping[str, Any] | None = None,
                  tags: Mapping[str, Any] | None = None) -> None:
        """Record metric points, params and tags in one transaction: all or nothing.

        A param is written once: logging it again with the same value is a no-op, with
        another value a ConflictError (MLflow's rule, so a run's configuration cannot drift).
        """
        checks.check_run_id(run_id)
        points = [rows.check_point(p, i) for i, p in enumerate(metrics)]
        clean_params = {checks.check_key(k, field="params.key"): checks.check_text(
            str(v), field=f"params.{k}", limit=checks.MAX_PARAM_VALUE_CHARS)
            for k, v in (params or {}).items()}
        clean_tags = rows.check_tags({k: str(v) for k, v in (tags or {}).items()})
        if len(points) > checks.MAX_BATCH_METRICS or len(clean_params) > \
                checks.MAX_BATCH_PARAMS or len(clean_tags) > checks.MAX_BATCH_TAGS:
            raise InvalidInputError(
                f"A batch holds at most {checks.MAX_BATCH_METRICS} metrics, "
                f"{checks.MAX_BATCH_PARAMS} params and {checks.MAX_BATCH_TAGS} tags; received "
                f"{len(points)}, {len(clean_params)} and {len(clean_tags)}.",
                hint="Split it into several batches.")
        if not (points or clean_params or clean_tags):
            with self.db.read() as conn:
                rows.check_active(conn, run_id)
            return
        checkpointer = (self._checkpointer() if len(points) >= checkpoint.DEFER_POINTS
                        else None)
        with self.db.write() as conn:
            if checkpointer is not None:
                checkpointer.defer(conn)
            rows.check_active(conn, run_id)
            if clean_params:
                self._write_params(conn, run_id, clean_params)
            if clean_tags:
                rows.upsert(conn, t.tags, [{"run_id": run_id, "key": k, "value": v}
                                           for k, v in clean_tags.items()], ("run_id", "key"),
                            ("value",))
                if RUN_NAME_TAG in clean_tags:
                    conn.execute(update(t.runs).where(t.runs.c.run_id == run_id).values(
                        name=clean_tags[RUN_NAME_TAG][: checks.MAX_NAME_CHARS]))
            if points:
                writes.write_metrics(conn, run_id, points)
        if checkpointer is not None:
            checkpointer.wrote(len(points))

    def log_metrics_nowait(self, run_id: str, metrics: Sequence[MetricPoint]) -> bool:
        """Record a few metric points now if that needs no wait (:mod:`.quick`): True once
        committed; False, with nothing written, when it would have to wait for another
        writer, for more than :data:`~mlharbor.tracking.quick.MAX_POINTS` points, or on a
        database other than a SQLite file: then :meth:`log_batch` records them. Refuses
        what :meth:`log_batch` refuses, the same way."""
        checks.check_run_id(run_id)
        points = [rows.check_point(p, i) for i, p in enumerate(metrics)]
        writer = quick.for_engine(self.db.engine)
        return writer is not None and writer.write(run_id, points, self._checkpointer())

    def _checkpointer(self) -> checkpoint.Checkpointer | None:
        """On a SQLite file: the database's WAL checkpoint thread (:mod:`.checkpoint`), which
        metric writes leave their checkpoints to."""
        return checkpoint.for_engine(self.db.engine)

    @staticmethod
    def _write_params(conn: Connection, run_id: str, params: dict[str, str]) -> None:
        existing: dict[str, str] = dict(conn.execute(
            select(t.params.c.key, t.params.c.value).where(
                t.params.c.run_id == run_id, t.params.c.key.in_(list(params)))).all())
        for key, value in params.items():
            if key in existing and existing[key] != value:
                raise ConflictError(
                    f"Param {key!r} of run {run_id} is already {existing[key][:100]!r}; it "
                    f"cannot change to {value[:100]!r}.",
                    hint="Params are written once per run; log a new run for a new value.",
                    field=f"params.{key}")
        new = [{"run_id": run_id, "key": k, "value": v} for k, v in params.items()
               if k not in existing]
        if new:
            conn.execute(insert(t.params), new)

    def delete_tag(self, run_id: str, key: str) -> None:
        checks.check_run_id(run_id)
        checks.check_key(key, field="key")
        with self.db.write() as conn:
            rows.active_run(conn, run_id)
            gone = conn.execute(delete(t.tags).where(t.tags.c.run_id == run_id,
                                                     t.tags.c.key == key)).rowcount
            if not gone:
                raise NotFoundError(f"Run {run_id} has no tag {key!r}.", field="key")

    def metric_history(self, run_id: str, key: str, *, max_results: int | None = None,
                       offset: int = 0) -> tuple[list[MetricPoint], int | None]:
        """The points of metric ``key`` in step then time order; the next offset or None."""
        checks.check_run_id(run_id)
        checks.check_key(key, field="metric_key")
        limit = checks.check_max_results(max_results, default=checks.MAX_HISTORY,
                                         limit=checks.MAX_HISTORY)
        m = t.metrics.c
        with self.db.read() as conn:
            rows.run_row(conn, run_id)
            found = conn.execute(select(m.key, m.value, m.timestamp, m.step).where(
                m.run_id == run_id, m.key == key).order_by(m.step, m.timestamp, m.id)
                .limit(limit + 1).offset(offset)).all()
        points = [MetricPoint(r.key, math.nan if r.value is None else r.value, r.timestamp,
                              r.step) for r in found[:limit]]
        return points, offset + limit if len(found) > limit else None

    def search_runs(self, experiment_ids: Sequence[str | int], *, filter: str | None = None,
                    view: str = "active", max_results: int = 1000,
                    order_by: list[str] | None = None, page_token: str | None = None
                    ) -> RunPage:
        """Runs of the experiments matching MLflow's ``filter`` grammar, sorted by
        ``order_by`` (newest first by default), a page at a time."""
        from mlharbor.tracking import query

        ids = [checks.check_experiment_id(e, field="experiment_ids") for e in experiment_ids]
        limit = checks.check_max_results(max_results, default=1000)
        offset = checks.decode_token(page_token)
        # Compiled (or refused as bad input) before a connection is taken.
        sql, values = query.search_sql(self.db.engine.dialect, ids, filter, order_by, view)
        with self.db.read() as conn:
            with dbapi.cursor(conn, sql) as cursor:
                cursor.execute(sql.text, sql.params(
                    {**values, query.PAGE_LIMIT: limit + 1, query.PAGE_OFFSET: offset}))
                found = cursor.fetchall()
            runs = rows.hydrate(conn, found[:limit])
        return RunPage(runs, checks.encode_token(offset + limit) if len(found) > limit
                       else None)

    def record_io(self, run_id: str, *, datasets: Sequence[DatasetInput] = (),
                  model_inputs: Sequence[str] = (), model_outputs: Sequence[ModelOutput] = (),
                  mlmodels: Sequence[str] = ()) -> None:
        """Add the datasets and logged models run ``run_id`` read and produced (MLflow's
        log-inputs, log-outputs and, for MLflow 2, log-model); what it already holds is not
        added twice. Every entry is checked before anything is written."""
        checks.check_run_id(run_id)
        for name, given in (("datasets", datasets), ("models", [*model_inputs, *model_outputs]),
                            ("model_json", mlmodels)):
            if len(given) > runio.MAX_NEW_ENTRIES:
                raise InvalidInputError(f"At most {runio.MAX_NEW_ENTRIES} {name} a request; "
                                        f"received {len(given)}.", field=name,
                                        hint="Send them in several requests.")
        ins = [*(runio.dataset_entry(runio.check_dataset(d, field=f"datasets[{i}]"))
                 for i, d in enumerate(datasets)),
               *(runio.model_input_entry(runio.check_model_id(m, field=f"models[{i}].model_id"))
                 for i, m in enumerate(model_inputs))]
        outs = [*(runio.model_output_entry(runio.check_output(o, field=f"models[{i}]"))
                  for i, o in enumerate(model_outputs)),
                *(runio.mlmodel_entry(checks.check_text(m, field="model_json",
                                                        limit=runio.MAX_MLMODEL_CHARS))
                  for m in mlmodels)]
        with self.db.write() as conn:
            row = rows.active_run(conn, run_id)
            conn.execute(update(t.runs).where(t.runs.c.run_id == run_id).values(
                inputs=runio.merged(row["inputs"], ins, limit=runio.MAX_INPUTS),
                outputs=runio.merged(row["outputs"], outs, limit=runio.MAX_OUTPUTS)))

    def get_run_io(self, run_id: str) -> tuple[Run, RunIO]:
        """Run ``run_id`` and the datasets and logged models it read and produced."""
        checks.check_run_id(run_id)
        with self.db.read() as conn:
            run = rows.run_record(conn, run_id)
            stored = conn.execute(select(t.runs.c.inputs, t.runs.c.outputs)
                                  .where(t.runs.c.run_id == run_id)).one()
        return run, runio.read(stored[0], stored[1])
