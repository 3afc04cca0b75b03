"""Train from a recipe, evaluate, judge the gates and register the winner.

This module sits above data, training, evaluation and the registry and glues them:

1. ``prepare`` checks the recipe against code (estimators, params, metrics, gates) before any
   data is read, so a bad recipe fails fast and nothing is registered;
2. ``run_training`` loads and checks the data, scores every candidate (and each search setting),
   the naive baseline and the champion on the same folds and holdout, fits the winner as ONE
   Pipeline over the raw input columns and judges the gates — no registry involved;
3. ``train`` does 2 with the registry's champion, registers the winner (``failed`` with the
   reason when a gate fails) and moves the recipe's alias only when every gate passes.

``reproduce`` re-runs a stored version's recipe; ``evaluate`` (in
:mod:`mlharbor.pipelines.evaluate_job`, for any registered version) scores one on new data.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlharbor.core.errors import ConfigError, InvalidInputError, MlharborError, NotFoundError
from mlharbor.pipelines.evaluate_job import VersionEvaluation as VersionEvaluation  # re-export
from mlharbor.pipelines.evaluate_job import evaluate as evaluate  # re-export
from mlharbor.training.recipe import Recipe

if TYPE_CHECKING:
    import pandas as pd

    from mlharbor.compute import Engine
    from mlharbor.core.runs import RunLogger
    from mlharbor.data.checks import CheckReport
    from mlharbor.data.loading import Dataset
    from mlharbor.data.schema import Schema
    from mlharbor.evaluation.gates import Gate, GateVerdict
    from mlharbor.pipelines.train_runs import TrainingRecorder
    from mlharbor.registry.service import Registry
    from mlharbor.settings import Settings


class Progress:
    """Progress sink; the CLI subclasses it with Rich bars. Tasks: data, search, folds, fit."""

    def start(self, task: str, description: str, total: int | None = None) -> None:
        """Begin ``task``."""

    def advance(self, task: str, amount: int = 1) -> None:
        """Advance ``task``."""

    def finish(self, task: str) -> None:
        """End ``task``."""

    def note(self, message: str) -> None:
        """A one-line message (a data-check warning, a skipped comparison)."""


@dataclasses.dataclass(frozen=True)
class PlannedCandidate:
    index: int
    name: str
    estimator_path: str
    cls: type[Any]
    settings: list[dict[str, Any]]  # params of each setting to try (base params merged)


@dataclasses.dataclass(frozen=True)
class Plan:
    recipe: Recipe
    candidates: list[PlannedCandidate]
    gates: list[Gate]
    slices: list[Any] = dataclasses.field(default_factory=list)  # evaluation SliceSpecs


@dataclasses.dataclass
class TrainingOutcome:
    """Everything a run produced, before anything is registered."""

    recipe: Recipe
    dataset: Dataset
    schema: Schema
    checks: CheckReport
    model: Any
    winner: str
    report: dict[str, Any]
    verdicts: list[GateVerdict]
    metrics: dict[str, float]
    params: dict[str, str]
    profile: dict[str, Any]
    sample_input: pd.DataFrame
    training_data: pd.DataFrame
    seconds: float
    # The recipe folder's git commit, read once when training started: the run and the
    # version record the same one even if HEAD moves meanwhile; None outside a repository.
    code_version: str | None = None

    @property
    def passed(self) -> bool:
        return all(v.passed for v in self.verdicts)

    @property
    def failed_gates(self) -> list[GateVerdict]:
        return [v for v in self.verdicts if not v.passed]


def prepare(recipe: Recipe, task: str | None = None) -> Plan:
    """Check what can be checked without data; errors name the recipe line."""
    from mlharbor.evaluation.gates import parse_gate
    from mlharbor.evaluation.metrics import check_metric
    from mlharbor.training.candidates import expand_search, make_estimator, resolve_estimator

    task = task or recipe.data.task
    seed = recipe.validation.seed
    planned = []
    for i, cand in enumerate(recipe.candidates):
        try:
            cls = resolve_estimator(cand.estimator)
        except ConfigError as exc:
            raise _at(recipe, ("candidates", i, "estimator"), exc) from exc
        try:
            make_estimator(cls, cand.params, seed)
        except ConfigError as exc:
            raise _at(recipe, ("candidates", i, "params"), exc) from exc
        settings = [dict(cand.params)]
        if cand.search is not None:
            try:
                found = expand_search(cls, cand.search.method, cand.search.space,
                                      cand.search.n_iter, seed)
            except ConfigError as exc:
                raise _at(recipe, ("candidates", i, "search", "space"), exc) from exc
            settings = [{**cand.params, **s} for s in found]
        if task is not None:
            _check_estimator_task(recipe, i, cls, task)
        planned.append(PlannedCandidate(i, cand.label, cand.estimator, cls, settings))
    names = [p.name for p in planned]
    if len(set(names)) != len(names):
        raise recipe.error(("candidates",), f"candidate names must be unique; got {names}",
                           hint="Give each candidate a distinct `name`.")
    gates = []
    for i, text in enumerate(recipe.gates):
        try:
            gates.append(parse_gate(text, task or "classification") if task else
                         _parse_any_task(text))
        except ConfigError as exc:
            raise _at(recipe, ("gates", i), exc) from exc
    if recipe.metrics.primary and task:
        try:
            check_metric(recipe.metrics.primary, task)
        except ConfigError as exc:
            raise _at(recipe, ("metrics", "primary"), exc) from exc
    return Plan(recipe, planned, gates, _slices(recipe, gates))


def _slices(recipe: Recipe, gates: list[Gate]) -> list[Any]:
    """The recipe's slices, filters parsed; every slice gate names one of them."""
    from mlharbor.evaluation.slices import check_slice_gates, parse_slices

    specs = []
    for i, entry in enumerate(recipe.slices or []):
        try:
            specs += parse_slices([entry.model_dump(exclude_none=True)])
        except ConfigError as exc:
            raise _at(recipe, ("slices", i, "where"), exc) from exc
    for i, gate in enumerate(gates):
        try:
            check_slice_gates([gate], specs)
        except ConfigError as exc:
            raise _at(recipe, ("gates", i), exc) from exc
    return specs


