"""Query parameter types the read routes share, checked before a route runs.

A bad query parameter is the caller's mistake in the request's shape, like a missing field: it
is answered 422 by the framework's validation handler (:mod:`mlharbor.api.errors`), naming the
parameter, what was expected and what was received. Checks that need two parameters at once
(a step longer than its window) raise :func:`invalid_query` for the same answer.
"""

from __future__ import annotations

from typing import Annotated, Any, NoReturn

from pydantic import AfterValidator


def _duration(text: str) -> str:
    from mlharbor.core.errors import InvalidInputError
    from mlharbor.monitoring.windows import parse_duration

    try:
        parse_duration(text)
    except InvalidInputError as exc:
        # Pydantic turns a ValueError into a validation error naming the parameter.
        raise ValueError(str(exc)) from exc
    return text


#: ``90s``, ``15m``, ``24h``, ``7d``, ``2w``: checked with monitoring's own parser.
Duration = Annotated[str, AfterValidator(_duration)]


def invalid_query(field: str, message: str, received: Any) -> NoReturn:
    """Refuse the request (422) for query parameter ``field``, as validation would."""
    from fastapi.exceptions import RequestValidationError

    raise RequestValidationError([{"type": "value_error", "loc": ("query", field),
                                   "msg": message, "input": received}])
