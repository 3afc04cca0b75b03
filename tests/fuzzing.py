"""One fuzz harness for both apps: every route, no 5xx, no hang.

:class:`RouteFuzzer` drives each operation of an app's OpenAPI document (schemathesis builds
the cases) against a live server on a loopback port, in four passes per operation:

- ``positive`` / ``negative``: schemathesis' own valid and invalid cases (``max_examples``
  each, seeded with ``derandomize``);
- ``hostile``: a valid case with one parameter or the JSON body replaced by a hostile value
  (:data:`HOSTILE` and :func:`hostile_json`: integers past 64 bits, ``.``-like path segments,
  mixed-type JSON, label-shaped bodies with a number and a string);
- ``sweep``: deterministic, so a class of bug cannot hide behind the draw: every parameter of
  every operation gets every value of :data:`HOSTILE` once, every leaf of a JSON body (up to
  24) a hostile value and every list of integers an overflowing one (``[2**32, 2**32]``,
  ``[2**62, 4]``), with the other parameters set to
  values that exist (``known``: a real model, version, alias, file and endpoint), so the
  request reaches the code behind the 404s.

A last pass calls every parameterless-or-known GET again: a request that poisoned stored state
(feedback that broke the performance route for good) shows up there as a 5xx.

Every request has a timeout (a hang is a finding). Findings are collected, not raised at the
first one, so one run lists every route that fails; the test then fails listing them, with
the last line of the server-side traceback captured from the log.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
import traceback
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable

#: Seconds a request may take before it counts as a hang.
REQUEST_TIMEOUT = 20.0

#: Values every parameter and JSON field gets in the sweep (and the hostile pass draws from).
HOSTILE: tuple[Any, ...] = (
    2**63 - 1, 2**63, 2**64, 2**64 + 1, -(2**63) - 1, 10**30, 4294967296, 2**62, -1, 0,
    ".", "..", "%2E", "%2E%2E", "./", "a/../..", "", " ", "\u00e9\u00e8", "x" * 300,
    "1e309", "NaN", "-0",
)

_scalars = st.one_of(
    st.none(), st.booleans(), st.text(max_size=20),
    st.integers(), st.integers(min_value=2**62, max_value=2**80),
    st.integers(max_value=-(2**63) + 5, min_value=-(2**80)),
    st.floats(allow_nan=False, allow_infinity=False), st.sampled_from(HOSTILE),
)


#: A hostile value for one parameter: from the list, or any scalar.
_hostile_value = st.one_of(st.sampled_from(HOSTILE), _scalars)


@functools.cache  # built once: hypothesis validates a strategy object once, not every draw
def hostile_json() -> st.SearchStrategy[Any]:
    """JSON with huge integers, deep nesting and mixed types; a share of it shaped like the
    bodies the routes take (labels, tensors, records) so it gets past the first check."""
    anything = st.recursive(_scalars, lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
        max_leaves=12)
    mixed = st.lists(st.one_of(st.integers(), st.text(max_size=5)), min_size=2, max_size=4)
    label = st.fixed_dictionaries({"request_id": st.one_of(st.sampled_from(["r0", "r1"]),
                                                           st.text(min_size=1, max_size=8)),
                                   "label": _scalars})
    labels = st.one_of(
        st.builds(lambda ls: {"labels": ls}, st.lists(label, min_size=1, max_size=4)),
        st.builds(lambda a, b: {"labels": [{"request_id": "r0", "label": a},
                                           {"request_id": "r1", "label": b}]},
                  st.integers(-3, 3), st.text(max_size=4)),
    )
    tensor = st.builds(lambda shape, data: {"inputs": [{"name": "input-0", "shape": shape,
                                                        "datatype": "FP64", "data": data}]},
                       st.lists(st.one_of(st.integers(-1, 4), st.sampled_from(
                           [2**32, 2**62, 2**63, 2**64])), max_size=3),
                       st.lists(st.floats(allow_nan=False, allow_infinity=False), max_size=4))
    records = st.lists(st.dictionaries(st.text(max_size=4), _scalars, max_size=3), max_size=3)
    return st.one_of(anything, mixed, labels, tensor, records)


@dataclass
class Finding:
    """One request answered with a 5xx (or not answered in time)."""

    operation: str
    mode: str
    status: int | str
    request: str
    server_error: str = ""
    known: str = ""

    def __str__(self) -> str:
        known = f" [known: {self.known}]" if self.known else ""
        return (f"{self.operation} ({self.mode}) -> {self.status}{known}\n    {self.request}"
                f"\n    server: {self.server_error or '(no traceback logged)'}")


class _Errors(logging.Handler):
    """Keeps the server-side exceptions logged while one request runs."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def last(self) -> str:
        for record in reversed(self.records):
            if record.exc_info and record.exc_info[1] is not None:
                frames = traceback.extract_tb(record.exc_info[2])
                where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"
                return f"{type(record.exc_info[1]).__name__}: {record.exc_info[1]!s:.200} " \
                       f"at {where}"
        return self.records[-1].getMessage()[:300] if self.records else ""


