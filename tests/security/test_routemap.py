"""The route table answers a request for a template without parameters from a dictionary,
and everything else by walking its patterns: whatever the method and path, the answer is the
one the walk alone gives (property-based, over every rule's template filled in every way)."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from mlharbor.security.routemap import RULES, RouteTable

TABLE = RouteTable(RULES)
TEMPLATES = sorted({rule.path for rule in RULES})
_segment = st.one_of(st.sampled_from(["search", "create", "x", "1", "v1", "latest", ""]),
                     st.text("abc-_.0123456789/", min_size=1, max_size=12))


@st.composite
def paths(draw: st.DrawFn) -> str:
    """A rule's template with each parameter filled (by text that may itself look like a
    literal segment), a literal template as it is, or a template cut or extended."""
    template = draw(st.sampled_from(TEMPLATES))
    path = re.sub(r"{[^}]*}", lambda _m: draw(_segment), template)
    change = draw(st.sampled_from(["as is", "cut", "extended"]))
    if change == "cut":
        path = path[: draw(st.integers(0, len(path)))]
    elif change == "extended":
        path += draw(st.sampled_from(["/", "/x", "x", "/search"]))
    return path


@settings(max_examples=600, deadline=None, derandomize=True)
@given(method=st.sampled_from(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "get"]),
       path=paths())
def test_resolve_answers_as_the_walk_over_every_pattern(method: str, path: str) -> None:
    normal = "GET" if method.upper() == "HEAD" else method.upper()
    assert TABLE.resolve(method, path) == TABLE._walk(normal, path)


def test_every_template_without_parameters_resolves_to_its_own_rule() -> None:
    for rule in RULES:
        if "{" not in rule.path:
            found, params, known = TABLE.resolve(rule.method, rule.path)
            assert (found, params, known) == (TABLE.lookup(rule.method, rule.path), {}, True)


def test_a_path_parameter_matching_nothing_still_wins_as_in_the_walk() -> None:
    """``{rest:path}`` may match the empty string, so a template with one can have as many
    literal characters as a parameterless one, and come first in the walk: the dictionary
    must not answer for it (found in review)."""
    from mlharbor.security.routemap import PUBLIC, RouteRule

    table = RouteTable([RouteRule("GET", "/files/{rest:path}", "read"),
                        RouteRule("GET", "/files/", PUBLIC),
                        RouteRule("get", "/lower", PUBLIC)])
    for method, path in [("GET", "/files/"), ("HEAD", "/files/"), ("GET", "/files/a"),
                         ("GET", "/lower"), ("POST", "/files/")]:
        normal = "GET" if method == "HEAD" else method
        assert table.resolve(method, path) == table._walk(normal, path), (method, path)
