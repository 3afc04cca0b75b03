"""Registry routes under ``/api/v1``: models, versions, files, aliases and their history."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path, PurePosixPath
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, HTMLResponse
from pydantic import BaseModel, Field

from mlharbor.api.context import actor_of, registry_of, request_id_of
from mlharbor.core.errors import InvalidInputError, NotFoundError
from mlharbor.core.records import to_dict
from mlharbor.core.refs import ModelRef
from mlharbor.registry.lineage import (
    declared_environment,
    manifest_environment,
    unknown_environment,
)
from mlharbor.registry.service import bundle_path

router = APIRouter(prefix="/api/v1", tags=["registry"])
NameParam = Annotated[str, Field(min_length=1, max_length=255)]
VersionParam = Annotated[int, PathParam(ge=1, le=2**31 - 1)]


class ModelCreate(BaseModel):
    name: NameParam
    description: str = Field("", max_length=20_000)
    tags: dict[str, str] = Field(default_factory=dict)


class ModelPatch(BaseModel):
    description: str | None = Field(None, max_length=20_000)
    tags: dict[str, str] | None = None


class AliasSet(BaseModel):
    version: int = Field(..., ge=1, le=2**31 - 1)
    reason: str = Field("", max_length=2000)


def _tag_filter(tag: list[str] | None) -> dict[str, str] | None:
    if not tag:
        return None
    parsed: dict[str, str] = {}
    for item in tag:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidInputError(
                f"tag filter {item!r} is not KEY=VALUE.", field="tag",
                hint="Pass tag=team=risk to keep models whose tag team is risk.",
            )
        parsed[key] = value
    return parsed


def _ref(name: str, version: VersionParam) -> ModelRef:
    return ModelRef.parse(f"{name}:{version}")


@router.get("/models")
def list_models(
    request: Request,
    name_contains: str | None = Query(None, max_length=255),
    tag: list[str] | None = Query(None, description="KEY=VALUE, repeatable"),
    page_size: int = Query(100, ge=1, le=1000),
    page_token: str | None = Query(None, max_length=64),
) -> dict[str, Any]:
    page = registry_of(request).list_models(
        name_contains=name_contains, tags=_tag_filter(tag), page_size=page_size,
        page_token=page_token,
    )
    return to_dict(page)  # type: ignore[no-any-return]


@router.post("/models", status_code=201)
def create_model(request: Request, body: ModelCreate) -> dict[str, Any]:
    model = registry_of(request).create_model(
        body.name, description=body.description, tags=body.tags, actor=actor_of(request),
        request_id=request_id_of(request),
    )
    return to_dict(model)  # type: ignore[no-any-return]


@router.get("/models/{name}")
def get_model(request: Request, name: str) -> dict[str, Any]:
    return to_dict(registry_of(request).get_model(name))  # type: ignore[no-any-return]


@router.patch("/models/{name}")
def update_model(request: Request, name: str, body: ModelPatch) -> dict[str, Any]:
    model = registry_of(request).update_model(
        name, description=body.description, tags=body.tags, actor=actor_of(request),
        request_id=request_id_of(request),
    )
    return to_dict(model)  # type: ignore[no-any-return]


@router.delete("/models/{name}", status_code=204)
def delete_model(request: Request, name: str) -> None:
    registry_of(request).delete_model(name, actor=actor_of(request),
                                      request_id=request_id_of(request))


@router.get("/models/{name}/versions")
def list_versions(
    request: Request,
    name: str,
    status: str | None = Query(None, pattern="^(registering|ready|failed)$"),
    include_archived: bool = Query(True),
    tag: list[str] | None = Query(None, description="KEY=VALUE, repeatable"),
    page_size: int = Query(100, ge=1, le=1000),
    page_token: str | None = Query(None, max_length=64),
) -> dict[str, Any]:
    page = registry_of(request).list_versions(
        name, status=status, include_archived=include_archived, tags=_tag_filter(tag),
        page_size=page_size, page_token=page_token,
    )
    return to_dict(page)  # type: ignore[no-any-return]


@router.post("/models/{name}/versions", status_code=201)
def upload_version(
    request: Request,
    name: str,
    files: list[UploadFile] = File(..., description="Bundle files; filename = path in bundle"),
    description: str = Form("", max_length=20_000),
    tags: str = Form("{}", description="JSON object of string tags"),
    metrics: str = Form("{}", description="JSON object of numeric metrics"),
    params: str = Form("{}", description="JSON object of parameters"),
    environment: str = Form("", description="JSON object: the environment that built the "
                            "model (python, platform, code_version, packages {name: version})"
                            "; else taken from the bundle's manifest.json, else unknown"),
) -> dict[str, Any]:
    """Register a version from uploaded files (stored as sent; use the CLI to build bundles).

    The lineage records the environment that built the model: the one the client declares,
    or the bundle manifest's, or "not provided"; never this server's own.
    """
    parsed = {key: _json_object(key, text) for key, text in
              (("tags", tags), ("metrics", metrics), ("params", params))}
    declared = declared_environment(_json_object("environment", environment)) \
        if environment.strip() else None
    staging = Path(tempfile.mkdtemp(prefix="mlharbor-upload-"))
    try:
        for upload in files:
            rel = bundle_path(upload.filename or "")
            dest = staging / rel
            if dest.exists():
                raise InvalidInputError(
                    f"The path {str(rel)!r} was uploaded twice, or is both a file and a "
                    "folder.", field="files")
            try:
                dest.parent.mkdir(parents=True, exist_ok=True)
                with dest.open("wb") as out:
                    shutil.copyfileobj(upload.file, out)
            except OSError as exc:
                raise InvalidInputError(
                    f"The file {str(rel)!r} cannot be stored: {exc.strerror}.",
                    hint="Use short relative paths, and never a file and a folder of the "
                    "same name.", field="files",
                ) from exc
        version = registry_of(request).register_version(
            name, staging, description=description, tags=parsed["tags"],
            metrics=parsed["metrics"], params=parsed["params"], actor=actor_of(request),
            request_id=request_id_of(request),
            environment=declared or _uploaded_environment(staging),
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return to_dict(version)  # type: ignore[no-any-return]


@router.get("/models/{name}/versions/{version}")
def get_version(request: Request, name: str, version: VersionParam) -> dict[str, Any]:
    return to_dict(registry_of(request).get_version(_ref(name, version)))  # type: ignore[no-any-return]


@router.patch("/models/{name}/versions/{version}")
def update_version(
    request: Request, name: str, version: VersionParam, body: ModelPatch
) -> dict[str, Any]:
    mv = registry_of(request).update_version(
        _ref(name, version), description=body.description, tags=body.tags,
        actor=actor_of(request), request_id=request_id_of(request),
    )
    return to_dict(mv)  # type: ignore[no-any-return]


@router.delete("/models/{name}/versions/{version}", status_code=204)
def delete_version(request: Request, name: str, version: VersionParam) -> None:
    registry_of(request).delete_version(_ref(name, version), actor=actor_of(request),
                                        request_id=request_id_of(request))


@router.post("/models/{name}/versions/{version}/archive")
def archive_version(request: Request, name: str, version: VersionParam) -> dict[str, Any]:
    mv = registry_of(request).archive_version(_ref(name, version), actor=actor_of(request),
                                              request_id=request_id_of(request))
    return to_dict(mv)  # type: ignore[no-any-return]


@router.post("/models/{name}/versions/{version}/unarchive")
def unarchive_version(request: Request, name: str, version: VersionParam) -> dict[str, Any]:
    mv = registry_of(request).unarchive_version(_ref(name, version), actor=actor_of(request),
                                                request_id=request_id_of(request))
    return to_dict(mv)  # type: ignore[no-any-return]


@router.get("/models/{name}/versions/{version}/files/{path:path}")
def download_file(request: Request, name: str, version: VersionParam, path: str) -> FileResponse:
    registry = registry_of(request)
    mv = registry.get_version(_ref(name, version))
    rel = str(bundle_path(path, field="path"))
    if rel not in {f.path for f in mv.files}:
        raise NotFoundError(f"Version {mv.ref} has no file {rel!r}.",
                            hint=f"Files: {', '.join(f.path for f in mv.files)}.")
    folder = registry.download(mv)
    return FileResponse(folder / rel, filename=PurePosixPath(rel).name)


@router.get("/models/{name}/aliases/{alias}")
def resolve_alias(request: Request, name: str, alias: str) -> dict[str, Any]:
    ref = ModelRef.parse(f"{name}@{alias}")
    return to_dict(registry_of(request).get_version(ref))  # type: ignore[no-any-return]


@router.put("/models/{name}/aliases/{alias}")
def set_alias(request: Request, name: str, alias: str, body: AliasSet) -> dict[str, Any]:
    move = registry_of(request).set_alias(
        name, alias, body.version, actor=actor_of(request), reason=body.reason,
        request_id=request_id_of(request),
    )
    return to_dict(move)  # type: ignore[no-any-return]


@router.delete("/models/{name}/aliases/{alias}")
def delete_alias(
    request: Request, name: str, alias: str, reason: str = Query("", max_length=2000)
) -> dict[str, Any]:
    move = registry_of(request).delete_alias(name, alias, actor=actor_of(request), reason=reason,
                                             request_id=request_id_of(request))
    return to_dict(move)  # type: ignore[no-any-return]


@router.get("/models/{name}/alias-history")
def alias_history(
    request: Request, name: str, alias: str | None = Query(None, max_length=255)
) -> dict[str, Any]:
    moves = registry_of(request).alias_history(name, alias)
    return {"items": to_dict(moves)}


#: Lineage entries with routes of their own (``/report``) or too big to show whole; the lineage
#: route says whether each is there.
_LINEAGE_ELSEWHERE = ("evaluation", "reference_profile")


@router.get("/models/{name}/versions/{version}/lineage")
def version_lineage(request: Request, name: str, version: VersionParam) -> dict[str, Any]:
    """Where a version came from (dataset, recipe, seed, code and package versions, data
    checks) and where it went since: the alias moves to and from it."""
    registry = registry_of(request)
    mv = registry.get_version(_ref(name, version))
    lineage = {k: v for k, v in mv.lineage.items() if k not in _LINEAGE_ELSEWHERE}
    moves = [m for m in registry.alias_history(name)
             if version in (m.from_version, m.to_version)]
    return {"ref": mv.ref, "lineage": lineage, "aliases": list(mv.aliases),
            "has_evaluation": bool(mv.lineage.get("evaluation")),
            "has_reference_profile": bool(mv.lineage.get("reference_profile")),
            "alias_moves": to_dict(moves)}


# The rendered report is its own document: its inline styles and SVG charts are allowed,
# nothing else (no script, no request anywhere).
REPORT_CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
              "frame-ancestors 'self'; base-uri 'none'; form-action 'none'")


@router.get("/models/{name}/versions/{version}/report", response_model=None)
def version_report(
    request: Request, name: str, version: VersionParam,
    format: str = Query("json", pattern="^(json|html)$",
                        description="json: the report document; html: the rendered page."),
) -> dict[str, Any] | HTMLResponse:
    """The evaluation report stored with a version by ``mlharbor train``: holdout metrics with
    confidence intervals, baseline and champion comparisons, gate verdicts."""
    mv = registry_of(request).get_version(_ref(name, version))
    report = mv.lineage.get("evaluation")
    if not isinstance(report, dict) or not report:
        raise NotFoundError(
            f"Version {mv.ref} has no evaluation report.",
            hint="Versions trained with `mlharbor train` store theirs; re-score one with "
            "`mlharbor evaluate`.")
    if format == "html":
        from mlharbor.evaluation.html import render_html

        return HTMLResponse(render_html(report), headers={
            "Content-Security-Policy": REPORT_CSP, "Cache-Control": "no-store"})
    return {"ref": mv.ref, "report": report}


@router.get("/resolve/{reference}")
def resolve(request: Request, reference: str) -> dict[str, Any]:
    """Resolve ``name``, ``name:3``, ``name:latest`` or ``name@alias`` to a version."""
    return to_dict(registry_of(request).get_version(reference))  # type: ignore[no-any-return]


#: A manifest larger than this is not read for its environment (it would not be a manifest).
MAX_MANIFEST_BYTES = 4 * 1024 * 1024


def _uploaded_environment(staging: Path) -> dict[str, Any]:
    """The build environment an uploaded bundle's manifest records, else unknown."""
    from mlharbor.formats.bundle import MANIFEST_NAME

    path = staging / MANIFEST_NAME
    try:
        if path.is_file() and path.stat().st_size <= MAX_MANIFEST_BYTES:
            found = manifest_environment(json.loads(path.read_text(encoding="utf-8")))
            if found is not None:
                return found
    except (OSError, ValueError):
        pass  # not a readable manifest: the environment is simply unknown
    return unknown_environment()


def _json_object(field: str, text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"{field} is not valid JSON: {exc.msg}.", field=field) from exc
    if not isinstance(value, dict):
        raise InvalidInputError(f"{field} must be a JSON object; received "
                                f"{type(value).__name__}.", field=field)
    return value
