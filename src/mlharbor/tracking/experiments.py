"""Experiments in the metadata database: create, read, list (with run counts), rename, delete
or restore, tag.

:class:`ExperimentStore` is the experiment half of the tracking store;
:class:`~mlharbor.tracking.store.TrackingStore` adds runs on top of it, so callers keep one
object. Every call is one transaction; every check runs before anything is written.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import func, insert, select, update

from mlharbor.core.errors import ConflictError, InvalidInputError, NotFoundError
from mlharbor.core.runs import Experiment, LifecycleStage
from mlharbor.tracking import checks, query, rows
from mlharbor.tracking import schema as t
from mlharbor.tracking.search import FieldClause

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine, RowMapping

#: Where an experiment created without an artifact location keeps its runs' files: the
#: artifact proxy (``mlflow-artifacts:/<experiment id>``).
PROXY_SCHEME = "mlflow-artifacts:"


class TransactionalDb(Protocol):
    """What the store needs of the metadata database (``registry.database.Database``)."""

    dialect: str
    engine: Engine

    def read(self) -> contextlib.AbstractContextManager[Connection]: ...

    def write(self) -> contextlib.AbstractContextManager[Connection]: ...


def now_ms() -> int:
    """Now, in milliseconds since the Unix epoch (MLflow's unit for every time)."""
    return int(time.time() * 1000)


class ExperimentStore:
    """Experiments in the metadata database."""

    def __init__(self, db: TransactionalDb) -> None:
        self.db = db

    def create_experiment(self, name: str, *, artifact_location: str | None = None,
                          tags: Mapping[str, str] | None = None) -> Experiment:
        name = checks.check_name(name, field="name")
        clean_tags = rows.check_tags(tags or {})
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
            return rows.experiment(self._experiment_row(conn, new_id))

    def get_experiment(self, experiment_id: str | int) -> Experiment:
        eid = checks.check_experiment_id(experiment_id)
        with self.db.read() as conn:
            return rows.experiment(self._experiment_row(conn, eid))

    def get_experiment_by_name(self, name: str) -> Experiment:
        name = checks.check_name(name, field="experiment_name")
        with self.db.read() as conn:
            row = conn.execute(select(t.experiments).where(t.experiments.c.name == name)
                               ).mappings().first()
        if row is None:
            raise NotFoundError(f"No experiment named {name!r}.", field="experiment_name")
        return rows.experiment(row)

    def list_experiments(self, *, view: str = "active", where: Sequence[FieldClause] = (),
                         max_results: int = 1000, offset: int = 0) -> tuple[list[Experiment],
                                                                            int | None]:
        """Experiments by id (``view``: active, deleted or all) matching every clause of
        ``where`` (on ``name`` or ``tags``, :func:`.search.parse_field_filter`'s); the next
        offset or None."""
        found, nxt = self._list(view, where, max_results, offset, counts=False)
        return [e for e, _count in found], nxt

    def list_experiments_with_counts(self, *, view: str = "active", max_results: int = 1000,
                                     offset: int = 0
                                     ) -> tuple[list[tuple[Experiment, int]], int | None]:
        """Experiments by id, each with its number of runs (of every lifecycle stage), in
        one query; the next offset or None."""
        return self._list(view, (), max_results, offset, counts=True)

    def _list(self, view: str, where: Sequence[FieldClause], max_results: int, offset: int, *,
              counts: bool) -> tuple[list[tuple[Experiment, int]], int | None]:
        q: Any = select(t.experiments)
        if counts:
            # One grouped pass over the runs' (experiment_id, start_time) index, joined to
            # the page of experiments, instead of a COUNT query per experiment.
            per = (select(t.runs.c.experiment_id, func.count().label("n"))
                   .group_by(t.runs.c.experiment_id).subquery())
            q = (select(t.experiments, func.coalesce(per.c.n, 0).label("run_count"))
                 .outerjoin(per, per.c.experiment_id == t.experiments.c.id))
        q = rows.lifecycle(q.order_by(t.experiments.c.id), t.experiments.c.lifecycle_stage,
                           view)
        for clause in where:
            column = t.experiments.c.name if clause.field == "name" else \
                t.experiments.c.tags[clause.key].as_string()
            # A tag the experiment lacks is NULL: it matches nothing (as FieldClause.matches).
            q = q.where(query.compare(column, clause.op, clause.value))
        with self.db.read() as conn:
            found = conn.execute(q.limit(max_results + 1).offset(offset)).mappings().all()
        more = len(found) > max_results
        return ([(rows.experiment(r), int(r["run_count"]) if counts else 0)
                 for r in found[:max_results]], offset + max_results if more else None)

    def count_runs(self, experiment_id: str | int) -> int:
        """How many runs experiment ``experiment_id`` holds (every lifecycle stage)."""
        eid = checks.check_experiment_id(experiment_id)
        with self.db.read() as conn:
            return int(conn.execute(select(func.count()).select_from(t.runs).where(
                t.runs.c.experiment_id == eid)).scalar_one())

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
            return rows.experiment(self._experiment_row(conn, eid))

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
            return rows.experiment(self._experiment_row(conn, eid))

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
            return rows.experiment(self._experiment_row(conn, eid))

    @staticmethod
    def _experiment_row(conn: Connection, eid: int) -> RowMapping:
        row = conn.execute(select(t.experiments).where(t.experiments.c.id == eid)
                           ).mappings().first()
        if row is None:
            raise NotFoundError(f"No experiment with id {str(eid)!r}.", field="experiment_id")
        return row
