"""One ``mlharbor train`` as a tracked run: a child run per candidate, and under a searched
candidate a child run per search point.

:class:`TrainingRecorder` is handed a way to start the parent run (a context manager giving a
:class:`mlharbor.core.runs.RunLogger`, in the experiment the caller chose) and told what
training does; it never sees the tracking store, so training depends on the protocol only
(DESIGN.md section 1):

* :meth:`~TrainingRecorder.begin`, once the data is read and checked and the candidate
  settings are built: the parent run starts (so a recipe, data or option that is refused
  before that records nothing); the recipe's settings as its params; data fingerprint, code
  version and recipe as tags; one child run per candidate (its estimator and params) and per
  search point of a searched one;
* :meth:`~TrainingRecorder.fold`, as each cross-validation fold is scored: ``fold.<metric>``,
  ``fold.fit_seconds`` and ``fold.score_seconds`` at step = fold number on that setting's run;
* :meth:`~TrainingRecorder.finish`, after the winner is judged: ``cv.<metric>`` (mean) and
  ``cv.<metric>.std`` on every setting, the holdout metrics on the winner's runs, the winning
  version's metrics and params on the parent, the evaluation report as artifacts
  (``report/report.json``, ``report/report.html``), the child runs ended;
* :meth:`~TrainingRecorder.registered`: the registered version named on the run (the version
  names the run in its lineage, ``tracking.run_id``, and its tag ``mlharbor.run_id``).

:meth:`~TrainingRecorder.close` ends the parent; a training that failed after it started
ends every open run ``FAILED`` with the error (``KILLED`` on an interrupt, or when the caller
says so: a cancelled retraining job).

Who records what: ``mlharbor train`` (:func:`mlharbor.pipelines.train_job.train`), a
retraining job's ``train`` step (:mod:`mlharbor.pipelines.retrain_runs`: tags naming the job,
endpoint and trigger) and ``mlharbor reproduce`` (kind ``reproduction``, tagged
:data:`REPRODUCES_TAG` with the version it re-ran; it registers nothing, so it names no
version of its own).
"""

from __future__ import annotations

import contextlib
import json
import math
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlharbor.core.runs import (
    CODE_VERSION_TAG,
    DATA_FINGERPRINT_TAG,
    MODEL_VERSION_TAG,
    RunLogger,
    RunStatus,
)

if TYPE_CHECKING:
    from mlharbor.pipelines.train_job import TrainingOutcome
    from mlharbor.training.recipe import Recipe

RUN_ID_TAG = "mlharbor.run_id"  # on the registered version: the run that produced it
REPRODUCES_TAG = "mlharbor.reproduces"  # on a reproduction's run: the version it re-ran
KIND_TAG = "mlharbor.kind"  # training, candidate, search_point, reproduction
MAX_PARAM_CHARS = 6000


def _text(value: Any) -> str:
    """A param value as MLflow stores it: text, cut to its limit."""
    text = value if isinstance(value, str) else json.dumps(value, default=str) \
        if isinstance(value, list | dict) else str(value)
    return text[:MAX_PARAM_CHARS]


