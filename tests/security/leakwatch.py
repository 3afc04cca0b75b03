"""Watching for secrets: every secret a fixture creates is remembered, every log record and
HTTP body the tests see is kept, and at the end they are searched for every secret.

Per pytest process (each xdist worker checks what it saw). ``find_leaks`` is the one search;
``tests/test_no_secrets_leak.py`` proves it finds a planted secret, then runs it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import Any

SECRETS: set[str] = set()
TEXTS: list[tuple[str, str]] = []  # (where, text)
_lock = threading.Lock()
MIN_SECRET_LEN = 16


def remember_secret(secret: str) -> str:
    """Remember a secret (and its distinctive tail) to search for later; returns it."""
    if len(secret) >= MIN_SECRET_LEN:
        with _lock:
            SECRETS.add(secret)
    return secret


def observe(where: str, text: str) -> None:
    with _lock:
        TEXTS.append((where, text))


def find_leaks(secrets: Iterable[str] | None = None,
               texts: Iterable[tuple[str, str]] | None = None) -> list[str]:
    """``where`` of each text containing a secret, or a 16-character piece of one."""
    wanted = list(SECRETS if secrets is None else secrets)
    found = []
    for where, text in list(TEXTS if texts is None else texts):
        for secret in wanted:
            # Any 16-character window: catches a key cut short or embedded in other text.
            pieces = {secret[i:i + MIN_SECRET_LEN]
                      for i in range(0, len(secret) - MIN_SECRET_LEN + 1, 8)}
            if secret in text or any(p in text for p in pieces):
                found.append(where)
                break
    return found


class CollectingHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
        except Exception:  # a broken record is still worth searching
            text = f"{record.msg!r} {record.args!r}"
        observe(f"log {record.name}:{record.levelname}", text)


HANDLER = CollectingHandler(level=logging.DEBUG)
HANDLER.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))


def install_log_capture() -> None:
    root = logging.getLogger()
    if HANDLER not in root.handlers:
        root.addHandler(HANDLER)
    for name in ("mlharbor", "uvicorn", "uvicorn.error", "uvicorn.access", "fastapi"):
        logging.getLogger(name).setLevel(logging.DEBUG)


def body_hook(response: Any) -> None:
    """httpx response hook: keep every body (sync clients)."""
    response.read()
    observe(f"http {response.request.method} {response.request.url.path} "
            f"-> {response.status_code}", response.text + repr(dict(response.headers)))