def _parse_any_task(text: str) -> Gate:
    from mlharbor.evaluation.gates import parse_gate

    try:
        return parse_gate(text, "classification")
    except ConfigError:
        return parse_gate(text, "regression")


def _check_estimator_task(recipe: Recipe, index: int, cls: type[Any], task: str) -> None:
    from sklearn.base import is_classifier, is_regressor

    probe = cls()
    wrong = (task == "classification" and is_regressor(probe)) or (
        task == "regression" and is_classifier(probe))
    if wrong:
        raise recipe.error(
            ("candidates", index, "estimator"),
            f"{cls.__name__} does not fit a {task} task",
            hint=f"Pick a {'classifier' if task == 'classification' else 'regressor'}, or set "
                 "data.task.",
        )


def _at(recipe: Recipe, loc: tuple[str | int, ...], exc: MlharborError) -> ConfigError:
    return ConfigError(f"{recipe.where(*loc)}: {exc.message}", hint=exc.hint,
                       field=".".join(str(p) for p in loc))


def run_training(
    recipe: Recipe,
    *,
    champion: Any | None = None,
    champion_ref: str | None = None,
    champion_note: str | None = None,
    champion_error: str | None = None,
    n_jobs: int = -1,
    s3_endpoint_url: str | None = None,
    s3_region: str = "us-east-1",
    progress: Progress | None = None,
    trusted_types: Collection[str] | None = None,
    dataset: Dataset | None = None,
    backend: str | None = None,
    scheduler: str | None = None,
    recorder: TrainingRecorder | None = None,
) -> TrainingOutcome:
    """Load, check, cross-validate, pick, fit and judge; see the module docstring.

    With ``trusted_types`` (the registry's skops policy), a pipeline that would need a type
    outside it is refused before any fitting, instead of failing at registration. With
    ``dataset`` (a retraining job's snapshot), those rows are used instead of the recipe's
    ``data`` source; the recipe still names the target and the columns. ``backend`` and
    ``scheduler`` choose where the CV and search fits run (see :func:`choose_backend`); a Dask
    scheduler is connected to before any data is read, so an unreachable one fails fast.
    """
    from mlharbor.training.backend import choose_backend, training_engine

    prepare(recipe)
    chosen, address = choose_backend(recipe, backend, scheduler)
    note = progress.note if progress is not None else None
    with training_engine(chosen, address, note) as engine:
        return _run_training(
            recipe, champion=champion, champion_ref=champion_ref, champion_note=champion_note,
            champion_error=champion_error, n_jobs=n_jobs, s3_endpoint_url=s3_endpoint_url,
            s3_region=s3_region, progress=progress, trusted_types=trusted_types,
            dataset=dataset, engine=engine, recorder=recorder)