@dataclass
class RouteFuzzer:
    """Fuzzes the operations of ``schema`` (a schemathesis schema) at ``base_url``."""

    schema: Any
    base_url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    known: Mapping[str, Any] = field(default_factory=dict)
    known_failures: Mapping[str, str] = field(default_factory=dict)
    max_examples: int = 10
    hostile_examples: int = 15
    sweep: bool = True
    findings: list[Finding] = field(default_factory=list)
    calls: dict[str, int] = field(default_factory=dict)
    statuses: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.session = requests.Session()
        self.session.trust_env = False  # loopback: no proxy or .netrc look-up per request
        self.errors = _Errors()

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        # uvicorn's own loggers do not propagate to the root: watch both.
        loggers = [logging.getLogger(), logging.getLogger("uvicorn")]
        for logger in loggers:
            logger.addHandler(self.errors)
        try:
            yield
        finally:
            for logger in loggers:
                logger.removeHandler(self.errors)

    def operations(self) -> list[Any]:
        return [result.ok() for result in self.schema.get_all_operations()]

    def run(self, operations: list[Any] | None = None) -> list[Finding]:
        """Every pass over every operation; returns the findings (also kept)."""
        from schemathesis import GenerationMode

        operations = operations if operations is not None else self.operations()
        with self.watching():
            for op in operations:
                for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                    self._drive(op, mode.name.lower(),
                                op.as_strategy(generation_mode=mode), self.max_examples)
                self._drive(op, "hostile", self._hostile(op), self.hostile_examples)
            for op in operations if self.sweep else ():
                self._sweep(op)
            for op in operations:  # poisoned state shows up as a 5xx on a later read
                if op.method.upper() == "GET":
                    self._drive(op, "after", self._known_case(op), 1)
        return self.findings

    # -- strategies -----------------------------------------------------------------------

    def _known_case(self, op: Any) -> st.SearchStrategy[Any]:
        return op.as_strategy().map(lambda case: self._with_known(op, case))

    def _with_known(self, op: Any, case: Any) -> Any:
        for name in list(case.path_parameters or {}):
            if name in self.known:
                case.path_parameters[name] = self.known[name]
        return case

    def _hostile(self, op: Any) -> st.SearchStrategy[Any]:
        targets = self._targets(op)

        def mutate(case: Any, data: Any) -> Any:
            case = self._with_known(op, case)
            if not targets:
                return case
            where, name = data.draw(st.sampled_from(targets))
            if where == "body":
                case.body = data.draw(hostile_json())
                case.media_type = "application/json"
            else:
                _set(case, where, name, data.draw(_hostile_value))
            return case

        return st.builds(mutate, op.as_strategy(), st.data())

    def _targets(self, op: Any) -> list[tuple[str, str]]:
        targets = [(p.location, p.name) for p in op.iter_parameters()
                   if p.location in ("path", "query")]
        media = [b.media_type for b in op.body] if op.body else []
        if op.method.upper() in ("POST", "PUT", "PATCH") and (
                not media or any("json" in m for m in media)):
            targets.append(("body", ""))
        return targets

    # -- running --------------------------------------------------------------------------

    def _drive(self, op: Any, mode: str, strategy: st.SearchStrategy[Any], n: int) -> None:
        key = f"{op.method.upper()} {op.path}"

        @given(case=strategy)
        @settings(max_examples=n, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        def run(case: Any) -> None:
            self._send(key, mode, case)

        with contextlib.suppress(Unsatisfiable):
            run()

    def _sweep(self, op: Any) -> None:
        """Every hostile value in every parameter and JSON field, others set to known ones."""
        key = f"{op.method.upper()} {op.path}"
        base: list[Any] = []

        @given(case=self._known_case(op))
        @settings(max_examples=1, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        def first(case: Any) -> None:
            base.append(case)

        with contextlib.suppress(Unsatisfiable):
            first()
        if not base:
            return
        case = base[0]
        for where, name in self._targets(op):
            if where == "body":
                bodies: list[Any] = [[1, "a"], {"labels": [{"request_id": "r0", "label": 1},
                                                           {"request_id": "r1", "label": "a"}]}]
                bodies += list(_leaf_variants(case.body))
                for body in bodies:
                    with _changed(case, body=body, media_type="application/json"):
                        self._send(key, "sweep", case)
                continue
            for value in HOSTILE:
                attribute = "path_parameters" if where == "path" else "query"
                with _changed(case, **{attribute: {**(getattr(case, attribute) or {}),
                                                   name: value}}):
                    self._send(key, "sweep", case)

    def _send(self, key: str, mode: str, case: Any) -> None:
        self.calls[f"{key} {mode}"] = self.calls.get(f"{key} {mode}", 0) + 1
        self.errors.records.clear()
        try:
            response = case.call(base_url=self.base_url, session=self.session,
                                 headers=dict(self.headers), timeout=REQUEST_TIMEOUT)
        except requests.exceptions.InvalidJSONError:
            return  # a body JSON cannot carry (inf): the client refused to send it
        except requests.Timeout:
            self._found(key, mode, "timeout (hang)", case)
            return
        except requests.RequestException as exc:  # the server dropped the connection
            self._found(key, mode, f"{type(exc).__name__}", case)
            return
        self.statuses[response.status_code] = self.statuses.get(response.status_code, 0) + 1
        # 503 (a backing service down, not ready yet) and 504 (work over its time limit) are
        # answers the error map gives on purpose; every other 5xx is a crash.
        if response.status_code >= 500 and response.status_code not in (503, 504):
            self._found(key, mode, response.status_code, case)

    def _found(self, key: str, mode: str, status: int | str, case: Any) -> None:
        if sum(f.operation == key for f in self.findings) >= 3:
            return  # three inputs are enough to route it; keep the report readable
        try:
            request = case.as_curl_command(headers={})
        except Exception:  # a case schemathesis cannot print is still a finding
            request = repr(case)
        for _ in range(25):  # a server logs the exception as or after it answers
            if self.errors.records:
                break
            time.sleep(0.02)
        known = next((why for pattern, why in self.known_failures.items() if pattern in key), "")
        self.findings.append(Finding(key, mode, status, request[:400], self.errors.last(), known))


def _set(case: Any, where: str, name: str, value: Any) -> None:
    if where == "path":
        case.path_parameters = {**(case.path_parameters or {}), name: value}
    else:
        case.query = {**(case.query or {}), name: value}


#: What every list of integers in a body is replaced with (element counts that overflow).
_OVERFLOWING_LISTS: tuple[list[int], ...] = ([4294967296, 4294967296], [2**62, 4], [2**64])


def _leaf_variants(body: Any, limit: int = 24) -> Iterator[Any]:
    """``body`` with one leaf at a time replaced by a hostile value, and each list of
    integers by an overflowing one (a tensor shape, a row index), depth first."""
    import copy

    paths: list[tuple[Any, ...]] = []

    def walk(node: Any, path: tuple[Any, ...]) -> None:
        if len(paths) >= limit:
            return
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, (*path, key))
        elif isinstance(node, list) and node and all(
                isinstance(v, int) and not isinstance(v, bool) for v in node):
            paths.append(path)
        elif isinstance(node, list):
            for i, value in enumerate(node[:4]):
                walk(value, (*path, i))
        else:
            paths.append(path)

    walk(body, ())
    for path in paths:
        if not path:
            continue
        parent_path, last = path[:-1], path[-1]
        for value in (*HOSTILE[:7], *_OVERFLOWING_LISTS):
            variant = copy.deepcopy(body)
            parent = variant
            for step in parent_path:
                parent = parent[step]
            parent[last] = value
            yield variant


@contextlib.contextmanager
def _changed(case: Any, **changes: Any) -> Iterator[None]:
    """``case`` with some attributes changed for one request (schemathesis cases do not copy)."""
    saved = {name: getattr(case, name) for name in changes}
    for name, value in changes.items():
        setattr(case, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(case, name, value)


def report(findings: list[Finding], calls: Mapping[str, int]) -> str:
    lines = [f"{len(findings)} requests got a 5xx or no answer "
             f"({sum(calls.values())} requests sent):"]
    lines += [str(f) for f in findings]
    return "\n".join(lines)

