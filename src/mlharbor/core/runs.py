"""Experiment tracking records: experiments, runs, parameters, metric points, tags, artifacts.

What the tracking store (:mod:`mlharbor.tracking`) hands to its readers (the MLflow REST
adapter, the CLI, the dashboard) and what training hands to tracking through
:class:`RunLogger`. Times are milliseconds since the Unix epoch, as MLflow counts them, so a
run logged through either door reads back the same.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping, Sequence
from typing import Protocol

#: Tags that say where a run came from: written by ``mlharbor train`` (and, for the code
#: version, by the MLflow client in a git checkout), read by the CLI, routes and dashboard.
DATA_FINGERPRINT_TAG = "mlharbor.dataset.fingerprint"
CODE_VERSION_TAG = "mlflow.source.git.commit"
MODEL_VERSION_TAG = "mlharbor.model_version"  # the registered version the run produced


class RunStatus(enum.StrEnum):
    """A run's lifecycle, with MLflow's names: RUNNING until it ends as one of the others."""

    RUNNING = "RUNNING"
    SCHEDULED = "SCHEDULED"
    FINISHED = "FINISHED"
    FAILED = "FAILED"
    KILLED = "KILLED"


class LifecycleStage(enum.StrEnum):
    """Deleted experiments and runs are kept (``deleted``) until restored."""

    ACTIVE = "active"
    DELETED = "deleted"


@dataclasses.dataclass(frozen=True, slots=True)
class Experiment:
    experiment_id: str
    name: str
    artifact_location: str
    lifecycle_stage: LifecycleStage
    tags: dict[str, str]
    creation_time: int
    last_update_time: int


@dataclasses.dataclass(frozen=True, slots=True)
class MetricPoint:
    """One value of a metric series at a step and a time."""

    key: str
    value: float
    timestamp: int
    step: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class RunArtifact:
    """One file of a run (or a logged model): its path under the run's root, digest, size."""

    path: str
    sha256: str
    size: int


@dataclasses.dataclass(frozen=True, slots=True)
class Run:
    """A run with its latest metric values, parameters and tags."""

    run_id: str
    experiment_id: str
    name: str
    status: RunStatus
    start_time: int
    end_time: int | None
    lifecycle_stage: LifecycleStage
    user_id: str
    artifact_uri: str
    parent_run_id: str | None
    metrics: dict[str, MetricPoint]
    params: dict[str, str]
    tags: dict[str, str]
    error: str | None = None

    @property
    def ended(self) -> bool:
        return self.status is not RunStatus.RUNNING and self.status is not RunStatus.SCHEDULED


@dataclasses.dataclass(frozen=True, slots=True)
class LoggedModel:
    """A model logged by a run (MLflow 3's ``LoggedModel``): files live under its own root."""

    model_id: str
    experiment_id: str
    name: str
    source_run_id: str | None
    artifact_location: str
    status: str
    creation_time: int
    last_updated_time: int
    tags: dict[str, str]
    params: dict[str, str]
    model_type: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class DatasetInput:
    """A dataset a run used, as MLflow's ``log_input`` names it: its identity, not its rows.

    ``tags`` carry MLflow's ``mlflow.data.context`` (``training``, ``eval`` ...)."""

    name: str
    digest: str
    source_type: str
    source: str
    schema: str = ""
    profile: str = ""
    tags: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, slots=True)
class ModelOutput:
    """A logged model a run produced, and the step it was logged at (MLflow 3 registers the
    one of the latest step when a run logged several under one name)."""

    model_id: str
    step: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class RunIO:
    """What a run read and produced: datasets and logged models in, logged models out."""

    datasets: list[DatasetInput]
    model_inputs: list[str]
    model_outputs: list[ModelOutput]


@dataclasses.dataclass(frozen=True, slots=True)
class RunPage:
    """A page of runs and the token for the next (``None`` on the last page)."""

    runs: list[Run]
    next_page_token: str | None


class RunLogger(Protocol):
    """What a training loop needs to record a run: training depends on this, not on the store.

    :class:`mlharbor.tracking.fluent.ActiveRun` implements it; a child run is started with
    :meth:`child`.
    """

    @property
    def run_id(self) -> str: ...

    def log_params(self, params: Mapping[str, object]) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], *, step: int = 0,
                    timestamp: int | None = None) -> None: ...

    def set_tags(self, tags: Mapping[str, object]) -> None: ...

    def log_artifact(self, path: str, artifact_path: str | None = None) -> None: ...

    def child(self, name: str) -> RunLogger: ...

    def end(self, status: RunStatus = RunStatus.FINISHED, error: str | None = None) -> None: ...


#: What callers may pass where a run's statuses are filtered.
RUN_STATUSES: Sequence[str] = tuple(s.value for s in RunStatus)