def _run_training(
    recipe: Recipe,
    *,
    champion: Any | None,
    champion_ref: str | None,
    champion_note: str | None,
    champion_error: str | None,
    n_jobs: int,
    s3_endpoint_url: str | None,
    s3_region: str,
    progress: Progress | None,
    trusted_types: Collection[str] | None,
    dataset: Dataset | None,
    engine: Engine | None,
    recorder: TrainingRecorder | None = None,
) -> TrainingOutcome:
    """:func:`run_training`'s work, with the engine for the fits open (None: local joblib)."""
    import numpy as np

    from mlharbor.core.warning_tally import CaughtWarning, WarningTally, catching
    from mlharbor.data.profile import build_profile
    from mlharbor.data.splits import plan_splits
    from mlharbor.evaluation.assessment import (
        assess,
        model_importances,
        permutation_importances,
    )
    from mlharbor.evaluation.metrics import Target, default_primary
    from mlharbor.training.binding import bind_schema, check_data, load_data
    from mlharbor.training.preparation import check_trusted

    progress = progress or Progress()
    tally, caught = WarningTally(), list[CaughtWarning]()  # library warnings, said once each
    started = time.perf_counter()
    progress.start("data", "Loading data", None)
    if dataset is None:
        dataset = load_data(recipe, s3_endpoint_url=s3_endpoint_url, s3_region=s3_region)
    progress.finish("data")
    schema = bind_schema(recipe, dataset)
    plan = prepare(recipe, schema.task)
    progress.start("checks", "Checking data", None)
    with catching(caught, "the data checks"):
        checks = check_data(recipe, dataset, schema, warn=progress.note)
    progress.finish("checks")
    spec, validation = recipe.data, recipe.validation
    labelled = dataset.frame[spec.target].notna().to_numpy()
    frame = dataset.frame[labelled].reset_index(drop=True)
    holdout_from = (None if dataset.holdout_from is None
                    else np.asarray(dataset.holdout_from, dtype=bool)[labelled])
    splits = plan_splits(
        frame, spec.target, task=schema.task, strategy=validation.strategy,
        holdout=validation.holdout, folds=validation.folds, seed=validation.seed,
        group_column=validation.group_column, time_column=spec.time_column,
        holdout_from=holdout_from,
    )
    X = frame[schema.feature_names]
    y = frame[spec.target].to_numpy()
    classes = schema.classes
    pos_label = spec.positive_class if spec.positive_class is not None else (
        classes[-1] if classes else None)
    target = Target(schema.task, classes, pos_label)
    primary = recipe.metrics.primary or default_primary(schema.task, len(classes))
    settings = _candidate_settings(plan, schema, X)
    if trusted_types is not None:
        check_trusted(recipe, settings[0].pipeline, trusted_types)
    from mlharbor.registry.lineage import git_commit

    code_version = git_commit(recipe.base_dir)
    if recorder is not None:  # issue 16: a child run per candidate and search point
        recorder.begin(recipe, dataset.snapshot(), settings, primary, code_version)
    total = (len(settings) + 1) * len(splits.folds)  # + the baseline
    advance = _fold_progress(progress, settings, len(splits.folds))
    label = {s.key: f"candidate {s.candidate}" for s in settings}

    def on_fold(key: str, scores: Any) -> None:
        tally.add(scores.warnings, f"{label.get(key, 'the baseline')}, fold {scores.fold + 1}")
        advance(key, scores)
        if recorder is not None:
            recorder.fold(key, scores)

    progress.start("folds", f"Cross-validating {len(settings)} setting(s) + baseline", total)

    def on_stage(stage: str) -> None:
        if stage == "fit":
            progress.finish("folds")
            progress.start("fit", "Fitting the winner and scoring the holdout", None)

    with catching(caught, "the final fit and holdout"):
        assessment = assess(
            settings,
            (X.iloc[splits.train], y[splits.train], X.iloc[splits.holdout], y[splits.holdout]),
            splits.folds, target, primary=primary, gates=plan.gates,
            baseline=recipe.metrics.baseline, seed=validation.seed,
            resamples=validation.bootstrap, champion=champion, champion_ref=champion_ref,
            champion_error=champion_error, n_jobs=n_jobs, on_fold=on_fold, on_stage=on_stage,
            slices=plan.slices, slice_frame=frame.iloc[splits.holdout].reset_index(drop=True),
            engine=engine,
        )
        importances = permutation_importances(
            assessment.model, X.iloc[splits.holdout], y[splits.holdout], target, primary,
            seed=validation.seed,
        )
        insight = _importance(assessment.model, X.iloc[splits.holdout], target, importances,
                              X.iloc[splits.train], validation.seed)
    progress.finish("fit")
    tally.add(caught)
    for line in tally.lines():
        progress.note(f"warning: {line}")
    train_part = X.iloc[splits.train]
    profile = build_profile(train_part, schema.features, seed=validation.seed,
                            importances=importances)
    profile.update(model_importances(assessment.model))
    report = {
        **assessment.report,
        "model_name": recipe.registration.name if recipe.registration else None,
        "dataset": dataset.snapshot(),
        "schema": schema.to_dict(),
        "splits": splits.describe(),
        "data_checks": checks.to_dict(),
        "library_warnings": tally.lines(),
        "champion_note": champion_note,
        "importances": importances,
        "importance": insight,
        "compute": {"backend": engine.name if engine else "local",
                    "workers": engine.workers() if engine else n_jobs},
    }
    winner = assessment.winner
    params = {"candidate": winner.candidate, "estimator": winner.estimator,
              **{k: str(v) for k, v in sorted(winner.params.items())}}
    return TrainingOutcome(
        recipe=recipe, dataset=dataset, schema=schema, checks=checks, model=assessment.model,
        winner=winner.candidate, report=report, verdicts=assessment.verdicts,
        metrics=assessment.metrics, params=params, profile=profile,
        sample_input=train_part.head(5).reset_index(drop=True),
        training_data=train_part.sample(min(len(train_part), 1000),
                                        random_state=validation.seed).reset_index(drop=True),
        seconds=time.perf_counter() - started, code_version=code_version,
    )


