"""A JSON response rendered with orjson (FastAPI's own ORJSONResponse is deprecated).

orjson refuses integers outside the 64-bit range (``Integer exceeds 64-bit range``), and an
error body may echo back what a client sent (``{"version": 18446744073709551616}``). A body
orjson cannot encode is rendered once more with every such value as its text, so the client
gets its 4xx instead of a 500 raised while rendering the error.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import JSONResponse

_OPTIONS = orjson.OPT_NON_STR_KEYS


class JsonResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        try:
            return orjson.dumps(content, option=_OPTIONS, default=str)
        except orjson.JSONEncodeError:
            return orjson.dumps(encodable(content), option=_OPTIONS, default=str)


def encodable(value: Any) -> Any:
    """``value`` with integers orjson cannot encode (outside [-2**63, 2**64)) as text, and
    mapping keys as text; containers are copied, everything else is left to orjson."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**64 else str(value)
    if isinstance(value, dict):
        return {k if isinstance(k, str) else str(encodable(k)): encodable(v)
                for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [encodable(v) for v in value]
    return value
