"""Record the HTTP requests the MLflow client sends, and replay them to time a server's own
answers.

End to end, the MLflow client's own work (building protobuf messages, ``requests``, parsing
900 runs from JSON) is part of every figure and the same for every server. To see what each
server itself takes for the very same requests, :class:`Recorder` keeps every request the
client sent during a phase (method, path, headers, body bytes, as ``requests`` prepared them)
and :func:`replay` sends them again, one at a time on one keep-alive connection
(``http.client``: the leanest client in the standard library), timing each answer from the
first byte sent to the last byte read. A logging phase is replayed into a fresh run of the
same experiment (its id swapped into the bodies: same length, same work), so the server
writes what it wrote the first time instead of finding duplicates; a search is replayed
as it was. Replaying to the no-op server gives the replay client's own share.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # with the query string
    headers: dict[str, str]
    body: bytes


@dataclass
class Recorder:
    """The requests the MLflow client sent, by phase (``with recorder.phase(name):``)."""

    phases: dict[str, list[Request]] = field(default_factory=dict)
    #: Seconds the client spent inside ``Session.send`` (waiting for the server) per phase:
    #: the phase's time less this is the client's own work between requests.
    waited: dict[str, float] = field(default_factory=dict)
    _current: list[Request] | None = None
    _name: str | None = None

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self._current = self.phases.setdefault(name, [])
        self._name = name
        try:
            yield
        finally:
            self._current = None
            self._name = None

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """Record what ``requests`` sends while inside (``Session.send``, after MLflow
        prepared the request: the bytes that went on the wire)."""
        import requests

        original = requests.Session.send
        recorder = self

        def send(session: Any, prepared: Any, **kwargs: Any) -> Any:
            if recorder._current is not None:
                parts = urlsplit(prepared.url)
                body = prepared.body or b""
                recorder._current.append(Request(
                    prepared.method, parts.path + (f"?{parts.query}" if parts.query else ""),
                    {k: v for k, v in prepared.headers.items()
                     if k.lower() not in ("connection", "accept-encoding")},
                    body.encode() if isinstance(body, str) else bytes(body)))
            start = time.perf_counter()
            try:
                return original(session, prepared, **kwargs)
            finally:
                if recorder._name is not None:
                    recorder.waited[recorder._name] = (recorder.waited.get(
                        recorder._name, 0.0) + time.perf_counter() - start)

        requests.Session.send = send  # type: ignore[method-assign,assignment]
        try:
            yield
        finally:
            requests.Session.send = original  # type: ignore[method-assign]


@dataclass(frozen=True)
class Timing:
    """A replay: how many requests, their total, per-request median and mean, in seconds,
    and the pause between requests it kept (``pace_s``)."""

    calls: int
    total_s: float
    median_s: float
    statuses: dict[int, int]
    pace_s: float = 0.0

    @property
    def mean_s(self) -> float:
        return self.total_s / self.calls if self.calls else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"calls": self.calls, "total_s": self.total_s, "median_s": self.median_s,
                "mean_s": self.mean_s, "pace_s": self.pace_s,
                "statuses": {str(k): v for k, v in self.statuses.items()}}


def replay(url: str, requests_: list[Request], *, swap: tuple[str, str] | None = None,
           limit: int | None = None, pace_s: float = 0.0) -> Timing:
    """Send ``requests_`` (the first ``limit``) to ``url`` one at a time on one connection;
    ``swap`` replaces a run id with another in paths and bodies. ``pace_s``: after each
    answer, keep this process's CPU busy that long before the next request, as the MLflow
    client does while it builds the next call (back to back, a server's threads never go
    idle between requests; at the client's pace they do, see the README)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=600)
    times: list[float] = []
    statuses: dict[int, int] = {}
    try:
        for req in requests_[:limit]:
            body, path = req.body, req.path
            if swap is not None:
                body = body.replace(swap[0].encode(), swap[1].encode())
                path = path.replace(swap[0], swap[1])
            start = time.perf_counter()
            conn.request(req.method, path, body=body or None, headers=req.headers)
            response = conn.getresponse()
            response.read()
            times.append(time.perf_counter() - start)
            statuses[response.status] = statuses.get(response.status, 0) + 1
            if pace_s > 0:
                until = time.perf_counter() + pace_s
                while time.perf_counter() < until:  # busy, as the client is: not a sleep
                    pass
    finally:
        conn.close()
    return Timing(len(times), sum(times), statistics.median(times) if times else 0.0,
                  statuses, pace_s)


def run_id_of(requests_: list[Request]) -> str | None:
    """The run id the phase's requests name (the first ``run_id`` in a body)."""
    for req in requests_:
        with contextlib.suppress(ValueError):
            body = json.loads(req.body or b"{}")
            if isinstance(body, dict) and isinstance(body.get("run_id"), str):
                return str(body["run_id"])
    return None


def fresh_run(url: str, headers: dict[str, str], experiment_id: str) -> str:
    """A new run in ``experiment_id`` (what a replayed logging phase writes into)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=60)
    try:
        conn.request("POST", "/api/2.0/mlflow/runs/create", body=json.dumps(
            {"experiment_id": experiment_id, "start_time": int(time.time() * 1000)}),
            headers={**headers, "Content-Type": "application/json"})
        response = conn.getresponse()
        answer = json.loads(response.read())
    finally:
        conn.close()
    return str(answer["run"]["info"]["run_id"])