def _importance(model: Any, X: Any, target: Any, permutation: dict[str, float],
                background: Any, seed: int) -> dict[str, Any]:
    """The report's importance block (mean |attribution|, permutation, partial dependence)."""
    from mlharbor.evaluation.importance import importance_report

    return importance_report(model, X, target, permutation, background=background, seed=seed)


def _fold_progress(progress: Progress, settings: list[Any], folds: int) -> OnFold:
    """Advance the folds bar per fold, the search bar per setting, candidates per candidate."""
    remaining = {s.key: folds for s in settings}
    per_candidate: dict[str, set[str]] = {}
    for s in settings:
        per_candidate.setdefault(s.candidate, set()).add(s.key)
    searched = {s.key for s in settings if len(per_candidate[s.candidate]) > 1}
    progress.start("candidates", f"Candidates ({len(per_candidate)})", len(per_candidate))
    if searched:
        progress.start("search", f"Search settings ({len(searched)})", len(searched))

    def on_fold(key: str, _scores: Any) -> None:
        progress.advance("folds")
        if key not in remaining:
            return  # the baseline
        remaining[key] -= 1
        if remaining[key] == 0:
            if key in searched:
                progress.advance("search")
            candidate = next(name for name, keys in per_candidate.items() if key in keys)
            if all(remaining[k] == 0 for k in per_candidate[candidate]):
                progress.advance("candidates")

    return on_fold


