"""Request ids the server makes up (the client sent none): 32 hex digits, never the same twice,
across threads (each loop of a process draws from one pool) and across a fork (uvicorn's
workers: a child empties the pool it inherited)."""

from __future__ import annotations

import os
import re
import threading

from mlharbor.core.requestids import request_id as _request_id

HEX32 = re.compile(r"[0-9a-f]{32}")


def test_ids_are_unique_across_threads() -> None:
    seen: list[list[str]] = [[] for _ in range(4)]

    def draw(out: list[str]) -> None:
        out.extend(_request_id([]) for _ in range(3000))

    threads = [threading.Thread(target=draw, args=(out,)) for out in seen]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ids = [i for out in seen for i in out]
    assert len(set(ids)) == len(ids) == 12_000
    assert all(HEX32.fullmatch(i) for i in ids)


def test_a_forked_child_does_not_repeat_its_parents_ids() -> None:
    _request_id([])  # the parent's pool is filled
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent
        try:
            os.write(write, "".join(_request_id([]) for _ in range(8)).encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read) as pipe:
        child = pipe.read()
    parent = "".join(_request_id([]) for _ in range(8))
    child_ids = {child[i:i + 32] for i in range(0, len(child), 32)}
    parent_ids = {parent[i:i + 32] for i in range(0, len(parent), 32)}
    assert len(child_ids) == 8 and not child_ids & parent_ids


def test_a_safe_client_id_is_kept() -> None:
    assert _request_id([(b"x-request-id", b"abc-123")]) == "abc-123"
    assert HEX32.fullmatch(_request_id([(b"x-request-id", b"bad id!")]))
