"""The synchronous prediction core of serverless handlers (Lambda, Azure Functions).

A serverless instance answers one request at a time, so it needs no batching, routing or
polling: it loads one version once (at cold start) through the formats ``Predictor`` and
answers JSON bodies. Accepted bodies, the same as the native and MLflow protocols:
``{"inputs": ...}``, ``{"instances": [...]}``, ``{"dataframe_records": [...]}``,
``{"dataframe_split": {"columns": [...], "data": [...]}}``, a list of records, or one record.
Answers are ``{"model", "version", "predictions"[, "probabilities", "classes"]}``.

Errors become ``(status, {"error": {"code", "message"[, "hint"]}})``, never an exception.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlharbor.core import errors

if TYPE_CHECKING:
    from mlharbor.formats.predictor import Predictor
    from mlharbor.settings import Settings

IMAGE_BAKED_DIR = Path("/opt/mlharbor/model")
# Mirrors the HTTP status table of the API (api/errors.py), which deploy may not import.
STATUS = {
    errors.InvalidInputError: 400, errors.AuthenticationError: 401,
    errors.PermissionDeniedError: 403, errors.NotFoundError: 404, errors.ConflictError: 409,
    errors.LimitExceededError: 429, errors.TimeoutError_: 504, errors.UnavailableError: 503,
    errors.IntegrityError: 500, errors.UnsafeArtifactError: 500,
}
MAX_BODY_BYTES = 6 * 1024 * 1024  # Lambda's own synchronous payload limit


def status_for(exc: errors.MlharborError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


@dataclasses.dataclass(slots=True)
class PredictionService:
    ref: str
    name: str
    version: int
    predictor: Predictor

    @classmethod
    def from_settings(cls, settings: Settings, ref: str) -> PredictionService:
        from mlharbor.bootstrap import open_registry
        from mlharbor.registry.bundles import load_predictor

        registry = open_registry(settings)
        try:
            mv = registry.get_version(ref)
            predictor = load_predictor(registry, ref, settings)
        finally:
            registry.close()
        return cls(ref, mv.name, mv.version, predictor)

    @classmethod
    def from_environment(cls, environ: dict[str, str]) -> PredictionService:
        """The entry point of a serverless instance: settings from the environment, once.

        A baked registry (the image's ``/opt/mlharbor/model``, or ``model/`` next to an Azure
        Functions app) is used unless ``MLHARBOR_DATABASE_URL`` names a shared one; its
        database is copied to a writable temporary folder first (SQLite writes beside it).
        """
        from mlharbor.settings import load_settings

        ref = environ.get("MLHARBOR_MODEL_REF")
        if not ref:
            raise errors.ConfigError("MLHARBOR_MODEL_REF is not set; it names the version "
                                     "to serve (churn@champion).")
        overrides: dict[str, Any] = {}
        baked = _baked_dir(environ)
        home = Path(environ.get("MLHARBOR_HOME") or tempfile.gettempdir()) / "mlharbor"
        if "MLHARBOR_DATABASE_URL" not in environ and baked is not None:
            home.mkdir(parents=True, exist_ok=True)
            db = home / "baked.db"
            shutil.copyfile(baked / "mlharbor.db", db)
            overrides = {"home": home, "database_url": f"sqlite:///{db}",
                         "artifact_uri": environ.get("MLHARBOR_ARTIFACT_URI",
                                                     str(baked / "artifacts"))}
        return cls.from_settings(load_settings(**overrides), ref)

    def health(self) -> tuple[int, dict[str, Any]]:
        return 200, {"status": "ready", "model": self.name, "version": self.version}

    def predict_body(self, body: bytes | str | None) -> tuple[int, dict[str, Any]]:
        """Answer one JSON body; any error becomes a status and an error body."""
        try:
            return 200, self.predict(parse_body(body))
        except errors.MlharborError as exc:
            return status_for(exc), {"error": exc.to_dict()}

    def predict(self, data: Any) -> dict[str, Any]:
        """Labels and probabilities from :meth:`Predictor.outputs`, the code path serving
        uses: the model's own ``predict`` and ``predict_proba`` of the same rows."""
        outputs = self.predictor.outputs(data)
        answer: dict[str, Any] = {"model": self.name, "version": self.version,
                                  "predictions": outputs.predictions.tolist()}
        if outputs.probabilities is not None:
            answer["probabilities"] = outputs.probabilities.tolist()
            if self.predictor.classes is not None:
                answer["classes"] = list(self.predictor.classes)
        return answer


def parse_body(body: bytes | str | None) -> Any:
    if body is None or not str(body).strip():
        raise errors.InvalidInputError("The request body is empty; send JSON rows.",
                                       field="body", expected='{"inputs": [...]}')
    if len(body) > MAX_BODY_BYTES:
        raise errors.LimitExceededError(f"The body is {len(body)} bytes; at most "
                                        f"{MAX_BODY_BYTES} are accepted.")
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise errors.InvalidInputError(f"The request body is not JSON: {exc}.", field="body",
                                       expected="JSON") from exc
    if isinstance(data, dict):
        for key in ("inputs", "instances", "dataframe_records"):
            if key in data:
                return data[key]
        if "dataframe_split" in data:
            split = data["dataframe_split"]
            if not isinstance(split, dict) or "columns" not in split or "data" not in split:
                raise errors.InvalidInputError(
                    "dataframe_split needs 'columns' and 'data'.", field="dataframe_split")
            return [dict(zip(split["columns"], row, strict=True)) for row in split["data"]]
    return data


def _baked_dir(environ: dict[str, str]) -> Path | None:
    """MLHARBOR_BAKED_DIR, else the image's folder, else ``model/`` in the app's root (Azure
    Functions names it AzureWebJobsScriptRoot and starts the worker there)."""
    named = environ.get("MLHARBOR_BAKED_DIR")
    app_root = Path(environ.get("AzureWebJobsScriptRoot") or Path.cwd())
    for candidate in ([Path(named)] if named else [IMAGE_BAKED_DIR, app_root / "model"]):
        if (candidate / "mlharbor.db").is_file():
            return candidate
    return None
