"""Records the stages hand to each other (see DESIGN.md section 1).

Frozen dataclasses, cheap to import, JSON-friendly through :func:`to_dict`.
"""

from __future__ import annotations

import dataclasses
import enum
from datetime import datetime
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class VersionStatus(enum.StrEnum):
    """Lifecycle of a model version: ``registering`` then ``ready`` or ``failed``."""

    REGISTERING = "registering"
    READY = "ready"
    FAILED = "failed"


@dataclasses.dataclass(frozen=True, slots=True)
class VersionFile:
    """One file of a version's bundle: its path inside the bundle, digest and size."""

    path: str
    sha256: str
    size: int


@dataclasses.dataclass(frozen=True, slots=True)
class RegisteredModel:
    name: str
    description: str
    tags: dict[str, str]
    created_at: datetime
    updated_at: datetime
    latest_version: int | None
    aliases: dict[str, int]


@dataclasses.dataclass(frozen=True, slots=True)
class ModelVersion:
    """One immutable version of a registered model and everything known about where it came from."""

    name: str
    version: int
    status: VersionStatus
    archived: bool
    description: str
    created_at: datetime
    created_by: str
    status_reason: str | None
    tags: dict[str, str]
    metrics: dict[str, float]
    params: dict[str, str]
    lineage: dict[str, Any]
    manifest: dict[str, Any] | None
    files: tuple[VersionFile, ...]
    aliases: tuple[str, ...]

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"


@dataclasses.dataclass(frozen=True, slots=True)
class AliasMove:
    """One entry of the deployment ledger: an alias set, moved or removed."""

    name: str
    alias: str
    from_version: int | None
    to_version: int | None
    actor: str
    reason: str
    at: datetime


@dataclasses.dataclass(frozen=True, slots=True)
class PredictionRecord:
    """One answered prediction, handed by serving to a sink (monitoring) and never waited on.

    ``inputs`` and ``outputs`` are as served (arrays or lists); the sink redacts and converts.
    ``model_ref`` is what the route asked for (``churn@champion``), ``served_version`` the
    version that answered. ``matrix`` is, for models of numbers only, the same inputs as the
    float64 matrix serving validated (one row per input row, columns in ``columns`` order),
    so the log can store its bytes instead of converting ``inputs`` a second time.

    ``error`` marks a copy that did not answer (today a shadow's failed copy): the error's
    class name only (``ValueError``, ``TimeoutError``), never its message, which may quote the
    inputs; such a record has no ``outputs`` and no ``inputs`` (the primary's record of the
    same request id holds them).
    """

    request_id: str
    endpoint: str
    model_ref: str
    served_version: int | None
    inputs: Any
    outputs: Any
    latency_s: float
    at: datetime
    shadow: bool = False
    fallback: str | None = None
    matrix: Any = None
    columns: tuple[str, ...] | None = None
    error: str | None = None

    def nbytes(self) -> int:
        """About how much memory the record holds, without walking its rows: arrays count
        their buffers; inputs as parsed JSON count ~80 bytes a value (a boxed number and its
        slot in a list or dict), a value count read from the first row. What the byte limits
        of the buffers between serving and the prediction log count."""
        size = 512  # the record, its strings and time
        matrix = self.matrix
        if matrix is not None:
            size += int(matrix.nbytes)
        inputs = self.inputs
        held = getattr(inputs, "matrix", inputs)  # serving's NumericRows holds its matrix
        if held is not matrix and inputs is not None:
            nbytes = getattr(held, "nbytes", None)
            if nbytes is not None:
                size += int(nbytes)
            elif type(inputs) is list and inputs:
                first = inputs[0]
                width = len(first) if type(first) in (dict, list) else 1
                size += 80 * width * len(inputs)
            elif type(inputs) is dict:
                size += 80 * sum(len(v) if type(v) is list else 1 for v in inputs.values())
        outputs = self.outputs
        for part in (getattr(outputs, "predictions", None),
                     getattr(outputs, "probabilities", None)):
            if part is not None:
                size += int(getattr(part, "nbytes", 0))
        return size


@dataclasses.dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """A page of results and the token for the next one (``None`` on the last page)."""

    items: list[T]
    next_page_token: str | None
    total: int



@dataclasses.dataclass(frozen=True, slots=True)
class DatasetPart:
    """One source of a :class:`DatasetSnapshot`: what it is, where it was read, its hash."""

    kind: str  # champion_data | production | dataset_uri
    uri: str
    fingerprint: str
    rows: int


@dataclasses.dataclass(frozen=True, slots=True)
class DatasetSnapshot:
    """Rows frozen for training: stored once, content-addressed, so a re-run reads the same.

    ``uri`` names the stored bytes (``artifact:sha256:<hex>`` for the artifact store);
    ``fingerprint`` is ``sha256:<hex>`` of those bytes; ``columns`` maps each column to its
    dtype; ``parts`` say where the rows came from.
    """

    uri: str
    fingerprint: str
    format: str
    rows: int
    columns: dict[str, str]
    target: str
    parts: tuple[DatasetPart, ...]
    created_at: datetime


@dataclasses.dataclass(frozen=True, slots=True)
class GateResult:
    gate: str
    passed: bool
    detail: str


@dataclasses.dataclass(frozen=True, slots=True)
class EvaluationReport:
    """A version judged against its champion and the naive baseline on one holdout.

    ``metrics``, ``baseline`` and ``champion`` are holdout metrics of the version, the
    baseline and the champion (``None`` without one); ``gates`` are the verdicts;
    ``passed`` whether every gate passed; ``reason`` says why not.
    """

    ref: str
    primary_metric: str
    metrics: dict[str, float]
    baseline: dict[str, float]
    champion_ref: str | None
    champion: dict[str, float] | None
    gates: tuple[GateResult, ...]
    passed: bool
    reason: str | None
    holdout_rows: int | None = None

def to_dict(record: Any) -> Any:
    """JSON-friendly form of a record (datetimes as ISO 8601, enums as values)."""
    if dataclasses.is_dataclass(record) and not isinstance(record, type):
        return {f.name: to_dict(getattr(record, f.name)) for f in dataclasses.fields(record)}
    if isinstance(record, enum.Enum):
        return record.value
    if isinstance(record, datetime):
        return record.isoformat()
    if isinstance(record, dict):
        return {str(k): to_dict(v) for k, v in record.items()}
    if isinstance(record, list | tuple):
        return [to_dict(v) for v in record]
    return record
