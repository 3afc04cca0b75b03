"""Query parameter types the read routes share, checked before a route runs.

A bad query parameter is the caller's mistake in the request's shape, like a missing field: it
is answered 422 by the framework's validation handler (:mod:`mlharbor.api.errors`), naming the
parameter, what was expected and what was received. Checks that need two parameters at once
(a step longer than its window) raise :func:`invalid_query` for the same answer, and so does
a request for more windows than ``monitoring.max_windows`` (:func:`window_limit`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
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


def query_error(field: str, message: str, received: Any) -> Exception:
    """The 422 refusal of query parameter ``field``, as validation would answer it."""
    from fastapi.exceptions import RequestValidationError

    return RequestValidationError([{"type": "value_error", "loc": ("query", field),
                                    "msg": message, "input": received}])


def invalid_query(field: str, message: str, received: Any) -> NoReturn:
    """Refuse the request (422) for query parameter ``field``, as validation would."""
    raise query_error(field, message, received)


@contextmanager
def window_limit() -> Iterator[None]:
    """Answer a request for more windows than ``monitoring.max_windows`` (the one cap,
    enforced by :mod:`mlharbor.monitoring.windows` for every windowed computation) with 422
    naming the parameter, like any query the route cannot serve."""
    from mlharbor.monitoring.windows import WindowLimitError

    try:
        yield
    except WindowLimitError as exc:
        field = str(exc.details.get("field") or "step")
        raise query_error(field, str(exc), exc.details.get("received")) from exc
