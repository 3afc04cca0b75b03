"""Every route of the serving app, fuzzed (schemathesis through :mod:`tests.fuzzing`, GraphQL
with hypothesis): no input makes a 5xx or a hang."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from mlharbor.settings import Settings
from tests.fuzzing import REQUEST_TIMEOUT, RouteFuzzer, report
from tests.support import LiveServer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fuzz_server(base_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The serving app with its security middleware on (an admin key in ``server.key``)."""
    from mlharbor.bootstrap import open_identities, open_registry
    from mlharbor.serving.app import create_serving_app

    home = tmp_path_factory.mktemp("fuzz") / "home"
    shutil.copytree(base_home, home)
    config = Settings(home=home)
    registry = open_registry(config)
    identities = open_identities(registry)
    identities.create_identity("fuzz-admin", grants=["admin"], actor="test")
    _info, key = identities.create_key("fuzz-admin", actor="test")
    with LiveServer(create_serving_app(config, registry, ref="churn@champion",
                                       identities=identities)) as server:
        server.key = key  # type: ignore[attr-defined]
        yield server
    registry.close()


#: Findings in files other helpers own (the suite fails until they are fixed).
KNOWN = {"/infer": "OIP v2 tensor shape overflow (serving/protocols/open_inference.py)"}

_SCALAR = st.one_of(st.integers(), st.sampled_from([2**63, 2**64, -(2**63) - 1]),
                    st.text(max_size=12), st.booleans(), st.none())


def graphql_queries() -> st.SearchStrategy[dict[str, Any]]:
    """Queries and mutations over the schema's fields with hostile arguments and variables."""
    def literal(value: Any) -> str:
        return orjson.dumps(value).decode() if value is not None else "null"

    query = st.one_of(
        st.builds(lambda n, lim: f'{{ model(name: {literal(n)}) {{ name versions(limit: '
                                 f'{literal(lim)}) {{ version }} }} }}',
                  st.one_of(st.just("churn"), st.text(max_size=8)), _SCALAR),
        st.builds(lambda r: f"{{ version(ref: {literal(r)}) {{ version }} }}",
                  st.one_of(st.sampled_from(["churn:1", "churn:9223372036854775808",
                                             "churn@champion", "."]), st.text(max_size=8))),
        st.builds(lambda c: f"{{ models(nameContains: {literal(c)}) {{ name }} }}", _SCALAR),
        st.just("{ endpoints { name } }"),
        st.builds(lambda e: f"mutation($r: JSON!) {{ predict(endpoint: {literal(e)}, "
                            "records: $r) { predictions } }",
                  st.one_of(st.just("churn"), st.text(max_size=8))),
        st.text(max_size=40),
    )
    records = st.one_of(st.lists(st.dictionaries(
        st.sampled_from([f"f{i}" for i in range(20)] + ["x"]), _SCALAR, max_size=20),
        max_size=3), _SCALAR)
    return st.builds(lambda q, r: {"query": q, "variables": {"r": r}}, query, records)


def test_no_input_makes_a_server_error(fuzz_server: Any) -> None:
    """Every operation of the serving OpenAPI document through the shared harness
    (:mod:`tests.fuzzing`), as an admin and anonymously; 8 positive + 8 negative + 12 hostile
    cases and the sweep (23 hostile values per parameter, 16 JSON bodies) per operation."""
    admin = {"Authorization": f"Bearer {fuzz_server.key}"}
    api = schemathesis.openapi.from_dict(
        httpx.get(f"{fuzz_server.url}/openapi.json", headers=admin).json())
    known = {"name": "churn", "model": "churn", "version": "1"}
    fuzzer = RouteFuzzer(api, fuzz_server.url, headers=admin, known=known,
                         known_failures=KNOWN, max_examples=8, hostile_examples=12)
    assert len(fuzzer.operations()) >= 20
    findings = fuzzer.run()
    anonymous = RouteFuzzer(api, fuzz_server.url, known=known, known_failures=KNOWN,
                            max_examples=2, hostile_examples=3, sweep=False)
    findings += anonymous.run()
    # The admin got past authentication everywhere, and reached the models.
    assert 401 not in fuzzer.statuses and fuzzer.statuses.get(200, 0) > 0, fuzzer.statuses
    assert not findings, report(findings, {**fuzzer.calls, **anonymous.calls})


def test_no_graphql_query_makes_a_server_error(fuzz_server: Any) -> None:
    """Hypothesis-built GraphQL documents (fields, hostile arguments, JSON variables)."""
    from hypothesis import given

    answers: dict[int, int] = {}

    @given(body=graphql_queries())
    @settings(max_examples=60, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    def run(body: dict[str, Any]) -> None:
        answer = httpx.post(f"{fuzz_server.url}/graphql", json=body, timeout=REQUEST_TIMEOUT,
                            headers={"Authorization": f"Bearer {fuzz_server.key}"})
        answers[answer.status_code] = answers.get(answer.status_code, 0) + 1
        assert answer.status_code < 500 or answer.status_code in (503, 504), (body, answer.text)

    run()
    assert answers.get(200, 0) > 0, answers


def test_every_route_is_documented(fuzz_server: Any) -> None:
    from mlharbor.serving.app import create_serving_app  # noqa: F401 (documents the subject)

    paths = set(httpx.get(f"{fuzz_server.url}/openapi.json", headers={
        "Authorization": f"Bearer {fuzz_server.key}"}).json()["paths"])
    served = fuzz_server.server.config.app.http.router.paths
    assert served <= paths, sorted(served - paths)


def test_every_route_has_a_policy_rule(fuzz_server: Any) -> None:
    from mlharbor.security.routemap import PUBLIC, RULES, RouteTable

    table = RouteTable(RULES)
    router = fuzz_server.server.config.app.http.router
    declared = [*router.exact] + [(m, route.path) for m, _p, route in router.patterns]
    assert table.missing(declared) == []
    for probe in ("/livez", "/readyz", "/v2/health/live", "/v2/health/ready", "/ping",
                  "/health"):
        rule = table.lookup("GET", probe)
        assert rule is not None and rule.action == PUBLIC, probe
    for method, path in declared:
        rule = table.lookup(method, path)
        assert rule is not None
        if method == "POST" and path != "/graphql":  # read; its mutation checks predict
            assert rule.action == "predict", path
