"""Structured logs: one JSON object per line, with the request id when there is one.

``configure_json_logging`` installs :class:`JsonFormatter` on the ``mlharbor`` logger (and
uvicorn's, so one process writes one format). Fields passed with ``extra=`` (``request_id``,
``endpoint``, ``event`` ...) become keys of the object. Secrets never reach logs: callers log
names and ids, never bodies or credentials.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson

_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                body[key] = value
        if record.exc_info:
            body["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(body, default=str).decode()


def configure_json_logging(level: int | str = logging.INFO,
                           stream: TextIO | None = None) -> logging.Handler:
    """Send ``mlharbor`` and ``uvicorn`` logs to ``stream`` (stderr) as JSON lines."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    for name in ("mlharbor", "uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.setLevel(level)
        logger.propagate = False
    return handler