def _candidate_settings(plan: Plan, schema: Schema, X: pd.DataFrame) -> list[Any]:
    """One unfitted pipeline per (candidate, search setting)."""
    import pandas as pd

    from mlharbor.data.schema import infer_kind
    from mlharbor.evaluation.assessment import CandidateSetting
    from mlharbor.training.candidates import build_pipeline, make_estimator
    from mlharbor.training.preparation import (
        build_preprocessor,
        load_feature_functions,
    )

    recipe = plan.recipe
    features = dict(schema.features)
    feature_step = None
    sample = X.head(200)
    spec = recipe.preparation.feature_functions
    if spec is not None:
        try:
            feature_step = load_feature_functions(spec, recipe.base_dir)
        except ConfigError as exc:
            raise _at(recipe, ("preparation", "feature_functions"), exc) from exc
        sample = feature_step.fit(X).transform(sample)
        for column in sample.columns:
            if column not in features:
                features[str(column)] = infer_kind(sample[column])
    numeric_coded = frozenset(c for c, kind in features.items() if kind == "categorical"
                              and pd.api.types.is_numeric_dtype(sample[c]))
    settings = []
    for cand in plan.candidates:
        for i, params in enumerate(cand.settings):
            estimator = make_estimator(cand.cls, params, recipe.validation.seed)
            prepare_step = build_preprocessor(features, recipe.preparation, numeric_coded)
            pipeline = build_pipeline(prepare_step, estimator, feature_step)
            settings.append(CandidateSetting(f"{cand.name}#{i}", cand.name,
                                             cand.estimator_path, params, pipeline))
    return settings


def train(
    recipe: Recipe | str | Path,
    *,
    registry: Registry,
    settings: Settings,
    actor: str = "local",
    progress: Progress | None = None,
    backend: str | None = None,
    scheduler: str | None = None,
    tracking: StartRun | None = None,
) -> TrainJobResult:
    """Train from ``recipe`` and register the winner (Python twin of ``mlharbor train``).

    ``backend``/``scheduler`` (``--backend``/``--scheduler``) override the recipe's
    ``training`` section, which overrides ``settings.training``. With ``tracking`` (starts a
    run in an experiment; given the default, the model's name), the training is recorded as
    a run with a child run per candidate and search point, and the version and the run name
    each other (:mod:`mlharbor.pipelines.train_runs`); the run starts after the recipe and
    options are checked, so a bad one records nothing."""
    from mlharbor.registry.bundles import load_predictor
    from mlharbor.training.recipe import load_recipe

    if isinstance(recipe, str | Path):
        recipe = load_recipe(recipe)
    if recipe.registration is None:
        raise recipe.error(("register",), "the recipe has no `register` section",
                           hint="Add `register: {name: my-model}` to name the model.")
    plan = prepare(recipe)
    del plan  # fail fast on a bad recipe before touching the registry
    from mlharbor.training.backend import choose_backend

    backend, scheduler = choose_backend(
        recipe, backend, scheduler, default_backend=settings.training.backend,
        default_scheduler=settings.training.scheduler)
    name = recipe.registration.name
    champion, champion_ref, note, error = None, None, None, None
    try:
        current = registry.get_version(f"{name}@champion")
    except NotFoundError:
        note = f"No champion of {name!r} yet: the champion comparison was skipped."
    else:
        champion_ref = current.ref
        try:
            champion = load_predictor(registry, current.ref, settings)
        except MlharborError as exc:  # champion gates fail rather than pass unexamined
            error = f"loading {current.ref} failed: {exc}"
            note = f"The champion {current.ref} could not be loaded: {exc}"
    from mlharbor.pipelines.train_runs import TrainingRecorder

    recorder = TrainingRecorder(lambda: tracking(name)) if tracking is not None else None
    try:
        result = _train_recorded(recipe, recorder, registry=registry, settings=settings,
                                 actor=actor, progress=progress, backend=backend,
                                 scheduler=scheduler, champion=champion,
                                 champion_ref=champion_ref, note=note, error=error)
    except BaseException as exc:
        if recorder is not None:
            recorder.close(exc)
        raise
    if recorder is not None:
        recorder.close()
    return result


