"""The one exception tree of mlharbor.

Every error a user can see is a subclass of :class:`MlharborError`. Each carries a stable,
machine-readable ``code`` and a message that says what happened, what was expected, what was
received and how to fix it. Adapters (HTTP, GraphQL, CLI) map these classes to their own shape in
one place each: ``mlharbor.core.status`` for HTTP statuses (every protocol adapter takes them
from there), ``mlharbor.cli.main`` for exit codes.

    MlharborError
    ├── InvalidInputError          bad argument, name, reference, request body, config value
    │   ├── InvalidNameError       a model / alias / file name that is not allowed
    │   ├── SchemaError            input that does not match a model signature
    │   ├── UnsupportedMediaTypeError  a request body in a content type the route cannot read
    │   └── ConfigError            settings or configuration files that cannot be used
    ├── NotFoundError              a model, version, alias, key ... that does not exist
    ├── ConflictError              the action contradicts stored state (alias in use, exists)
    ├── IntegrityError             stored bytes do not match their digest or signature
    ├── UnsafeArtifactError        loading would run untrusted code or escape the bundle
    ├── AuthenticationError        no or bad credentials
    ├── PermissionDeniedError      credentials fine, permission missing
    ├── LimitExceededError         rate limit, too many requests in flight
    │   └── PayloadTooLargeError   a request body over the size limit
    ├── TimeoutError_              work took longer than allowed
    └── UnavailableError           a backing service (database, object store, KMS) failed
        ├── ModelLoadingError      a model version still loading past the wait (Retry-After)
        └── ModelTooLargeError     a model version bigger than the server's memory budget
"""

from __future__ import annotations

from typing import Any


class MlharborError(Exception):
    """Base of every error mlharbor raises on purpose."""

    code: str = "error"

    def __init__(self, message: str, *, hint: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.details: dict[str, Any] = details

    def __str__(self) -> str:
        """The message, then the hint: the one place the two are joined, so a message always
        ends with punctuation before its hint (``... 'target']. Fix the spelling ...``)."""
        if self.hint:
            return f"{sentence(self.message)} {self.hint}"
        return self.message

    def to_dict(self) -> dict[str, Any]:
        """The JSON-safe form used in HTTP bodies and `--json` CLI output."""
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.hint:
            body["hint"] = self.hint
        if self.details:
            body["details"] = {k: _jsonable(v) for k, v in self.details.items()}
        return body


MAX_SHOWN = 80


def describe_value(value: object, limit: int = MAX_SHOWN) -> str:
    """``value`` as an error message may show it: short, escaped, never a whole repr.

    Messages echo what a user passed ("received ..."), but a DataFrame, a model or a
    ``ModelVersion`` with its manifest would fill kilobytes. Strings and numbers are shown as
    ``repr`` cut to ``limit`` characters; arrays and frames as their type and shape; any other
    object as its type, its length when it has one, and the start of its one-line repr:
    ``ModelVersion ModelVersion(name='churn', version=1, ...``.
    """
    if value is None or isinstance(value, bool | int | float):
        return _cut(repr(value), limit)
    if isinstance(value, str):
        return repr(value) if len(value) <= limit else repr(value[:limit]) + "..."
    kind = type(value).__name__
    shape = getattr(value, "shape", None)
    if isinstance(shape, tuple):
        return _cut(f"{kind} of shape {shape}", limit)
    try:
        count = len(value)  # type: ignore[arg-type]
        head = f"{kind} ({count} item{'' if count == 1 else 's'})"
    except Exception:  # no length, or a broken __len__: the type is enough
        head = kind
    try:
        preview = " ".join(repr(value).split())  # one line
    except Exception:  # a broken __repr__ must not hide the real error
        preview = ""
    if not preview or (preview.startswith("<") and " at 0x" in preview):
        return _cut(head, limit)  # the default repr says nothing the type does not
    return head + " " + _cut(preview, max(limit - len(head) - 1, 20))


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


_CLOSING = ".!?:;…"


def sentence(text: str) -> str:
    """``text`` ending with punctuation: a full stop is added unless one of ``.!?:;…`` ends it
    (trailing spaces dropped), so a hint can follow it."""
    text = text.rstrip()
    return text if not text or text.endswith(tuple(_CLOSING)) else text + "."


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


class InvalidInputError(MlharborError):
    code = "invalid_input"


class InvalidNameError(InvalidInputError):
    code = "invalid_name"


class SchemaError(InvalidInputError):
    code = "schema_mismatch"


class ConfigError(InvalidInputError):
    code = "invalid_config"


class UnsupportedMediaTypeError(InvalidInputError):
    code = "unsupported_media_type"


class NotFoundError(MlharborError):
    code = "not_found"


class ConflictError(MlharborError):
    code = "conflict"


class IntegrityError(MlharborError):
    code = "integrity_error"


class UnsafeArtifactError(MlharborError):
    code = "unsafe_artifact"


class AuthenticationError(MlharborError):
    code = "unauthenticated"


class PermissionDeniedError(MlharborError):
    code = "permission_denied"


class LimitExceededError(MlharborError):
    code = "limit_exceeded"

    def __init__(
        self, message: str, *, hint: str | None = None, retry_after: float | None = None,
        **details: Any,
    ) -> None:
        super().__init__(message, hint=hint, **details)
        self.retry_after = retry_after


class PayloadTooLargeError(LimitExceededError):
    code = "body_too_large"


class TimeoutError_(MlharborError):
    code = "timeout"


class UnavailableError(MlharborError):
    code = "unavailable"


class ModelLoadingError(UnavailableError):
    """A request's model version did not finish loading within the server's wait; the
    answer says when to retry (``retry_after`` seconds, sent as Retry-After)."""

    code = "model_loading"

    def __init__(
        self, message: str, *, hint: str | None = None, retry_after: float | None = None,
        **details: Any,
    ) -> None:
        super().__init__(message, hint=hint, **details)
        self.retry_after = retry_after


class ModelTooLargeError(UnavailableError):
    """A model version needs more memory than the server's whole model memory budget."""

    code = "model_too_large"


class CompactorUnavailable(UnavailableError):
    """The prediction log's compactor process could not run; the log compacts in-process."""

    code = "compactor_unavailable"


class CompactionFailed(UnavailableError):
    """Compaction ran but failed (the segment store is down, say); the journal keeps the rows
    and compaction is retried."""

    code = "compaction_failed"
