"""A retraining job's training as a tracked run, as ``mlharbor train``'s is (issue 16).

The ``train`` step of a ``retrain`` job (:mod:`mlharbor.pipelines.retrain`) records its
training through :class:`~mlharbor.pipelines.train_runs.TrainingRecorder`: a parent run in
the experiment named after the model (the recipe's name, as ``mlharbor train`` uses), a child
per candidate and search point, the report as artifacts; the challenger it registers names
the run (tag ``mlharbor.run_id``, lineage ``tracking``) and the run names the challenger
(``mlharbor.model_version``). :data:`JOB_RUN_TAGS` say which job, endpoint and trigger
started it.

**Crash safety.** The step notes the run id as the run starts (progress key ``run``). A re-run
of the step (its runner died) settles what the earlier attempt left, before training again:

* the earlier attempt registered its version (the step reuses it): that version's run gets
  the version tag it may have missed and, if it was left RUNNING, ends FINISHED (its training
  did finish: the version exists);
* it did not: its run, still RUNNING, ends KILLED with the reason, and so do its open child
  runs; the re-run trains under a new run.

A run the earlier attempt already ended (FAILED with its error, say) keeps that record, and so
does one deleted meanwhile (the store changes no deleted run).
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING

from mlharbor.core.errors import NotFoundError
from mlharbor.core.runs import MODEL_VERSION_TAG, LifecycleStage, RunStatus

if TYPE_CHECKING:
    from mlharbor.core.loop import RetrainRequest
    from mlharbor.core.records import ModelVersion
    from mlharbor.core.runs import Run, RunLogger
    from mlharbor.pipelines.jobs import StepContext
    from mlharbor.pipelines.train_runs import TrainingRecorder
    from mlharbor.tracking.fluent import Tracker

log = logging.getLogger(__name__)

#: Tags on a retraining run: the job (as on its challenger version), the endpoint whose policy
#: it ran under, what triggered it and why, who asked, and the version it retrained.
JOB_RUN_TAGS = ("mlharbor.job", "mlharbor.endpoint", "mlharbor.trigger", "mlharbor.reason",
                "mlharbor.requested_by", "mlharbor.base_version")
RUN_NOTE = "run"  # the step's progress key holding the run id
MAX_REASON_CHARS = 2000


def run_tags(job_id: str, request: RetrainRequest, base: ModelVersion) -> dict[str, str]:
    """The tags naming where a retraining run came from (:data:`JOB_RUN_TAGS`)."""
    values = (job_id, request.endpoint, request.trigger.value,
              (request.reason or "")[:MAX_REASON_CHARS], request.requested_by or "", base.ref)
    return dict(zip(JOB_RUN_TAGS, values, strict=True))


class JobRuns:
    """Starts and settles the runs of a retrain job's ``train`` step on one tracker."""

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker

    def recorder(self, ctx: StepContext, request: RetrainRequest,
                 base: ModelVersion) -> TrainingRecorder:
        """A recorder whose run (started once the data is checked) is noted on the step."""
        from mlharbor.pipelines.train_runs import TrainingRecorder

        tags = run_tags(ctx.job.id, request, base)

        def start() -> contextlib.AbstractContextManager[RunLogger]:
            run = self.tracker.start_run(experiment=base.name, run_name=f"retrain {base.name}",
                                         tags=tags)
            try:
                ctx.note(**{RUN_NOTE: run.run_id})  # a re-run settles it (module docstring)
            except BaseException as exc:
                run.__exit__(type(exc), exc, exc.__traceback__)
                raise
            return run

        return TrainingRecorder(start)

    def settle(self, ctx: StepContext, version: ModelVersion | None) -> None:
        """Close what an earlier attempt of the step left open (see the module docstring)."""
        from mlharbor.pipelines.train_runs import RUN_ID_TAG

        noted = ctx.progress.get(RUN_NOTE)
        produced = version.tags.get(RUN_ID_TAG) if version is not None else None
        if version is not None and produced:
            run = self._run(produced)
            if run is not None:
                if run.tags.get(MODEL_VERSION_TAG) != version.ref:
                    self.tracker.store.log_batch(run.run_id,
                                                 tags={MODEL_VERSION_TAG: version.ref})
                if not run.ended:
                    self._end(run, RunStatus.FINISHED, None)
        if isinstance(noted, str) and noted != produced:
            run = self._run(noted)
            if run is not None and not run.ended:
                self._end(run, RunStatus.KILLED,
                          f"The runner of job {ctx.job.id} stopped while this run trained; "
                          "the job's train step ran again under a new run.")

    def _run(self, run_id: str) -> Run | None:
        """The run to settle; None when it is gone or deleted (the store refuses to change a
        deleted run, and refusing here would fail every re-run of the step)."""
        try:
            run = self.tracker.store.get_run(run_id)
        except NotFoundError:  # deleted since: nothing left to settle
            log.info("run %s of a retraining job is gone; nothing to settle", run_id)
            return None
        if run.lifecycle_stage is LifecycleStage.DELETED:
            log.info("run %s of a retraining job was deleted; left as it is", run_id)
            return None
        return run

    def _end(self, run: Run, status: RunStatus, error: str | None) -> None:
        """End ``run`` and its open descendants (search points first) with ``status``."""
        store = self.tracker.store
        for child in store.child_runs(run.run_id):
            if not child.ended:
                self._end(child, status, error)
        store.update_run(run.run_id, status=status, error=error)


__all__ = ["JOB_RUN_TAGS", "JobRuns", "run_tags"]