def _train_recorded(recipe: Recipe, recorder: TrainingRecorder | None, *, registry: Registry,
                    settings: Settings, actor: str, progress: Progress | None,
                    backend: str | None, scheduler: str | None, champion: Any,
                    champion_ref: str | None, note: str | None, error: str | None
                    ) -> TrainJobResult:
    """:func:`train` after its checks: train, register, move the alias; recorded by
    ``recorder`` (its run starts once the data is read and checked)."""
    from mlharbor.pipelines.train_runs import version_links

    assert recipe.registration is not None
    name = recipe.registration.name
    outcome = run_training(
        recipe, champion=champion, champion_ref=champion_ref, champion_note=note,
        champion_error=error,
        n_jobs=settings.training.n_jobs, s3_endpoint_url=settings.s3_endpoint_url,
        s3_region=settings.s3_region, progress=progress,
        trusted_types=settings.formats.skops_trusted_types, backend=backend,
        scheduler=scheduler, recorder=recorder,
    )
    run_id = recorder.run_id if recorder is not None else None
    if recorder is not None:
        recorder.finish(outcome)
    failed = outcome.failed_gates
    reason = "; ".join(f"gate {v.gate!r} failed: {v.detail}" for v in failed) or None
    tags, lineage = version_links(run_id)  # with a run: each names the other
    version = register_outcome(registry, name, outcome, settings=settings, actor=actor,
                               status="failed" if failed else "ready", status_reason=reason,
                               tags=tags, lineage=lineage)
    if recorder is not None:
        recorder.registered(str(version.ref))
    alias = recipe.registration.alias
    moved = None
    if not failed and alias:
        registry.set_alias(name, alias, version.version, actor=actor,
                           reason=f"passed gates: {', '.join(recipe.gates) or 'none'}")
        moved = alias
    return TrainJobResult(outcome, version, moved, _save_report(settings, version.ref,
                                                                outcome.report),
                          run_id=run_id)


def _save_report(settings: Settings, ref: str, report: dict[str, Any]) -> Path:
    """Write the report as JSON and HTML under ``<home>/reports``; the JSON is also in lineage."""
    import json

    from mlharbor.evaluation.html import render_html

    folder = settings.home / "reports"
    folder.mkdir(parents=True, exist_ok=True)
    stem = ref.replace(":", "-")
    (folder / f"{stem}.json").write_text(json.dumps(report, indent=1, default=str),
                                         encoding="utf-8")
    page = folder / f"{stem}.html"
    page.write_text(render_html(report), encoding="utf-8")
    return page


def register_outcome(
    registry: Registry, name: str, outcome: TrainingOutcome, *, settings: Settings,
    actor: str, status: str, status_reason: str | None,
    tags: dict[str, str] | None = None, lineage: dict[str, Any] | None = None,
) -> Any:
    """Register the winner with metrics, params, lineage, report and reference profile.

    ``tags`` are added to the recipe's (a retraining job tags its challenger with its id) and
    ``lineage`` to what :func:`lineage_of` records (the job and the snapshot it trained on).
    """
    from mlharbor.registry.bundles import register_model

    spec = outcome.recipe.registration
    assert spec is not None
    common: dict[str, Any] = {
        "description": spec.description, "tags": {**spec.tags, **(tags or {})},
        "metrics": outcome.metrics, "params": outcome.params,
        "lineage": {**lineage_of(outcome), **(lineage or {})}, "actor": actor,
    }
    return register_model(
        registry, name, outcome.model, settings=settings, sample_input=outcome.sample_input,
        training_data=outcome.training_data, status=status, status_reason=status_reason,
        **common,
    ).version


@dataclasses.dataclass
class TrainJobResult:
    outcome: TrainingOutcome
    version: Any  # core.records.ModelVersion
    alias: str | None
    report_path: Path | None = None
    run_id: str | None = None  # the tracked run (mlharbor runs show RUN_ID)

    @property
    def passed(self) -> bool:
        return self.outcome.passed


OnFold = Callable[[str, Any], None]
#: Starts a tracked run in an experiment (given the default name) as a context manager that
#: ends it (FAILED with the error on an exception): ``Tracker.start_run`` bound by the caller.
StartRun = Callable[[str], contextlib.AbstractContextManager["RunLogger"]]


def lineage_of(outcome: TrainingOutcome) -> dict[str, Any]:
    """Where the version came from; enough for ``reproduce`` to re-run it."""
    recipe = outcome.recipe
    lineage: dict[str, Any] = {
        "dataset": outcome.dataset.snapshot(),
        "recipe": recipe.to_dict(),
        "recipe_source": recipe.source,
        "recipe_base_dir": str(recipe.base_dir),
        "seed": recipe.validation.seed,
        "schema": outcome.schema.to_dict(),
        "data_checks": outcome.checks.to_dict(),
        "winner": outcome.winner,
        "training_seconds": round(outcome.seconds, 3),
        "evaluation": outcome.report,
        "reference_profile": outcome.profile,
    }
    # Always the recipe folder's commit, None outside a repository: the registering process's
    # own working directory (environment_lineage) says nothing about the training code.
    lineage["code_version"] = outcome.code_version
    return lineage


