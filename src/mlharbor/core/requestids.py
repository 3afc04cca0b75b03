"""Request ids for both servers: the client's ``X-Request-ID`` when sane, otherwise a random
128-bit id, echoed back and carried in logs so a request can be followed end to end."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator

_SAFE_ID = re.compile(rb"[A-Za-z0-9._-]{1,64}")


def request_id(headers: Iterable[tuple[bytes, bytes]]) -> str:
    """The request's own ``X-Request-ID`` if it is 1-64 of ``[A-Za-z0-9._-]``, else a new
    random id (32 hex digits)."""
    for key, value in headers:
        if key == b"x-request-id":
            if _SAFE_ID.fullmatch(value):
                return bytes(value).decode()
            break
    return _random_ids.next()


class _RandomIds:
    """128-bit random request ids (32 hex digits) from the kernel's generator, read 256 ids at
    a time: ``os.urandom`` per request was a ``getrandom`` system call on every request the
    client gave no id. Ids are handed out by a list iterator, whose ``next`` is one C call
    under the interpreter lock, so loops in several threads never get the same id; the pool
    is emptied in a forked child (uvicorn's workers), so processes never share ids."""

    BATCH = 256

    def __init__(self) -> None:
        self._ids: Iterator[str] = iter(())
        self._hooked = False  # the fork hook is registered with the first pool, not on import

    def _forget(self) -> None:
        self._ids = iter(())

    def next(self) -> str:
        try:
            return next(self._ids)
        except StopIteration:
            if not self._hooked:
                self._hooked = True
                os.register_at_fork(after_in_child=self._forget)
            pool = os.urandom(16 * self.BATCH).hex()
            self._ids = iter([pool[i:i + 32] for i in range(0, len(pool), 32)])
            return next(self._ids)


_random_ids = _RandomIds()
