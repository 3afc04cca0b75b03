"""The demo's narrator: one printed line per step of the closed loop, as the job store has it.

``mlharbor demo`` runs the control plane (job runner and trigger loop) in its own process;
:class:`LoopWatcher` polls the job store for the demo endpoint's jobs and prints, once each,
what a newcomer wants to see happen::

    drift detected in 2 of 4 30s windows -> retraining job 3f2a... started: http://.../ui#/jobs/3f2a...
    snapshot: 5412 rows (5000 champion + 412 labelled production rows; fingerprint sha256:...)
    challenger churn:2 validated (f1 0.672 vs champion 0.664 vs baseline 0.000)
    canary 25%: guards passed (challenger 31 requests, accuracy 0.742 vs 0.690 on 24 labels)
    promoted churn:2 to @champion (job 3f2a...; demo traffic: 903 requests, 0 failed)

It only reads stored jobs (:func:`describe` is a pure function of a job and what was already
said), so nothing is printed from inside the pipelines and the lines say what really happened.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlharbor.pipelines.jobs import Job, JobStore

log = logging.getLogger("mlharbor.demo")

_DRIFT = re.compile(r"drift in (\d+) of the last (\d+) (\S+) windows")
#: The rollout's decision reasons start with the step ("canary step 1/2 (25%): ..."), which
#: the printed line already names.
_STEP_PREFIX = re.compile(r"^canary step \d+/\d+ \(\d+%\):\s*")


def describe(job: Job, said: set[str], *, ui: str | None = None,
             traffic: Callable[[], str] | None = None) -> list[str]:
    """The lines about ``job`` not yet in ``said`` (keys are added to it), in loop order.

    ``ui`` is the dashboard's base URL (``http://host:port/ui``); ``traffic`` tells the demo
    traffic's counts for the final line.
    """
    from mlharbor.pipelines.jobs import JobState, StepState
    from mlharbor.pipelines.jobview import job_outcome

    lines: list[str] = []

    def say(key: str, text: str) -> None:
        if key not in said:
            said.add(key)
            lines.append(text)

    link = f": {ui}#/jobs/{job.id}" if ui else ""
    say("started", f"{_cause(job)} -> retraining job {job.id} started{link}")
    for step in job.steps:
        if step.state is StepState.SUCCEEDED and isinstance(step.result, Mapping):
            text = _step_line(step.name, step.result)
            if text:
                say(f"step:{step.name}", text)
        elif step.state is StepState.WAITING:
            say(f"waiting:{step.name}", f"job {job.id} waits at {step.name}: "
                f"approve with `.venv/bin/mlharbor jobs approve {job.id}`")
    if job.active:
        return lines
    outcome = job_outcome(job)
    counts = f"; demo traffic: {traffic()}" if traffic else ""
    if outcome == "promoted":
        promote = _result(job, "promote")
        decision = promote.get("decision") or {}
        weights = decision.get("weights") or {}
        ref = next(iter(weights), None) or _result(job, "validate").get("challenger", "?")
        alias = (_result(job, "snapshot").get("champion_alias")) or "champion"
        say("end", f"promoted {ref} to @{alias} (job {job.id}{counts}){link}")
    elif outcome == "rolled_back":
        say("end", f"rolled back: {_rollback_reason(job)} (job {job.id}{counts}){link}")
    elif outcome == "rejected":
        say("end", f"challenger rejected at validation: {_failed_error(job)} "
                   f"(job {job.id}{counts}){link}")
    elif job.state is JobState.SUCCEEDED:
        say("end", f"job {job.id} succeeded{counts}{link}")
    else:
        say("end", f"job {job.id} {job.state.value}: {job.error or _failed_error(job)}"
                   f"{counts}{link}")
    return lines


def _cause(job: Job) -> str:
    reason = str(job.request.get("reason") or "")
    trigger = str(job.request.get("trigger") or "manual")
    found = _DRIFT.search(reason)
    if found:
        return f"drift detected in {found[1]} of {found[2]} {found[3]} windows"
    return f"{trigger} trigger ({reason})" if reason else f"{trigger} request"


def _result(job: Job, name: str) -> Mapping[str, Any]:
    for step in job.steps:
        if step.name == name and isinstance(step.result, Mapping):
            return step.result
    return {}


def _step_line(name: str, result: Mapping[str, Any]) -> str | None:
    if name == "snapshot":
        snap = result.get("snapshot") or {}
        parts = snap.get("parts") or []
        kinds = {"champion_data": "champion", "production": "labelled production",
                 "dataset_uri": "dataset"}
        split = " + ".join(f"{p.get('rows')} {kinds.get(str(p.get('kind')), p.get('kind'))}"
                           for p in parts if isinstance(p, Mapping))
        split = f"{split} rows; " if len(parts) > 1 else ""
        fingerprint = str(snap.get("fingerprint"))[:19]  # sha256: and 12 hex digits
        return f"snapshot: {snap.get('rows')} rows ({split}fingerprint {fingerprint})"
    if name == "train":
        return f"trained {result.get('version')} (winner: {result.get('winner')})"
    if name == "validate":
        metric = str(result.get("primary_metric") or "")

        def value(block: Any) -> str:
            number = block.get(metric) if isinstance(block, Mapping) else None
            return f"{number:.3f}" if isinstance(number, int | float) else "n/a"

        return (f"challenger {result.get('challenger')} validated ({metric} "
                f"{value(result.get('metrics'))} vs champion {value(result.get('champion'))} "
                f"vs baseline {value(result.get('baseline'))})")
    if name.startswith("canary-"):
        decision = result.get("decision") or {}
        metrics = decision.get("guard_metrics") or {}
        reason = _STEP_PREFIX.sub("", str(decision.get("reason") or "held"))
        said = f"canary {name.removeprefix('canary-')}%: {reason}"
        requests = metrics.get("challenger_requests")
        if isinstance(requests, int | float):
            said += f" (challenger {int(requests)} requests"
            new, old = metrics.get("challenger_accuracy"), metrics.get("champion_accuracy")
            if isinstance(new, int | float) and isinstance(old, int | float):
                said += (f", live accuracy {new:.3f} vs {old:.3f} on "
                         f"{int(metrics.get('challenger_labelled', 0))} labels")
            said += ")"
        return said
    return None


def _rollback_reason(job: Job) -> str:
    for step in job.steps:
        decision = step.result.get("decision") if isinstance(step.result, Mapping) else None
        if isinstance(decision, Mapping) and decision.get("verdict") == "rollback":
            return str(decision.get("reason") or step.error or "no reason recorded")
    return _failed_error(job)


def _failed_error(job: Job) -> str:
    for step in job.steps:
        if step.error:
            return step.error
    return job.error or "no reason recorded"


class LoopWatcher:
    """Polls the job store every ``interval_s`` and prints the new lines of the endpoint's jobs
    created after it started (jobs of an earlier demo run in the same home are not retold)."""

    def __init__(self, jobs: JobStore, endpoint: str, print_line: Callable[[str], None], *,
                 ui: str | None = None, traffic: Callable[[], str] | None = None,
                 interval_s: float = 1.0) -> None:
        self.jobs = jobs
        self.endpoint = endpoint
        self.print_line = print_line
        self.ui = ui
        self.traffic = traffic
        self.interval_s = interval_s
        self._said: dict[str, set[str]] = {}
        self._old: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-loop-watcher",
                                        daemon=True)

    def start(self) -> LoopWatcher:
        from mlharbor.pipelines.jobs import JobState

        # Finished jobs of an earlier run are history; an unfinished one is resumed and told.
        self._old = {job.id for job in self.jobs.list_jobs(endpoint=self.endpoint, limit=100)
                     if job.state not in (JobState.QUEUED, JobState.RUNNING,
                                          JobState.WAITING)}
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def poll(self) -> list[str]:
        """One look at the job store: the new lines, printed."""
        lines: list[str] = []
        for job in reversed(self.jobs.list_jobs(endpoint=self.endpoint, limit=20)):
            if job.id in self._old:
                continue
            lines += describe(job, self._said.setdefault(job.id, set()), ui=self.ui,
                              traffic=self.traffic)
        for line in lines:
            self.print_line(line)
        return lines

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except Exception as exc:  # the narrator never stops the demo
                log.warning("demo: reading the jobs failed: %s", exc)
            self._stop.wait(self.interval_s)