@dataclasses.dataclass(frozen=True)
class MetricCheck:
    metric: str
    stored: float | None
    reproduced: float | None

    @property
    def matches(self) -> bool:
        if self.stored is None or self.reproduced is None:
            return False
        return abs(self.stored - self.reproduced) <= 1e-9 * max(1.0, abs(self.stored))


@dataclasses.dataclass(frozen=True)
class ReproduceResult:
    ref: str
    same_data: bool
    checks: list[MetricCheck]
    outcome: TrainingOutcome
    run_id: str | None = None  # the reproduction's run, when it was tracked

    @property
    def matches(self) -> bool:
        return self.same_data and all(c.matches for c in self.checks)


def reproduce(
    registry: Registry, ref: str, *, settings: Settings, progress: Progress | None = None,
    backend: str | None = None, scheduler: str | None = None,
    tracking: StartRun | None = None,
) -> ReproduceResult:
    """Re-run training from a version's stored lineage and compare every stored metric
    (on ``backend``, else the stored recipe's, else the settings'; the metrics are the same).

    With ``tracking`` (given the default experiment, the model's name), the reproduction is a
    run like a training's, with its candidates and search points, of kind ``reproduction``,
    tagged ``mlharbor.reproduces`` with the version and with the verdict
    (``mlharbor.reproduction.matches``, ``...same_data``); it registers nothing. It starts
    once the data is read and checked: a version that cannot be reproduced records nothing."""
    from mlharbor.pipelines.train_runs import KIND_TAG, REPRODUCES_TAG, TrainingRecorder
    from mlharbor.training.recipe import recipe_from_dict

    version = registry.get_version(ref)
    stored = version.lineage.get("recipe")
    if not isinstance(stored, dict):
        raise InvalidInputError(
            f"Version {version.ref} has no stored recipe in its lineage, so it cannot be "
            "reproduced; it was not registered by `mlharbor train`."
        )
    base_dir = Path(version.lineage.get("recipe_base_dir") or ".")
    recipe = recipe_from_dict(stored, source=f"recipe of {version.ref}", base_dir=base_dir)
    from mlharbor.training.backend import choose_backend

    backend, scheduler = choose_backend(
        recipe, backend, scheduler, default_backend=settings.training.backend,
        default_scheduler=settings.training.scheduler)
    recorder = None
    if tracking is not None:
        start = tracking  # bound for the closure (mypy: not None inside it)
        recorder = TrainingRecorder(lambda: start(version.name), tags={
            KIND_TAG: "reproduction", REPRODUCES_TAG: version.ref})
    try:
        outcome = run_training(recipe, n_jobs=settings.training.n_jobs,
                               s3_endpoint_url=settings.s3_endpoint_url,
                               s3_region=settings.s3_region, progress=progress,
                               backend=backend, scheduler=scheduler, recorder=recorder)
        fingerprint = (version.lineage.get("dataset") or {}).get("fingerprint")
        names = sorted(set(version.metrics) | set(outcome.metrics))
        checks = [MetricCheck(n, version.metrics.get(n), outcome.metrics.get(n))
                  for n in names]
        result = ReproduceResult(version.ref, fingerprint == outcome.dataset.fingerprint,
                                 checks, outcome,
                                 run_id=recorder.run_id if recorder is not None else None)
        if recorder is not None:
            recorder.finish(outcome)
            differing = ",".join(c.metric for c in checks if not c.matches)
            recorder.run.set_tags({
                "mlharbor.reproduction.matches": str(result.matches).lower(),
                "mlharbor.reproduction.same_data": str(result.same_data).lower(),
                **({"mlharbor.reproduction.differing": differing[:8000]} if differing
                   else {})})
    except BaseException as exc:
        if recorder is not None:
            recorder.close(exc)
        raise
    if recorder is not None:
        recorder.close()
    return result