def _finite(metrics: Mapping[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, int | float) and not isinstance(value, bool) \
                and math.isfinite(float(value)):
            out[key] = float(value)
    return out


class TrainingRecorder:
    """Records a training as a run and its child runs (see the module docstring)."""

    def __init__(self, start: Callable[[], contextlib.AbstractContextManager[RunLogger]],
                 *, tags: Mapping[str, str] | None = None) -> None:
        """``start`` starts the parent run when :meth:`begin` is called; ``tags`` are set on
        it after the recorder's own (so a caller may say ``mlharbor.kind: reproduction``)."""
        self._start = start
        self._tags = dict(tags or {})
        self._stack = contextlib.ExitStack()
        self._run: RunLogger | None = None
        self._candidates: dict[str, RunLogger] = {}
        self._settings: dict[str, RunLogger] = {}  # setting key -> its run
        self._setting_of: dict[str, Any] = {}      # setting key -> CandidateSetting
        self._folds: dict[str, list[dict[str, float]]] = {}  # setting key -> fold metrics
        self._fit_seconds: dict[str, float] = {}
        self._ended = False

    @property
    def run(self) -> RunLogger:
        if self._run is None:
            raise RuntimeError("the run starts in TrainingRecorder.begin")
        return self._run

    @property
    def run_id(self) -> str | None:
        """The parent run's id, once it started."""
        return self._run.run_id if self._run is not None else None

    def begin(self, recipe: Recipe, dataset_snapshot: Mapping[str, Any],
              settings: Sequence[Any], primary: str, code_version: str | None) -> None:
        """The recipe, the data and one run per candidate and search point; ``settings`` are
        the assessment's ``CandidateSetting``s (key, candidate, estimator, params)."""
        self._run = self._stack.enter_context(self._start())
        validation = recipe.validation
        self.run.log_params({
            "recipe": recipe.source, "target": recipe.data.target,
            "primary_metric": primary, "seed": validation.seed,
            "strategy": validation.strategy, "folds": validation.folds,
            "holdout": validation.holdout,
            "candidates": ",".join(dict.fromkeys(s.candidate for s in settings)),
            "gates": _text(list(recipe.gates)),
        })
        tags: dict[str, object] = {
            DATA_FINGERPRINT_TAG: dataset_snapshot.get("fingerprint") or "",
            "mlharbor.dataset.uri": str(dataset_snapshot.get("uri") or "")[:8000],
            "mlharbor.dataset.rows": dataset_snapshot.get("rows", ""),
            "mlflow.source.name": recipe.source, KIND_TAG: "training",
        }
        if code_version:
            tags[CODE_VERSION_TAG] = code_version
        self.run.set_tags({**tags, **self._tags})
        groups: dict[str, list[Any]] = {}
        for setting in settings:
            groups.setdefault(setting.candidate, []).append(setting)
        for name, group in groups.items():
            child = self.run.child(name)
            self._candidates[name] = child
            child.set_tags({"mlharbor.kind": "candidate", "mlharbor.candidate": name,
                            "mlharbor.estimator": group[0].estimator,
                            "mlharbor.settings_tried": len(group),
                            DATA_FINGERPRINT_TAG: tags[DATA_FINGERPRINT_TAG],
                            **({CODE_VERSION_TAG: code_version} if code_version else {})})
            child.log_params({"estimator": group[0].estimator})
            for setting in group:
                self._setting_of[setting.key] = setting
                if len(group) == 1:
                    self._settings[setting.key] = child
                    child.log_params({k: _text(v) for k, v in sorted(setting.params.items())})
                    continue
                point = child.child(f"{name} {_point_name(setting.params, group)}")
                point.set_tags({"mlharbor.kind": "search_point", "mlharbor.candidate": name,
                                "mlharbor.setting": setting.key,
                                DATA_FINGERPRINT_TAG: tags[DATA_FINGERPRINT_TAG],
                                **({CODE_VERSION_TAG: code_version} if code_version else {})})
                point.log_params({"estimator": setting.estimator,
                                  **{k: _text(v) for k, v in sorted(setting.params.items())}})
                self._settings[setting.key] = point

    def fold(self, key: str, scores: Any) -> None:
        """One scored fold (``FoldScores``) of setting ``key``; the baseline is not a run."""
        run = self._settings.get(key)
        if run is None:
            return
        metrics = _finite(scores.metrics)
        self._folds.setdefault(key, []).append(metrics)
        values = {f"fold.{k}": v for k, v in metrics.items()}
        values["fold.fit_seconds"] = float(scores.fit_seconds)
        values["fold.score_seconds"] = float(scores.score_seconds)
        self._fit_seconds[key] = self._fit_seconds.get(key, 0.0) + float(scores.fit_seconds)
        run.log_metrics(values, step=int(scores.fold))

    def finish(self, outcome: TrainingOutcome) -> None:
        """Summaries on every run, the report as artifacts; the child runs end FINISHED."""
        report = outcome.report
        winner = outcome.winner
        for key, folds in self._folds.items():  # every setting: its own CV summary
            self._settings[key].log_metrics({**_summary(folds),
                                             "fit_seconds": self._fit_seconds[key]})
        for entry in report.get("candidates") or []:
            name = str(entry.get("name"))
            found = self._candidates.get(name)
            if found is None:
                continue
            run = found
            summary: dict[str, float] = {}
            if int(entry.get("settings_tried") or 1) > 1:  # the best point's CV, on the parent
                cv = entry.get("cv") or {}
                summary.update({f"cv.{k}": v for k, v in _finite(cv.get("mean") or {}).items()})
                summary.update({f"cv.{k}.std": v
                                for k, v in _finite(cv.get("std") or {}).items()})
                run.log_params({f"best.{k}": _text(v) for k, v in sorted(
                    (entry.get("best_params") or {}).items())})
            if name == winner:
                summary.update({k: v for k, v in _finite(  # as the version records them
                    (report.get("holdout") or {}).get("metrics") or {}).items()})
            if summary:
                run.log_metrics(summary)
            run.set_tags({"mlharbor.winner": str(name == winner).lower()})
        self.run.log_metrics({**_finite(outcome.metrics),
                              "training_seconds": float(outcome.seconds)})
        self.run.log_params({k: _text(v) for k, v in outcome.params.items()
                             if k not in ("candidate",)} | {"winner": winner})
        self.run.set_tags({"mlharbor.winner": winner,
                           "mlharbor.gates_passed": str(outcome.passed).lower()})
        self._log_report(report)
        self._end_children(RunStatus.FINISHED, None)

    def registered(self, ref: str) -> None:
        self.run.set_tags({MODEL_VERSION_TAG: ref})

    def close(self, error: BaseException | None = None, *, killed: bool = False,
              reason: str | None = None) -> None:
        """End the runs still open: FINISHED, or with ``error`` FAILED (KILLED on an
        interrupt, or with ``killed``: the caller stopped it, as a cancelled job) with the
        error (or ``reason``, when given) recorded. Nothing to do when the run never
        started."""
        if error is None:
            self._end_children(RunStatus.FINISHED, None)
            self._stack.close()
            return
        text = reason or f"{type(error).__name__}: {error}"
        if not killed:
            status = (RunStatus.KILLED if isinstance(error, KeyboardInterrupt)
                      else RunStatus.FAILED)
            try:
                self._end_children(status, text)
            finally:  # the parent's context manager ends it, the same way
                self._stack.__exit__(type(error), error, error.__traceback__)
            return
        try:
            self._end_children(RunStatus.KILLED, text)
            if self._run is not None:
                self._run.end(RunStatus.KILLED, text)
        finally:
            self._stack.close()  # the parent already ended: leaving it ends nothing more

    def _log_report(self, report: dict[str, Any]) -> None:
        from mlharbor.evaluation.html import render_html

        with tempfile.TemporaryDirectory(prefix="mlharbor-report-") as folder:
            root = Path(folder)
            (root / "report.json").write_text(json.dumps(report, indent=1, default=str),
                                              encoding="utf-8")
            (root / "report.html").write_text(render_html(report), encoding="utf-8")
            self.run.log_artifact(str(root / "report.json"), "report")
            self.run.log_artifact(str(root / "report.html"), "report")

    def _end_children(self, status: RunStatus, error: str | None) -> None:
        if self._ended:
            return
        self._ended = True
        points = [r for k, r in self._settings.items()
                  if r not in self._candidates.values()]
        for run in [*points, *self._candidates.values()]:
            run.end(status, error)


def version_links(run_id: str | None) -> tuple[dict[str, str], dict[str, Any]]:
    """The tag and lineage entry by which a registered version names the run that produced
    it (nothing without a run): what ``mlharbor train`` and a retraining job both record."""
    if run_id is None:
        return {}, {}
    return {RUN_ID_TAG: run_id}, {"tracking": {"run_id": run_id, "source": f"runs:/{run_id}"}}


def _summary(folds: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """``cv.<metric>`` (mean over the folds) and ``cv.<metric>.std`` (sample standard
    deviation, as the evaluation report computes it) of every metric the folds have."""
    out: dict[str, float] = {}
    for key in sorted({k for fold in folds for k in fold}):
        values = [fold[key] for fold in folds if key in fold]
        mean = sum(values) / len(values)
        out[f"cv.{key}"] = mean
        out[f"cv.{key}.std"] = math.sqrt(sum((v - mean) ** 2 for v in values)
                                         / (len(values) - 1)) if len(values) > 1 else 0.0
    return out


def _point_name(params: Mapping[str, Any], group: Sequence[Any]) -> str:
    """The params that vary within the candidate's search: ``max_depth=6``."""
    varying = sorted(k for k in params if len({repr(s.params.get(k)) for s in group}) > 1)
    text = ", ".join(f"{k}={params[k]}" for k in varying) or "default"
    return text[:200]
