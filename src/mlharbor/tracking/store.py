"""The tracking store: experiments, runs, params, tags and metric series in the registry's
database (SQLite or PostgreSQL), one transaction per call.

Readers get typed records from :mod:`mlharbor.core.runs`. The store is what the Python API
(:mod:`mlharbor.tracking.fluent`), the MLflow REST adapter (``api/routes/mlflow_*``), the CLI
and the dashboard all use:

* experiments: :meth:`create_experiment`, :meth:`get_experiment`,
  :meth:`get_experiment_by_name`, :meth:`list_experiments`, :meth:`rename_experiment`,
  :meth:`set_experiment_lifecycle`, :meth:`set_experiment_tag`;
* runs: :meth:`create_run`, :meth:`get_run`, :meth:`get_runs`, :meth:`update_run`,
  :meth:`set_run_lifecycle`, :meth:`log_batch` (metrics, params, tags in one transaction),
  :meth:`delete_tag`, :meth:`metric_history`, :meth:`child_runs`;
* search: :meth:`search_runs` (MLflow's filter and order_by grammar, :mod:`.search`).

Files (run artifacts, logged models) are in :mod:`mlharbor.tracking.files`.
Metric writes also keep ``tracking_latest_metrics``, which search filters and sorts on.
"""

from __future__ import annotations

import contextlib
import math
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import delete, func, insert, select, update

from mlharbor.core.errors import ConflictError, InvalidInputError, NotFoundError
from mlharbor.core.runs import (
    Experiment,
    LifecycleStage,
    MetricPoint,
    Run,
    RunPage,
    RunStatus,
)
from mlharbor.tracking import checks, writes
from mlharbor.tracking import schema as t

if TYPE_CHECKING:
    from sqlalchemy import Connection, RowMapping

PROXY_SCHEME = "mlflow-artifacts:"
PARENT_TAG = "mlflow.parentRunId"
RUN_NAME_TAG = "mlflow.runName"
USER_TAG = "mlflow.user"


class TransactionalDb(Protocol):
    """What the store needs of the metadata database (``registry.database.Database``)."""

    dialect: str

    def read(self) -> contextlib.AbstractContextManager[Connection]: ...

    def write(self) -> contextlib.AbstractContextManager[Connection]: ...


def now_ms() -> int:
    return int(time.time() * 1000)


