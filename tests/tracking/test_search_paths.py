"""A search answered on the DBAPI cursor (:func:`mlharbor.tracking.query.search_sql`, compiled
once and cached) finds the same runs, in the same order and pages, with the same records, as
the same query run through SQLAlchemy's own execution, on SQLite and PostgreSQL alike, for
any filter and sort of the grammar (property-based: metric, param, tag and attribute clauses,
IN lists, NaN values, runs missing a sort key, deleted runs, pages)."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlharbor.core.runs import LifecycleStage, MetricPoint, Run
from mlharbor.registry.service import Registry
from mlharbor.settings import Settings
from mlharbor.tracking import rows
from mlharbor.tracking import schema as t
from mlharbor.tracking.query import run_query
from mlharbor.tracking.search import Clause, render
from mlharbor.tracking.store import TrackingStore

KEYS = ("a", "b")
VALUES = ("x", "y", "X", "")
NUMBERS = (-1.0, 0.0, 0.5, 1.0, 2.5)


@pytest.fixture
def seeded(db_settings: Settings) -> Iterator[tuple[TrackingStore, list[str]]]:
    """Twelve runs in two experiments with overlapping metrics, params and tags (some
    missing, one metric NaN), one run ended, one deleted."""
    reg = Registry.from_settings(db_settings)
    store = TrackingStore(reg.store.db)
    eids = ["0", store.create_experiment("second").experiment_id]
    parent = None
    for i in range(12):
        run = store.create_run(eids[i % 2], run_name=f"r{i % 5}", start_time=1000 + i // 2,
                               user_id=f"u{i % 3}", parent_run_id=parent)
        parent = run.run_id if i % 4 == 0 else parent
        metrics = [MetricPoint(k, NUMBERS[(i + j) % len(NUMBERS)], 5, i)
                   for j, k in enumerate(KEYS) if (i + j) % 3]
        if i == 7:
            metrics.append(MetricPoint("c", math.nan, 5, 0))
        store.log_batch(run.run_id, metrics=metrics,
                        params={k: VALUES[(i + j) % len(VALUES)]
                                for j, k in enumerate(KEYS) if (i + j) % 4},
                        tags={k: VALUES[(i * 3 + j) % len(VALUES)] for j, k in enumerate(KEYS)
                              if (i + j) % 2})
        if i in (3, 8):
            store.update_run(run.run_id, status="FINISHED", end_time=2000 + i)
        if i == 9:
            store.update_run(run.run_id, status="FAILED", error="boom")
        if i == 5:
            store.set_run_lifecycle(run.run_id, LifecycleStage.DELETED)
    yield store, eids
    reg.close()


keys = st.sampled_from((*KEYS, "c"))
metric = st.builds(Clause, st.just("metric"), keys,
                   st.sampled_from(["=", "!=", ">", ">=", "<", "<="]), st.sampled_from(NUMBERS))
textual = st.builds(Clause, st.sampled_from(["param", "tag"]), keys,
                    st.sampled_from(["=", "!=", "LIKE", "ILIKE"]),
                    st.sampled_from((*VALUES, "%", "x%")))
attribute = st.one_of(
    st.builds(Clause, st.just("attribute"), st.sampled_from(["start_time", "created"]),
              st.sampled_from(["=", ">", "<="]), st.sampled_from((1000.0, 1003.0))),
    st.builds(Clause, st.just("attribute"), st.sampled_from(["status", "run_name"]),
              st.sampled_from(["=", "!=", "LIKE"]),
              st.sampled_from(("RUNNING", "FINISHED", "r1", "r%"))),
    st.builds(Clause, st.just("attribute"), st.sampled_from(["end_time"]),
              st.sampled_from(["=", ">", "<="]), st.sampled_from((2003.0, 2008.0))),
    st.builds(Clause, st.just("attribute"), st.sampled_from(["user_id"]),
              st.sampled_from(["=", "!=", "LIKE"]), st.sampled_from(("u1", "u%"))),
    st.builds(Clause, st.just("attribute"), st.just("status"),
              st.sampled_from(["IN", "NOT IN"]),
              st.lists(st.sampled_from(("RUNNING", "FINISHED", "FAILED")), min_size=1,
                       max_size=3, unique=True).map(tuple)))
order = st.builds("{}.{} {}".format, st.sampled_from(["metrics", "params", "tags"]), keys,
                  st.sampled_from(["ASC", "DESC"])) | st.sampled_from(
    ["attributes.start_time ASC", "attributes.run_name DESC", "attributes.status"])


def _through_sqlalchemy(store: TrackingStore, eids: list[str], filter: str | None,
                        order_by: list[str] | None, view: str) -> list[Run]:
    q = rows.lifecycle(run_query([int(e) for e in eids], filter, order_by),
                       t.runs.c.lifecycle_stage, view)
    with store.db.read() as conn:
        return rows.hydrate(conn, conn.execute(q).all())


def _same(a: list[Run], b: list[Run]) -> bool:
    """Equal records (a NaN metric value equals a NaN)."""
    def plain(run: Run) -> tuple[object, ...]:
        metrics = {k: (None if math.isnan(p.value) else p.value, p.timestamp, p.step)
                   for k, p in run.metrics.items()}
        return (run.run_id, run.name, run.status, run.lifecycle_stage, run.start_time,
                run.end_time, run.experiment_id, run.user_id, run.artifact_uri,
                run.parent_run_id, run.error, run.params, run.tags, metrics)
    return [plain(r) for r in a] == [plain(r) for r in b]


@settings(derandomize=True, deadline=None, max_examples=60,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(clauses=st.lists(st.one_of(metric, textual, attribute), max_size=3),
       run_ids=st.lists(st.integers(0, 11), max_size=12, unique=True),
       order_by=st.none() | st.lists(order, max_size=3),
       view=st.sampled_from(["active", "deleted", "all"]), page=st.integers(1, 5),
       both=st.booleans())
def test_the_cursor_path_answers_as_sqlalchemy_does(
        seeded: tuple[TrackingStore, list[str]], clauses: list[Clause], run_ids: list[int],
        order_by: list[str] | None, view: str, page: int, both: bool) -> None:
    store, eids = seeded
    eids = eids if both else eids[:1]
    if run_ids:  # run_id IN (...) of up to every run, by its real id
        every = _through_sqlalchemy(store, eids, None, None, "all")
        ids = tuple(every[i % len(every)].run_id for i in run_ids)
        clauses = [*clauses, Clause("attribute", "run_id", "IN", ids)]
    filter = render(clauses) if clauses else None
    expected = _through_sqlalchemy(store, eids, filter, order_by, view)
    whole = store.search_runs(eids, filter=filter, order_by=order_by, view=view).runs
    assert _same(whole, expected)
    paged: list[Run] = []
    token = None
    for _ in range(len(expected) // page + 1):  # pages enough for every run, and one more
        found = store.search_runs(eids, filter=filter, order_by=order_by, view=view,
                                  max_results=page, page_token=token)
        paged += found.runs
        token = found.next_page_token
        if token is None:
            break
    assert token is None
    assert _same(paged, expected)


def test_the_compiled_search_is_kept_and_its_values_are_not_shared(
        seeded: tuple[TrackingStore, list[str]]) -> None:
    """The same search twice is compiled once; a page's limit and offset never leak into the
    kept values (a second page would start where the first call's left it)."""
    from mlharbor.tracking import query

    store, _ = seeded
    with store.db.read() as conn:
        first = query.search_sql(conn.dialect, [0], "metrics.a > 0", None, "active")
        again = query.search_sql(conn.dialect, [0], "metrics.a > 0", None, "active")
    assert first is again
    one = store.search_runs(["0"], filter="metrics.a > 0", max_results=1)
    two = store.search_runs(["0"], filter="metrics.a > 0", max_results=1,
                            page_token=one.next_page_token)
    assert one.runs and two.runs and one.runs[0].run_id != two.runs[0].run_id
    assert (first[1][query.PAGE_LIMIT], first[1][query.PAGE_OFFSET]) == (0, 0)


def test_a_page_past_two_to_the_31_is_empty_not_refused(
        seeded: tuple[TrackingStore, list[str]]) -> None:
    """A page token's offset may pass a 32-bit integer (PostgreSQL's INTEGER refused it)."""
    from mlharbor.tracking import checks

    store, eids = seeded
    page = store.search_runs(eids, page_token=checks.encode_token(2**31))
    assert (page.runs, page.next_page_token) == ([], None)


def test_a_long_search_is_answered_and_not_kept(seeded: tuple[TrackingStore, list[str]]
                                                 ) -> None:
    """Searches of many experiments or long text are compiled each time, not kept (a key
    holds its text: 256 kept of megabytes each would be gigabytes)."""
    from mlharbor.tracking import query

    store, eids = seeded
    many = [*eids, *(str(i) for i in range(1000, 1100))]
    long_filter = " and ".join(["params.a != 'zz'"] * 40) + " and params.a != '" + "z" * 5000 + "'"
    info = query._cached_search_sql.cache_info()
    for _ in range(2):  # kept, the second of each would be a hit
        assert _same(store.search_runs(many).runs,
                     _through_sqlalchemy(store, many, None, None, "active"))
        assert _same(store.search_runs(eids, filter=long_filter).runs,
                     _through_sqlalchemy(store, eids, long_filter, None, "active"))
    after = query._cached_search_sql.cache_info()
    assert (after.hits, after.misses) == (info.hits, info.misses)
    ascending = store.search_runs(eids, order_by=["attributes.start_time ASC"]).runs
    assert [r.run_id for r in store.search_runs(
        eids, order_by=iter(["attributes.start_time ASC"])).runs] == [r.run_id for r in ascending]
