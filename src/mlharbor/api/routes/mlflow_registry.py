"""The MLflow model-registry routes, on mlharbor's registry.

``registered-models/create|get|search|get-latest-versions``,
``model-versions/create|get|search|get-download-uri`` and aliases
(``registered-models/alias``: get, set and delete, with the guard, audit record and
``alias.write`` permission of mlharbor's own alias route). Searches filter by ``name`` (``=``,
``!=``, ``LIKE``, ``ILIKE``), tags and, for versions, ``run_id``. ``models:/<name>/<version>``
loads, through MLflow, the files registered, kept where nothing may replace them.

A new version's files come from where MLflow put them (a run's artifacts, a logged model, an
``mlflow-artifacts:`` URI) and go through mlharbor's normal registration
(:func:`mlharbor.registry.bundles.register_model`) with its format checks: a skops or ONNX
model registers; a pickle (MLflow's default for scikit-learn) is refused unless trusted by its
sha256, which the message gives, with how to fix it. The version links to its run (lineage
``tracking``) and the run to the version (tag ``mlharbor.model_version``).
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request

from mlharbor.api.context import actor_of, registry_of, request_id_of
from mlharbor.api.mlflow_protocol import (
    MlflowRoute,
    key_values,
    required,
    required_text,
    text_field,
)
from mlharbor.api.routes.mlflow_threads import reading, writing
from mlharbor.api.routes.mlflow_tracking import PREFIX, files_of, store_of
from mlharbor.core.errors import InvalidInputError, NotFoundError, UnsafeArtifactError
from mlharbor.core.records import ModelVersion, RegisteredModel
from mlharbor.core.runs import MODEL_VERSION_TAG
from mlharbor.tracking import checks, search
from mlharbor.tracking.files import FROZEN_ROOT, TrackingFiles, key_of_uri
from mlharbor.tracking.store import TrackingStore

router = APIRouter(prefix=PREFIX, tags=["mlflow"], route_class=MlflowRoute)
TRUST_TAG = "mlharbor.trust_pickle_sha256"
VERSION_TAG = MODEL_VERSION_TAG  # the one spelling, in core.runs
PROMPT_TAG = "mlflow.prompt.is_prompt"
#: The lineage entry naming where a version's MLflow model files are kept.
KEPT_FILES = "mlflow_files"
#: MLmodel flavours and the key naming their model file, in the order they are preferred.
FLAVOR_FILES = (("onnx", "data"), ("sklearn", "pickled_model"), ("xgboost", "data"),
                ("lightgbm", "data"), ("python_function", "model_path"))


def _ts(value: Any) -> int:
    return int(value.timestamp() * 1000)


def _model_json(model: RegisteredModel) -> dict[str, Any]:
    return {"name": model.name, "creation_timestamp": _ts(model.created_at),
            "last_updated_timestamp": _ts(model.updated_at),
            "description": model.description,
            "tags": [{"key": k, "value": v} for k, v in sorted(model.tags.items())],
            "aliases": [{"alias": a, "version": str(v)} for a, v in sorted(
                model.aliases.items())]}


def _version_json(mv: ModelVersion) -> dict[str, Any]:
    tracking = mv.lineage.get("tracking") if isinstance(mv.lineage, dict) else None
    tracking = tracking if isinstance(tracking, dict) else {}
    status = {"ready": "READY", "failed": "FAILED_REGISTRATION"}.get(
        mv.status.value, "PENDING_REGISTRATION")
    out = {"name": mv.name, "version": str(mv.version),
           "creation_timestamp": _ts(mv.created_at),
           "last_updated_timestamp": _ts(mv.created_at), "current_stage": "None",
           "description": mv.description, "source": str(tracking.get("source", "")),
           "run_id": str(tracking.get("run_id", "")), "status": status,
           "tags": [{"key": k, "value": v} for k, v in sorted(mv.tags.items())],
           "aliases": list(mv.aliases) if hasattr(mv, "aliases") else []}
    if mv.status_reason:
        out["status_message"] = mv.status_reason
    return out


@router.post("/registered-models/create")
@writing
def create_registered_model(request: Request, body: dict[str, Any]) -> Any:
    model = registry_of(request).create_model(
        required(body, "name"), description=text_field(body, "description") or "",
        tags=key_values(body, "tags") or None, actor=actor_of(request))
    return {"registered_model": _model_json(model)}


@router.get("/registered-models/get")
@reading
def get_registered_model(request: Request, body: dict[str, Any]) -> Any:
    return {"registered_model": _model_json(registry_of(request).get_model(
        required(body, "name")))}


@router.post("/registered-models/get-latest-versions")
@reading
def get_latest_versions(request: Request, body: dict[str, Any]) -> Any:
    name = required(body, "name")
    model = registry_of(request).get_model(name)
    if model.latest_version is None:
        return {"model_versions": []}
    mv = registry_of(request).get_version(f"{name}:{model.latest_version}")
    return {"model_versions": [_version_json(mv)]}


@router.get("/model-versions/get")
@reading
def get_model_version(request: Request, body: dict[str, Any]) -> Any:
    return {"model_version": _version_json(registry_of(request).get_version(
        f"{required(body, 'name')}:{_version_number(body)}"))}


@router.get("/model-versions/get-download-uri")
@reading
def get_model_version_download_uri(request: Request, body: dict[str, Any]) -> Any:
    """Where MLflow's client downloads ``models:/<name>/<version>`` from: the version's MLflow
    model files as registered, kept where nothing may replace them."""
    mv = registry_of(request).get_version(f"{required_text(body, 'name')}:{_version_number(body)}")
    tracking = mv.lineage.get("tracking") if isinstance(mv.lineage, dict) else None
    prefix = tracking.get(KEPT_FILES) if isinstance(tracking, dict) else None
    if not isinstance(prefix, str) or not prefix.startswith(FROZEN_ROOT + "/"):
        raise NotFoundError(
            f"{mv.name}:{mv.version} has no MLflow model files on this server: it was not "
            "registered through MLflow's register_model here (or was, before mlharbor kept "
            "them).", hint=f"Serve it with `mlharbor serve {mv.name}:{mv.version}`.")
    return {"artifact_uri": f"mlflow-artifacts:/{prefix}"}


@router.get("/registered-models/search")
@reading
def search_registered_models(request: Request, body: dict[str, Any]) -> Any:
    clauses = search.parse_field_filter(text_field(body, "filter"),
                                        {"name": search.TEXT_OPS, "tags": search.TEXT_OPS},
                                        what="Registered models")
    _default_order(body, ("NAME", "NAME ASC"), "registered models come by name")
    limit, offset = _window(body, default=100, maximum=1000)  # MLflow's bounds
    models = [m for m in _every_model(request)
              if all(c.matches(_field(c, m.name, m.tags)) for c in clauses)]
    return _page("registered_models", [_model_json(m) for m in models[offset:offset + limit]],
                 more=len(models) > offset + limit, next_offset=offset + limit)


@router.get("/model-versions/search")
@reading
def search_model_versions(request: Request, body: dict[str, Any]) -> Any:
    """Versions by model name, newest first (MLflow's default order). Only the versions up to
    the requested page are read; a search by exact name reads that model's alone."""
    clauses = search.parse_field_filter(text_field(body, "filter"),
                                        {"name": search.TEXT_OPS, "run_id": ("=", "!="),
                                         "tags": search.TEXT_OPS},
                                        what="Model versions")
    _default_order(body, ("NAME", "NAME ASC", "VERSION_NUMBER DESC"),
                   "versions come by model name, then newest first")
    limit, offset = _window(body, default=_VERSIONS_PAGE, maximum=_VERSIONS_PAGE)
    names = [c for c in clauses if c.field == "name"]
    others = [c for c in clauses if c.field != "name"]
    exact = next((c.value for c in names if c.op == "="), None)
    registry = registry_of(request)
    found: list[ModelVersion] = []
    for model in _every_model(request) if exact is None else _one_model(request, exact):
        if not all(c.matches(model.name) for c in names):
            continue
        token: str | None = None
        while len(found) <= offset + limit:
            try:
                versions = registry.list_versions(model.name, page_size=_LISTING,
                                                  page_token=token)
            except NotFoundError:  # deleted while this search ran
                break
            found.extend(v for v in versions.items
                         if all(c.matches(_field(c, _run_of(v), v.tags)) for c in others))
            if not (token := versions.next_page_token):
                break
        if len(found) > offset + limit:
            break
    return _page("model_versions", [_version_json(v) for v in found[offset:offset + limit]],
                 more=len(found) > offset + limit, next_offset=offset + limit)


@router.get("/registered-models/alias")
@reading
def get_model_version_by_alias(request: Request, body: dict[str, Any]) -> Any:
    ref = f"{required_text(body, 'name')}@{required_text(body, 'alias')}"
    return {"model_version": _version_json(registry_of(request).get_version(ref))}


@router.post("/registered-models/alias")
@writing
def set_registered_model_alias(request: Request, body: dict[str, Any]) -> Any:
    """Moves the alias as mlharbor's own alias route does: the same guard, audit record and
    permission (``alias.write``)."""
    registry_of(request).set_alias(required_text(body, "name"), required_text(body, "alias"),
                                   _version_number(body), actor=actor_of(request),
                                   request_id=request_id_of(request))
    return {}


@router.delete("/registered-models/alias")
@writing
def delete_registered_model_alias(request: Request, body: dict[str, Any]) -> Any:
    """Deleting an alias the model does not have does nothing, as in MLflow (a missing
    model is still RESOURCE_DOES_NOT_EXIST)."""
    name, alias = required_text(body, "name"), required_text(body, "alias")
    registry = registry_of(request)
    if alias in registry.get_model(name).aliases:
        with contextlib.suppress(NotFoundError):  # deleted meanwhile: still nothing to do
            registry.delete_alias(name, alias, actor=actor_of(request),
                                  request_id=request_id_of(request))
    return {}


_LISTING = 500  # registry page size while collecting a search's matches
#: Versions a search page holds at most, and by default: what MLflow's client asks for.
_VERSIONS_PAGE = 10_000


def _version_number(body: dict[str, Any]) -> int:
    """The request's ``version``: a whole number (MLflow sends it as text)."""
    return checks.check_int(required(body, "version"), field="version", minimum=1)


def _default_order(body: dict[str, Any], same: tuple[str, ...], order: str) -> None:
    """Refuses an ``order_by`` other than the one the results come in anyway."""
    given = body.get("order_by")
    items = [given] if isinstance(given, str) else given if isinstance(given, list) else None
    if given in (None, "", []) or (items is not None and all(
            isinstance(i, str) and " ".join(i.upper().split()) in same for i in items)):
        return
    raise InvalidInputError(f"order_by {str(given)[:100]!r} is not supported here: {order}.",
                            hint="Leave order_by out, or sort the results yourself.",
                            field="order_by")


def _every_model(request: Request) -> list[RegisteredModel]:
    registry = registry_of(request)
    models: list[RegisteredModel] = []
    token: str | None = None
    while True:
        listed = registry.list_models(page_size=_LISTING, page_token=token)
        models.extend(listed.items)
        if not (token := listed.next_page_token):
            return sorted(models, key=lambda m: m.name)


def _one_model(request: Request, name: str) -> list[RegisteredModel]:
    try:
        return [registry_of(request).get_model(name)]
    except (NotFoundError, InvalidInputError):  # no such model (or no such name can exist)
        return []


def _window(body: dict[str, Any], *, default: int, maximum: int) -> tuple[int, int]:
    """The request's page: ``max_results`` (at most ``maximum``) and the offset its
    ``page_token`` names."""
    return (checks.check_max_results(body.get("max_results"), default=default, limit=maximum),
            checks.decode_token(body.get("page_token")))


def _page(key: str, items: list[dict[str, Any]], *, more: bool, next_offset: int
          ) -> dict[str, Any]:
    """A search's answer: the page's ``items`` and, if ``more`` follow, the next page's
    token."""
    return {key: items, **({"next_page_token": checks.encode_token(next_offset)} if more
                           else {})}


def _field(clause: search.FieldClause, value: str, tags: dict[str, str]) -> str | None:
    """What ``clause`` compares: ``value`` (the record's own field), or one of its tags (None
    if it has not: that matches nothing). MLflow's client adds ``tag.`mlflow.prompt.is_prompt`
    != 'true'`` to every model search; a model without that tag is not a prompt, as MLflow's
    own server reads it."""
    if clause.field != "tags":
        return value
    return tags.get(clause.key, "false" if clause.key == PROMPT_TAG else None)


def _run_of(mv: ModelVersion) -> str:
    tracking = mv.lineage.get("tracking") if isinstance(mv.lineage, dict) else None
    run_id = tracking.get("run_id") if isinstance(tracking, dict) else None
    return run_id if isinstance(run_id, str) else ""


@router.post("/model-versions/create")
@writing
def create_model_version(request: Request, body: dict[str, Any]) -> Any:
    name = required(body, "name")
    source = required(body, "source")
    if not isinstance(name, str) or not isinstance(source, str):
        raise InvalidInputError("'name' and 'source' must be text.")
    mv = _register(request, name, source, text_field(body, "run_id") or None,
                   text_field(body, "model_id") or None, key_values(body, "tags"),
                   text_field(body, "description") or "")
    return {"model_version": _version_json(mv)}


def _register(request: Request, name: str, source: str, run_id: str | None,
              model_id: str | None, tags: dict[str, str], description: str) -> ModelVersion:
    from mlharbor.registry.artifacts.base import digest_file
    from mlharbor.registry.bundles import register_model

    store, files = store_of(request), files_of(request)
    registry = registry_of(request)
    registry.get_model(name)  # MLflow creates the model first; a missing one is named now
    run = store.get_run(run_id) if run_id else None
    key = _source_key(store, files, source, run_id, model_id)
    trust = tags.pop(TRUST_TAG, None)
    with tempfile.TemporaryDirectory(prefix="mlharbor-mlflow-model-") as tmp:
        folder = Path(tmp)
        found = files.download_tree(key, folder)
        model_file = _model_file(folder)
        # What models:/<name>/<version> loads through MLflow: these files, kept before the
        # version exists (a key too long is refused with nothing registered) and named by
        # the version's lineage, so no other version (a model deleted and made again) can
        # point at them.
        kept = files.freeze(found, key)
        try:
            result = register_model(
                registry, name, model_file, settings=request.app.state.settings,
                trust_pickle_sha256=trust, description=description, tags=tags or None,
                metrics={k: m.value for k, m in (run.metrics if run else {}).items()
                         if m.value == m.value and abs(m.value) != float("inf")},
                params=dict(run.params) if run else None,
                lineage={"tracking": {"run_id": run_id or "", "source": source,
                                      "experiment_id": run.experiment_id if run else "",
                                      KEPT_FILES: kept}},
                actor=actor_of(request))
        except UnsafeArtifactError as exc:
            files.thaw(kept)
            sha = digest_file(model_file).sha256
            raise UnsafeArtifactError(
                f"{model_file.name} of {source!r} is a pickle, and loading a pickle runs "
                f"whatever code it holds, so mlharbor does not register it untrusted ({exc}).",
                hint="Log the model with mlflow.sklearn.log_model(..., "
                f"serialization_format='skops'), or trust this exact file by registering "
                f"with tags={{'{TRUST_TAG}': '{sha}'}}.") from exc
        except BaseException:
            files.thaw(kept)
            raise
    if run is not None and run.lifecycle_stage.value == "active":
        store.log_batch(run.run_id, tags={VERSION_TAG: str(result.version.ref)})
    return result.version


def _source_key(store: TrackingStore, files: TrackingFiles, source: str,
                run_id: str | None, model_id: str | None) -> str:
    """The artifact-proxy key of the folder ``source`` names."""
    if source.startswith("models:/") or (model_id and not source.startswith(
            ("mlflow-artifacts:", "runs:/"))):
        ident = model_id or source[len("models:/"):].strip("/").split("/")[0]
        key = key_of_uri(files.get_logged_model(ident).artifact_location)
    elif source.startswith("runs:/"):
        rid, _, sub = source[len("runs:/"):].partition("/")
        run = store.get_run(rid)
        root = key_of_uri(run.artifact_uri)
        key = f"{root}/{sub.strip('/')}" if root and sub.strip("/") else root
        if key is not None and not files.listing(key):
            models, _ = files.search_logged_models([run.experiment_id], source_run_id=rid)
            named = [m for m in models if m.name == sub.strip("/")]
            if named:
                key = key_of_uri(named[0].artifact_location)
    else:
        key = key_of_uri(source)
    if not key:
        raise InvalidInputError(
            f"Model source {source[:200]!r} is not stored by this server: mlharbor registers "
            "models whose files were logged to it (runs:/, models:/ or mlflow-artifacts:/).",
            hint="Log the model to a run on this server first, then register it.",
            field="source")
    if not files.listing(key):
        raise NotFoundError(f"No model files under {source[:200]!r}.", field="source")
    return key


def _model_file(folder: Path) -> Path:
    """The model file of an MLflow model folder, named by its MLmodel flavours."""
    import yaml

    mlmodel = folder / "MLmodel"
    if mlmodel.is_file():
        try:
            spec = yaml.safe_load(mlmodel.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise InvalidInputError("The model's MLmodel file is not valid YAML.") from exc
        flavors = spec.get("flavors") if isinstance(spec, dict) else None
        for flavor, field in FLAVOR_FILES:
            entry = flavors.get(flavor) if isinstance(flavors, dict) else None
            name = entry.get(field) if isinstance(entry, dict) else None
            if isinstance(name, str) and (folder / name).is_file() \
                    and (folder / name).resolve().is_relative_to(folder.resolve()):
                return folder / name
    model_files = [p for p in folder.rglob("*") if p.is_file() and p.suffix in (
        ".skops", ".onnx", ".pkl", ".pickle", ".joblib", ".ubj", ".lgb", ".pt")]
    if len(model_files) == 1:
        return model_files[0]
    raise InvalidInputError(
        "The logged model's folder names no model file mlharbor can read (its MLmodel has "
        "no onnx, sklearn, xgboost, lightgbm or python_function flavour with a file).",
        hint="Log the model with mlflow.sklearn.log_model or mlflow.onnx.log_model.")