class TrackingStore:
    """Experiments and runs in the metadata database."""

    def __init__(self, db: TransactionalDb) -> None:
        self.db = db

    # -- experiments ----------------------------------------------------------------------

    def create_experiment(self, name: str, *, artifact_location: str | None = None,
                          tags: Mapping[str, str] | None = None) -> Experiment:
        name = checks.check_name(name, field="name")
        clean_tags = _check_tags(tags or {})
        if artifact_location is not None:
            checks.check_text(artifact_location, field="artifact_location", limit=2000,
                              allow_empty=False)
        now = now_ms()
        with self.db.write() as conn:
            if conn.execute(select(t.experiments.c.id).where(t.experiments.c.name == name)
                            ).first() is not None:
                raise ConflictError(f"Experiment {name!r} already exists.",
                                    hint="Use it, or pick another name.", field="name")
            new_id = conn.execute(insert(t.experiments).values(
                name=name, artifact_location=artifact_location or "",
                lifecycle_stage=LifecycleStage.ACTIVE.value, tags=clean_tags,
                creation_time=now, last_update_time=now).returning(t.experiments.c.id)
            ).scalar_one()
            if not artifact_location:
                conn.execute(update(t.experiments).where(t.experiments.c.id == new_id).values(
                    artifact_location=f"{PROXY_SCHEME}/{new_id}"))
            return _experiment(self._experiment_row(conn, new_id))

    def get_experiment(self, experiment_id: str | int) -> Experiment:
        eid = checks.check_experiment_id(experiment_id)
        with self.db.read() as conn:
            return _experiment(self._experiment_row(conn, eid))

    def get_experiment_by_name(self, name: str) -> Experiment:
        name = checks.check_name(name, field="experiment_name")
        with self.db.read() as conn:
            row = conn.execute(select(t.experiments).where(t.experiments.c.name == name)
                               ).mappings().first()
        if row is None:
            raise NotFoundError(f"No experiment named {name!r}.", field="experiment_name")
        return _experiment(row)

    def list_experiments(self, *, view: str = "active", name_like: str | None = None,
                         max_results: int = 1000, offset: int = 0) -> tuple[list[Experiment],
                                                                            int | None]:
        """Experiments by id (``view``: active, deleted or all); the next offset or None."""
        q = select(t.experiments).order_by(t.experiments.c.id)
        q = _lifecycle(q, t.experiments.c.lifecycle_stage, view)
        if name_like:
            q = q.where(t.experiments.c.name.like(name_like))
        with self.db.read() as conn:
            rows = conn.execute(q.limit(max_results + 1).offset(offset)).mappings().all()
        more = len(rows) > max_results
        return ([_experiment(r) for r in rows[:max_results]],
                offset + max_results if more else None)

    def rename_experiment(self, experiment_id: str | int, new_name: str) -> Experiment:
        eid = checks.check_experiment_id(experiment_id)
        new_name = checks.check_name(new_name, field="new_name")
        with self.db.write() as conn:
            self._experiment_row(conn, eid)
            clash = conn.execute(select(t.experiments.c.id).where(
                t.experiments.c.name == new_name, t.experiments.c.id != eid)).first()
            if clash is not None:
                raise ConflictError(f"Experiment {new_name!r} already exists.",
                                    field="new_name")
            conn.execute(update(t.experiments).where(t.experiments.c.id == eid).values(
                name=new_name, last_update_time=now_ms()))
            return _experiment(self._experiment_row(conn, eid))

    def set_experiment_lifecycle(self, experiment_id: str | int, stage: LifecycleStage
                                 ) -> Experiment:
        """Delete (``deleted``) or restore (``active``) an experiment; its runs stay."""
        eid = checks.check_experiment_id(experiment_id)
        if eid == t.DEFAULT_EXPERIMENT_ID and stage is LifecycleStage.DELETED:
            raise InvalidInputError("The Default experiment (id 0) cannot be deleted.",
                                    field="experiment_id")
        with self.db.write() as conn:
            self._experiment_row(conn, eid)
            conn.execute(update(t.experiments).where(t.experiments.c.id == eid).values(
                lifecycle_stage=stage.value, last_update_time=now_ms()))
            return _experiment(self._experiment_row(conn, eid))

    def set_experiment_tag(self, experiment_id: str | int, key: str, value: str | None
                           ) -> Experiment:
        """Set (or, with ``value=None``, remove) one experiment tag."""
        eid = checks.check_experiment_id(experiment_id)
        checks.check_key(key, field="key")
        if value is not None:
            checks.check_text(value, field="value", limit=checks.MAX_TAG_VALUE_CHARS)
        with self.db.write() as conn:
            row = self._experiment_row(conn, eid)
            tags = dict(row["tags"] or {})
            if value is None:
                tags.pop(key, None)
            else:
                tags[key] = value
            conn.execute(update(t.experiments).where(t.experiments.c.id == eid).values(
                tags=tags, last_update_time=now_ms()))
            return _experiment(self._experiment_row(conn, eid))

    @staticmethod
    def _experiment_row(conn: Connection, eid: int) -> RowMapping:
        row = conn.execute(select(t.experiments).where(t.experiments.c.id == eid)
                           ).mappings().first()
        if row is None:
            raise NotFoundError(f"No experiment with id {str(eid)!r}.", field="experiment_id")
        return row

    # -- runs -----------------------------------------------------------------------------

    def create_run(self, experiment_id: str | int, *, run_name: str | None = None,
                   user_id: str = "", start_time: int | None = None,
                   tags: Mapping[str, str] | None = None,
                   parent_run_id: str | None = None) -> Run:
        eid = checks.check_experiment_id(experiment_id)
        clean_tags = _check_tags(tags or {})
        parent = parent_run_id or clean_tags.get(PARENT_TAG)
        if parent is not None:
            checks.check_run_id(parent, field="parent_run_id")
            clean_tags[PARENT_TAG] = parent
        name = run_name or clean_tags.get(RUN_NAME_TAG) or _run_name()
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
                self._run_row(conn, parent)
            conn.execute(insert(t.runs).values(
                run_id=run_id, experiment_id=eid, name=name, status=RunStatus.RUNNING.value,
                start_time=start, end_time=None, lifecycle_stage=LifecycleStage.ACTIVE.value,
                user_id=user, artifact_uri=f"{exp['artifact_location'].rstrip('/')}/{run_id}"
                f"/artifacts", parent_run_id=parent, error=None, inputs=[], outputs=[]))
            conn.execute(insert(t.tags), [{"run_id": run_id, "key": k, "value": v}
                                          for k, v in clean_tags.items()])
            return self._hydrate(conn, [self._run_row(conn, run_id)])[0]

    def get_run(self, run_id: str) -> Run:
        checks.check_run_id(run_id)
        with self.db.read() as conn:
            return self._hydrate(conn, [self._run_row(conn, run_id)])[0]

    def get_runs(self, run_ids: Sequence[str]) -> list[Run]:
        """The runs ``run_ids`` in that order (NotFoundError naming the first missing)."""
        ids = [checks.check_run_id(r) for r in run_ids]
        with self.db.read() as conn:
            rows = conn.execute(select(t.runs).where(t.runs.c.run_id.in_(ids))
                                ).mappings().all()
            found = {r["run_id"]: r for r in rows}
            missing = [r for r in ids if r not in found]
            if missing:
                raise NotFoundError(f"No run with id {missing[0]!r}.", field="run_id")
            return self._hydrate(conn, [found[r] for r in ids])

    def child_runs(self, run_id: str) -> list[Run]:
        checks.check_run_id(run_id)
        with self.db.read() as conn:
            rows = conn.execute(select(t.runs).where(t.runs.c.parent_run_id == run_id)
                                .order_by(t.runs.c.start_time, t.runs.c.run_id)
                                ).mappings().all()
            return self._hydrate(conn, list(rows))

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
            self._active_run(conn, run_id)
            if values:
                conn.execute(update(t.runs).where(t.runs.c.run_id == run_id).values(**values))
            if "name" in values:
                _upsert(conn, t.tags, [{"run_id": run_id, "key": RUN_NAME_TAG,
                                        "value": values["name"]}], ("run_id", "key"),
                        ("value",))
            return self._hydrate(conn, [self._run_row(conn, run_id)])[0]

    def set_run_lifecycle(self, run_id: str, stage: LifecycleStage) -> None:
        checks.check_run_id(run_id)
        with self.db.write() as conn:
            self._run_row(conn, run_id)
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
        points = [_check_point(p, i) for i, p in enumerate(metrics)]
        clean_params = {checks.check_key(k, field="params.key"): checks.check_text(
            str(v), field=f"params.{k}", limit=checks.MAX_PARAM_VALUE_CHARS)
            for k, v in (params or {}).items()}
        clean_tags = _check_tags({k: str(v) for k, v in (tags or {}).items()})
        if len(points) > checks.MAX_BATCH_METRICS or len(clean_params) > \
                checks.MAX_BATCH_PARAMS or len(clean_tags) > checks.MAX_BATCH_TAGS:
            raise InvalidInputError(
                f"A batch holds at most {checks.MAX_BATCH_METRICS} metrics, "
                f"{checks.MAX_BATCH_PARAMS} params and {checks.MAX_BATCH_TAGS} tags; received "
                f"{len(points)}, {len(clean_params)} and {len(clean_tags)}.",
                hint="Split it into several batches.")
        if not (points or clean_params or clean_tags):
            with self.db.read() as conn:
                _check_active(conn, run_id)
            return
        with self.db.write() as conn:
            _check_active(conn, run_id)
            if clean_params:
                self._write_params(conn, run_id, clean_params)
            if clean_tags:
                _upsert(conn, t.tags, [{"run_id": run_id, "key": k, "value": v}
                                       for k, v in clean_tags.items()], ("run_id", "key"),
                        ("value",))
                if RUN_NAME_TAG in clean_tags:
                    conn.execute(update(t.runs).where(t.runs.c.run_id == run_id).values(
                        name=clean_tags[RUN_NAME_TAG][: checks.MAX_NAME_CHARS]))
            if points:
                writes.write_metrics(conn, run_id, points)

    @staticmethod
    def _write_params(conn: Connection, run_id: str, params: dict[str, str]) -> None:
        existing: dict[str, str] = dict(conn.execute(select(t.params.c.key, t.params.c.value).where(
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
            self._active_run(conn, run_id)
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
            self._run_row(conn, run_id)
            rows = conn.execute(select(m.key, m.value, m.timestamp, m.step).where(
                m.run_id == run_id, m.key == key).order_by(m.step, m.timestamp, m.id)
                .limit(limit + 1).offset(offset)).all()
        points = [MetricPoint(r.key, math.nan if r.value is None else r.value, r.timestamp,
                              r.step) for r in rows[:limit]]
        return points, offset + limit if len(rows) > limit else None

    def search_runs(self, experiment_ids: Sequence[str | int], *, filter: str | None = None,
                    view: str = "active", max_results: int = 1000,
                    order_by: list[str] | None = None, page_token: str | None = None
                    ) -> RunPage:
        """Runs of the experiments matching MLflow's ``filter`` grammar, sorted by
        ``order_by`` (newest first by default), a page at a time."""
        from mlharbor.tracking.query import run_query

        ids = [checks.check_experiment_id(e, field="experiment_ids") for e in experiment_ids]
        limit = checks.check_max_results(max_results, default=1000)
        offset = checks.decode_token(page_token)
        q = _lifecycle(run_query(ids, filter, order_by), t.runs.c.lifecycle_stage, view)
        with self.db.read() as conn:
            rows = conn.execute(q.limit(limit + 1).offset(offset)).mappings().all()
            runs = self._hydrate(conn, list(rows[:limit]))
        return RunPage(runs, checks.encode_token(offset + limit) if len(rows) > limit
                       else None)

    def count_runs(self, experiment_id: str | int) -> int:
        eid = checks.check_experiment_id(experiment_id)
        with self.db.read() as conn:
            return int(conn.execute(select(func.count()).select_from(t.runs).where(
                t.runs.c.experiment_id == eid)).scalar_one())

    def record_io(self, run_id: str, *, inputs: list[Any] | None = None,
                  outputs: list[Any] | None = None) -> None:
        """Append what MLflow's log-inputs / log-outputs sent (datasets, model outputs)."""
        checks.check_run_id(run_id)
        with self.db.write() as conn:
            row = self._active_run(conn, run_id)
            conn.execute(update(t.runs).where(t.runs.c.run_id == run_id).values(
                inputs=[*(row["inputs"] or []), *(inputs or [])][-1000:],
                outputs=[*(row["outputs"] or []), *(outputs or [])][-1000:]))

    # -- rows to records ------------------------------------------------------------------

    @staticmethod
    def _run_row(conn: Connection, run_id: str) -> RowMapping:
        row = conn.execute(select(t.runs).where(t.runs.c.run_id == run_id)).mappings().first()
        if row is None:
            raise NotFoundError(f"No run with id {run_id!r}.", field="run_id")
        return row

    def _active_run(self, conn: Connection, run_id: str) -> RowMapping:
        row = self._run_row(conn, run_id)
        if row["lifecycle_stage"] != LifecycleStage.ACTIVE.value:
            raise InvalidInputError(f"Run {run_id} is deleted; restore it to change it.",
                                    field="run_id")
        return row

    @staticmethod
    def _hydrate(conn: Connection, rows: list[RowMapping]) -> list[Run]:
        if not rows:
            return []
        ids = [r["run_id"] for r in rows]
        params: dict[str, dict[str, str]] = {i: {} for i in ids}
        tags: dict[str, dict[str, str]] = {i: {} for i in ids}
        metrics: dict[str, dict[str, MetricPoint]] = {i: {} for i in ids}
        for chunk in _chunks(ids, 500):
            for r in conn.execute(select(t.params).where(t.params.c.run_id.in_(chunk))):
                params[r.run_id][r.key] = r.value
            for r in conn.execute(select(t.tags).where(t.tags.c.run_id.in_(chunk))):
                tags[r.run_id][r.key] = r.value
            for r in conn.execute(select(t.latest_metrics).where(
                    t.latest_metrics.c.run_id.in_(chunk))):
                metrics[r.run_id][r.key] = MetricPoint(
                    r.key, math.nan if r.value is None else r.value, r.timestamp, r.step)
        return [Run(run_id=r["run_id"], experiment_id=str(r["experiment_id"]), name=r["name"],
                    status=_STATUSES[r["status"]], start_time=r["start_time"],
                    end_time=r["end_time"], lifecycle_stage=_STAGES[r["lifecycle_stage"]],
                    user_id=r["user_id"],
                    artifact_uri=r["artifact_uri"], parent_run_id=r["parent_run_id"],
                    metrics=metrics[r["run_id"]], params=params[r["run_id"]],
                    tags=tags[r["run_id"]], error=r["error"]) for r in rows]


_INT64 = 2**63
# Stored text -> enum member, looked up once per run of a (possibly large) search page.
_STATUSES = {s.value: s for s in RunStatus}
_STAGES = {s.value: s for s in LifecycleStage}


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _check_active(conn: Connection, run_id: str) -> None:
    """NotFoundError for no such run, InvalidInputError for a deleted one (reads one column:
    the check every logging call makes)."""
    stage = writes.run_stage(conn, run_id)
    if stage is None:
        raise NotFoundError(f"No run with id {run_id!r}.", field="run_id")
    if stage != LifecycleStage.ACTIVE.value:
        raise InvalidInputError(f"Run {run_id} is deleted; restore it to change it.",
                                field="run_id")


def _check_point(point: Any, index: int) -> MetricPoint:
    if not isinstance(point, MetricPoint):
        raise InvalidInputError(f"metrics[{index}] must be a MetricPoint; received "
                                f"{type(point).__name__}.", field=f"metrics[{index}]")
    if type(point.value) is float and type(point.timestamp) is int \
            and type(point.step) is int and 0 <= point.timestamp < _INT64 \
            and -_INT64 <= point.step < _INT64:
        # What the MLflow routes and the flusher hand over (already parsed): only the key is
        # left to check; the same rules as below, without converting anything.
        checks.check_key(point.key, field=f"metrics[{index}].key")
        return point
    return MetricPoint(
        checks.check_key(point.key, field=f"metrics[{index}].key"),
        checks.check_number(point.value, field=f"metrics[{index}].value"),
        checks.check_int(point.timestamp, field=f"metrics[{index}].timestamp", minimum=0),
        checks.check_int(point.step, field=f"metrics[{index}].step"))


def _check_tags(tags: Mapping[str, Any]) -> dict[str, str]:
    if not isinstance(tags, Mapping):
        raise InvalidInputError("tags must be a mapping of keys to text.", field="tags")
    return {checks.check_key(k, field="tags.key"): checks.check_text(
        v, field=f"tags.{k}", limit=checks.MAX_TAG_VALUE_CHARS) for k, v in tags.items()}


def _run_name() -> str:
    import random

    adjectives = ("brave", "calm", "eager", "gentle", "keen", "lucky", "merry", "quiet",
                  "swift", "wise")
    nouns = ("otter", "harbor", "heron", "lynx", "maple", "pike", "raven", "tide", "wren")
    return f"{random.choice(adjectives)}-{random.choice(nouns)}-{random.randint(100, 999)}"


def _lifecycle(q: Any, column: Any, view: str) -> Any:
    view = (view or "active").lower().replace("_only", "")
    if view in ("active", "1"):
        return q.where(column == LifecycleStage.ACTIVE.value)
    if view in ("deleted", "2"):
        return q.where(column == LifecycleStage.DELETED.value)
    if view in ("all", "3"):
        return q
    raise InvalidInputError(f"view must be active, deleted or all; received {view[:40]!r}.",
                            field="run_view_type")


def _upsert(conn: Connection, table: Any, rows: list[dict[str, Any]], keys: tuple[str, ...],
            columns: tuple[str, ...]) -> None:
    stmt = writes.dialect_insert(conn)(table)
    stmt = stmt.on_conflict_do_update(index_elements=list(keys),
                                      set_={c: stmt.excluded[c] for c in columns})
    conn.execute(stmt, rows)




def _experiment(row: RowMapping) -> Experiment:
    return Experiment(experiment_id=str(row["id"]), name=row["name"],
                      artifact_location=row["artifact_location"],
                      lifecycle_stage=LifecycleStage(row["lifecycle_stage"]),
                      tags=dict(row["tags"] or {}), creation_time=row["creation_time"],
                      last_update_time=row["last_update_time"])
