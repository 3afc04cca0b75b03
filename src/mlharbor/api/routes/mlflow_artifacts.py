"""MLflow's artifact proxy, ``/api/2.0/mlflow-artifacts/artifacts``: upload, download, list
and delete files under ``mlflow-artifacts:/`` locations.

An experiment created here stores its runs' files at ``mlflow-artifacts:/<experiment id>``, so
``mlflow.log_artifact`` and ``log_model`` upload through these routes. Bytes go to the
registry's content-addressed artifact store (:mod:`mlharbor.tracking.files`); an upload is
streamed to a temporary file first, so a broken upload names nothing. Request bodies are
capped by the transport guard (``server.max_body_bytes``). Storing, fetching, listing and
deleting run on the tracking threads (:mod:`.mlflow_threads`), off the event loop.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from starlette.background import BackgroundTask
from starlette.responses import FileResponse

from mlharbor.api.mlflow_protocol import MlflowRoute
from mlharbor.api.routes.mlflow_threads import off_loop
from mlharbor.api.routes.mlflow_tracking import files_of
from mlharbor.tracking.files import check_key

PREFIX = "/api/2.0/mlflow-artifacts/artifacts"
router = APIRouter(prefix=PREFIX, tags=["mlflow"], route_class=MlflowRoute)


@router.get("")
async def list_artifacts(request: Request, path: str | None = None) -> Any:
    """Files and folders directly under ``path`` (names relative to it)."""
    base = check_key(path) if path and path.strip("/") else ""
    entries = await off_loop(request, lambda: files_of(request).listing(base or None),
                             kind="read")
    cut = len(base) + 1 if base else 0
    return {"files": [{"path": e.path[cut:], "is_dir": e.is_dir,
                       **({"file_size": e.size} if e.size is not None else {})}
                      for e in entries]}


@router.put("/{path:path}")
async def upload_artifact(request: Request, path: str) -> Any:
    key = check_key(path)
    with tempfile.TemporaryDirectory(prefix="mlharbor-upload-") as tmp:
        target = Path(tmp) / "upload"
        with target.open("wb") as out:
            async for chunk in request.stream():
                out.write(chunk)
        await off_loop(request, lambda: files_of(request).put(key, target))
    return {}


@router.get("/{path:path}")
async def download_artifact(request: Request, path: str) -> Any:
    import shutil

    key = check_key(path)
    tmp = Path(tempfile.mkdtemp(prefix="mlharbor-download-"))
    try:
        await off_loop(request, lambda: files_of(request).fetch(key, tmp / "file"),
                       kind="read")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return FileResponse(tmp / "file", media_type="application/octet-stream",
                        background=BackgroundTask(shutil.rmtree, tmp, ignore_errors=True))


@router.delete("/{path:path}")
async def delete_artifact(request: Request, path: str) -> Any:
    key = check_key(path)
    await off_loop(request, lambda: files_of(request).delete(key))
    return {}
