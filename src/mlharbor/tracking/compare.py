"""Runs for people to compare: experiments chosen by name, runs searched a page at a time and
shown as JSON-ready views, and the side-by-side diff of two runs.

One place for what ``mlharbor runs list|show|compare``, the ``/api/v1/experiments`` and
``/api/v1/runs`` routes and the dashboard's Experiments page all show, so the three agree.
Filtering and sorting use the store's search grammar (MLflow's ``search_runs``:
:mod:`mlharbor.tracking.search`).

Where a run came from is read from its tags: the data fingerprint from
``mlharbor.dataset.fingerprint`` (``mlharbor train`` sets it), the code version from MLflow's
``mlflow.source.git.commit`` (set by the MLflow client in a git checkout, and by ``mlharbor
train``), the registered version from ``mlharbor.model_version``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from typing import Any, Literal

from mlharbor.core.errors import InvalidInputError, NotFoundError
from mlharbor.core.runs import (
    CODE_VERSION_TAG,
    DATA_FINGERPRINT_TAG,
    MODEL_VERSION_TAG,
    Experiment,
    Run,
    RunPage,
)
from mlharbor.tracking.store import PARENT_TAG, TrackingStore

#: Tags the store or the MLflow client set on every run: shown as columns, not as tags.
SYSTEM_TAGS = frozenset({PARENT_TAG, "mlflow.runName", "mlflow.user", "mlflow.source.name",
                         "mlflow.source.type", "mlflow.log-model.history"})
#: Most metric (or param) columns a table shows; the rest are in the JSON.
MAX_COLUMNS = 40
MAX_SELECTED = 50

Section = Literal["run", "params", "metrics", "tags"]


def select_experiments(store: TrackingStore, names: Sequence[str] | None) -> list[Experiment]:
    """The experiments ``names`` name (a name, or an id such as ``"0"``), in that order;
    every active experiment when ``names`` is empty. An unknown name is a NotFoundError that
    lists the names there are."""
    if not names:
        found, _next = store.list_experiments(max_results=MAX_SELECTED * 20)
        return found
    if len(names) > MAX_SELECTED:
        raise InvalidInputError(f"At most {MAX_SELECTED} experiments can be searched at once; "
                                f"received {len(names)}.", field="experiment")
    chosen: list[Experiment] = []
    for name in names:
        experiment = _experiment(store, name)
        if all(e.experiment_id != experiment.experiment_id for e in chosen):
            chosen.append(experiment)
    return chosen


def _experiment(store: TrackingStore, name: str) -> Experiment:
    if not isinstance(name, str) or not name.strip():
        raise InvalidInputError("An experiment is named by its name (or its id); received an "
                                "empty value.", field="experiment")
    try:
        return store.get_experiment_by_name(name)
    except NotFoundError as exc:
        if name.isascii() and name.isdigit() and len(name) <= 10:
            try:
                return store.get_experiment(name)
            except NotFoundError:
                pass
        known, more = store.list_experiments(max_results=20)
        listed = ", ".join(repr(e.name) for e in known) + (", ..." if more else "")
        raise NotFoundError(f"No experiment named {name[:200]!r}.",
                            hint=f"Known experiments: {listed or 'none yet'}.",
                            field="experiment") from exc


def search(store: TrackingStore, experiments: Sequence[Experiment], *,
           filter: str | None = None, order_by: Sequence[str] | None = None,
           max_results: int = 100, page_token: str | None = None,
           view: str = "active") -> RunPage:
    """Runs of ``experiments`` matching ``filter``, sorted by ``order_by`` (newest first by
    default): the store's one query, so the database filters, sorts and pages."""
    if not experiments:
        return RunPage([], None)
    return store.search_runs([e.experiment_id for e in experiments], filter=filter,
                             order_by=list(order_by or []), max_results=max_results,
                             page_token=page_token, view=view)


def metric_columns(runs: Iterable[Run], limit: int = MAX_COLUMNS) -> list[str]:
    """Metric keys of ``runs`` for table columns: the most common first, then by name."""
    return _columns((k for r in runs for k in r.metrics), limit)


def param_columns(runs: Iterable[Run], limit: int = MAX_COLUMNS) -> list[str]:
    return _columns((k for r in runs for k in r.params), limit)


def _columns(keys: Iterable[str], limit: int) -> list[str]:
    counts: dict[str, int] = {}
    for key in keys:
        counts[key] = counts.get(key, 0) + 1
    return sorted(counts, key=lambda k: (-counts[k], k))[:limit]


def number(value: float) -> float | None:
    """A metric value for JSON: NaN and infinities (which JSON cannot carry) become None."""
    return value if math.isfinite(value) else None


def data_fingerprint(run: Run) -> str | None:
    return run.tags.get(DATA_FINGERPRINT_TAG)


def code_version(run: Run) -> str | None:
    return run.tags.get(CODE_VERSION_TAG)


