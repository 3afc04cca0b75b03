"""The HTTP status of every error class, drawn once.

The control-plane API, each serving protocol and GraphQL render errors in their own shapes, but
all take the status from :func:`status_for`, so the same mistake gets the same status
everywhere.
"""

from __future__ import annotations

from mlharbor.core import errors

STATUS_BY_ERROR: dict[type[errors.MlharborError], int] = {
    errors.InvalidInputError: 400,
    errors.SchemaError: 422,
    errors.UnsupportedMediaTypeError: 415,
    errors.NotFoundError: 404,
    errors.ConflictError: 409,
    errors.IntegrityError: 409,
    errors.UnsafeArtifactError: 422,
    errors.AuthenticationError: 401,
    errors.PermissionDeniedError: 403,
    errors.PayloadTooLargeError: 413,
    errors.LimitExceededError: 429,
    errors.TimeoutError_: 504,
    errors.UnavailableError: 503,
}


def status_for(exc: BaseException) -> int:
    """The status for ``exc`` (most specific class wins); 400 for other mlharbor errors."""
    for cls in type(exc).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls]
    return 400 if isinstance(exc, errors.MlharborError) else 500