def run_view(run: Run, *, experiment_name: str | None = None) -> dict[str, Any]:
    """A run as JSON (``--json``, the routes, the dashboard): latest metric values, params,
    tags, where it came from, and how long it took."""
    duration = (run.end_time - run.start_time) / 1000 if run.end_time is not None else None
    return {
        "run_id": run.run_id,
        "name": run.name,
        "experiment_id": run.experiment_id,
        "experiment": experiment_name,
        "status": run.status.value,
        "error": run.error,
        "parent_run_id": run.parent_run_id,
        "user": run.user_id,
        "start_time": run.start_time,
        "end_time": run.end_time,
        "duration_s": duration,
        "lifecycle_stage": run.lifecycle_stage.value,
        "artifact_uri": run.artifact_uri,
        "data_fingerprint": data_fingerprint(run),
        "code_version": code_version(run),
        "model_version": run.tags.get(MODEL_VERSION_TAG),
        "metrics": {k: number(m.value) for k, m in sorted(run.metrics.items())},
        "metric_steps": {k: m.step for k, m in sorted(run.metrics.items())},
        "params": dict(sorted(run.params.items())),
        "tags": {k: v for k, v in sorted(run.tags.items()) if k not in SYSTEM_TAGS},
    }


@dataclasses.dataclass(frozen=True, slots=True)
class DiffRow:
    """One line of a run diff: ``section`` (run, params, metrics, tags), the key, both
    values (None where a run has none) and whether they are the same."""

    section: Section
    key: str
    left: str | float | None
    right: str | float | None

    @property
    def same(self) -> bool:
        return self.left == self.right

    def to_dict(self) -> dict[str, Any]:
        return {"section": self.section, "key": self.key, "left": self.left,
                "right": self.right, "same": self.same}


@dataclasses.dataclass(frozen=True, slots=True)
class RunDiff:
    left: Run
    right: Run
    rows: list[DiffRow]

    @property
    def differences(self) -> list[DiffRow]:
        return [r for r in self.rows if not r.same]

    def to_dict(self) -> dict[str, Any]:
        return {"left": run_view(self.left), "right": run_view(self.right),
                "rows": [r.to_dict() for r in self.rows],
                "differences": len(self.differences)}


def diff_runs(left: Run, right: Run) -> RunDiff:
    """Two runs side by side: where they came from (experiment, status, data fingerprint,
    code version, registered version, duration), then every param, metric and tag either
    has. Metric values are compared as numbers (NaN equals NaN: both runs logged no value)."""
    def duration(run: Run) -> float | None:
        return (run.end_time - run.start_time) / 1000 if run.end_time is not None else None

    rows = [
        DiffRow("run", "name", left.name, right.name),
        DiffRow("run", "experiment_id", left.experiment_id, right.experiment_id),
        DiffRow("run", "status", left.status.value, right.status.value),
        DiffRow("run", "data_fingerprint", data_fingerprint(left), data_fingerprint(right)),
        DiffRow("run", "code_version", code_version(left), code_version(right)),
        DiffRow("run", "model_version", left.tags.get(MODEL_VERSION_TAG),
                right.tags.get(MODEL_VERSION_TAG)),
        DiffRow("run", "parent_run_id", left.parent_run_id, right.parent_run_id),
        DiffRow("run", "duration_s", duration(left), duration(right)),
    ]
    for key in sorted(set(left.params) | set(right.params)):
        rows.append(DiffRow("params", key, left.params.get(key), right.params.get(key)))
    for key in sorted(set(left.metrics) | set(right.metrics)):
        a, b = left.metrics.get(key), right.metrics.get(key)
        rows.append(DiffRow("metrics", key, number(a.value) if a else None,
                            number(b.value) if b else None))
    hidden = SYSTEM_TAGS | {DATA_FINGERPRINT_TAG, CODE_VERSION_TAG, MODEL_VERSION_TAG}
    for key in sorted((set(left.tags) | set(right.tags)) - hidden):
        rows.append(DiffRow("tags", key, left.tags.get(key), right.tags.get(key)))
    return RunDiff(left, right, rows)


SHORT_ID = 12
_HEX = frozenset("0123456789abcdef")


def resolve_run_id(store: TrackingStore, text: str, *, field: str = "run_id") -> str:
    """A run id from a whole id or a unique prefix of at least 6 characters (what the tables
    show), as git takes a commit's prefix. An unknown or ambiguous prefix is refused, naming
    the runs it could be."""
    if not isinstance(text, str) or not 6 <= len(text) <= 32 or not set(text) <= _HEX:
        raise InvalidInputError(
            f"{field} must be a run id (32 lowercase hex characters) or at least its first 6; "
            f"received {text[:80]!r}.", hint="`mlharbor runs list` shows the ids.",
            field=field)
    if len(text) == 32:
        return text
    experiments = select_experiments(store, [])
    page = store.search_runs([e.experiment_id for e in experiments], view="all",
                             filter=f"attributes.run_id LIKE '{text}%'", max_results=5)
    ids = [r.run_id for r in page.runs]
    if not ids:
        raise NotFoundError(f"No run id starts with {text!r}.", field=field)
    if len(ids) > 1:
        raise InvalidInputError(f"{text!r} is the start of several run ids ("
                                f"{', '.join(ids[:4])}{', ...' if len(ids) > 4 else ''}).",
                                hint="Give more characters.", field=field)
    return ids[0]
