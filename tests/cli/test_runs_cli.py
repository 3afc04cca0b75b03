"""`mlharbor runs list|show|compare` as a user runs them, on runs recorded through the Python
API into a real home: filters and sorts in MLflow's grammar, metric and param columns, run id
prefixes, --json; bad filters, unknown experiments and run ids are one line, exit 2 or 3, and
write nothing."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlharbor.core.errors import InvalidInputError, NotFoundError
from mlharbor.settings import Settings
from mlharbor.tracking.store import TrackingStore
from tests.support import cli_env, run_cli


@dataclasses.dataclass
class Home:
    env: dict[str, str]
    settings: Settings
    ids: dict[str, str]  # run name -> id


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Home]:
    from mlharbor.bootstrap import open_registry
    from mlharbor.bootstrap.tracking import open_tracker

    settings = Settings(home=tmp_path_factory.mktemp("runs-cli") / "home")
    registry = open_registry(settings)
    tracker = open_tracker(settings, registry=registry)
    ids: dict[str, str] = {}
    try:
        with tracker.start_run(experiment="tuning", run_name="search") as parent:
            ids["search"] = parent.run_id
            for depth, f1 in [(3, 0.61), (6, 0.72), (9, 0.68)]:
                with parent.child(f"depth-{depth}") as child:
                    ids[f"depth-{depth}"] = child.run_id
                    child.log_params({"max_depth": depth, "model": "forest"})
                    child.log_metrics({"f1": f1, "auc": 0.8 + depth / 100})
                    for step in range(4):
                        child.log_metrics({"loss": 1 / (step + 1 + depth)}, step=step)
                    child.set_tags({"mlharbor.dataset.fingerprint": f"sha256:{depth:064x}",
                                    "team": "retention"})
        with tracker.start_run(experiment="other", run_name="lonely") as other:
            ids["lonely"] = other.run_id
            other.log_metrics({"f1": 0.1})
    finally:
        tracker.flusher.close()
        registry.close()
    yield Home(cli_env(settings), settings, ids)


def _counts(settings: Settings) -> tuple[int, int]:
    from mlharbor.bootstrap import open_registry
    from mlharbor.tracking.store import TrackingStore

    registry = open_registry(settings)
    try:
        store = TrackingStore(registry.store.db)
        experiments, _ = store.list_experiments(view="all")
        return len(experiments), sum(store.count_runs(e.experiment_id) for e in experiments)
    finally:
        registry.close()


def test_list_filters_and_sorts_in_mlflows_grammar(home: Home) -> None:
    done = run_cli("runs", "list", "-e", "tuning", "-f", "metrics.f1 > 0.65 and "
                   "params.model = 'forest'", "-o", "metrics.f1 DESC", "-p", "max_depth",
                   env=home.env)
    assert done.returncode == 0, done.stderr
    rows = [line.split("│") for line in done.stdout.splitlines() if "depth-" in line]
    assert [r[2].strip() for r in rows] == ["depth-6", "depth-9"]
    header = next(line for line in done.stdout.splitlines() if "run" in line and "│" not in
                  line and "┃" in line)
    assert "f1" in header and "params.max_depth" in header
    assert [r[1].strip() for r in rows] == [home.ids["depth-6"][:12], home.ids["depth-9"][:12]]
    by_tag = run_cli("runs", "list", "-f", "tags.team = 'retention'", "--json", env=home.env)
    assert {r["name"] for r in json.loads(by_tag.stdout)["runs"]} == {
        "depth-3", "depth-6", "depth-9"}


def test_list_json_has_whole_runs_of_every_experiment(home: Home) -> None:
    done = run_cli("runs", "list", "--json", "-o", "attributes.run_name", env=home.env)
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    assert {e["name"] for e in body["experiments"]} >= {"tuning", "other"}
    names = [r["name"] for r in body["runs"]]
    assert names == sorted(names) and len(names) == 5
    run = next(r for r in body["runs"] if r["name"] == "depth-3")
    assert run["run_id"] == home.ids["depth-3"] and run["parent_run_id"] == home.ids["search"]
    assert run["params"] == {"max_depth": "3", "model": "forest"}
    assert run["metrics"]["loss"] == pytest.approx(1 / 7) and run["metric_steps"]["loss"] == 3
    assert run["data_fingerprint"] == f"sha256:{3:064x}" and run["experiment"] == "tuning"
    two = run_cli("runs", "list", "--json", "-n", "2", env=home.env)
    token = json.loads(two.stdout)["next_page_token"]
    rest = run_cli("runs", "list", "--json", "--page-token", token, env=home.env)
    seen = [r["run_id"] for r in json.loads(two.stdout)["runs"] + json.loads(rest.stdout)["runs"]]
    assert sorted(seen) == sorted(home.ids.values())


def test_show_by_prefix_with_children(home: Home) -> None:
    done = run_cli("runs", "show", home.ids["search"][:8], env=home.env)
    assert done.returncode == 0, done.stderr
    assert f"Run {home.ids['search']}" in done.stdout
    assert "Child runs (3)" in done.stdout and home.ids["depth-9"] in done.stdout
    shown = json.loads(run_cli("runs", "show", home.ids["depth-6"], "--json",
                               env=home.env).stdout)
    assert shown["name"] == "depth-6" and shown["tags"] == {
        "mlharbor.dataset.fingerprint": f"sha256:{6:064x}", "team": "retention"}
    assert shown["children"] == []


def test_compare_two_runs(home: Home) -> None:
    left, right = home.ids["depth-3"], home.ids["depth-9"]
    body = json.loads(run_cli("runs", "compare", left, right, "--json", env=home.env).stdout)
    rows = {(r["section"], r["key"]): r for r in body["rows"]}
    assert rows[("params", "max_depth")]["left"] == "3"
    assert rows[("params", "max_depth")]["right"] == "9"
    assert rows[("params", "model")]["same"] is True
    assert rows[("metrics", "f1")]["left"] == pytest.approx(0.61)
    assert rows[("run", "data_fingerprint")]["same"] is False
    table = run_cli("runs", "compare", left[:10], right[:10], "-d", env=home.env)
    assert table.returncode == 0, table.stderr
    assert "max_depth" in table.stdout and "model" not in table.stdout
    assert "differs" in table.stdout


@pytest.mark.parametrize(("args", "code", "message"), [
    (("list", "-f", "metrics.f1 >> 0.5"), 2, "found '>' (at position 12)"),
    (("list", "-f", "metrics.f1 > 0.5 or metrics.auc > 1"), 2, "OR is not supported"),
    (("list", "-f", "params.model > 3"), 2, "compares with =, !=, LIKE, ILIKE"),
    (("list", "-o", "metrics.f1 sideways"), 2, "expected ASC or DESC"),
    (("list", "--view", "some"), 2, "view must be active, deleted or all"),
    (("list", "-e", "no-such-experiment"), 3, "Known experiments: 'Default', 'tuning'"),
    (("show", "xyz"), 2, "or at least its first 6"),
    (("show", "0" * 32), 3, "No run with id"),
    (("show", "fffffffff1"), 3, "No run id starts with 'fffffffff1'"),
    (("compare", "0" * 32, "nothex"), 2, "right must be a run id"),
])
def test_bad_input_is_one_line_and_writes_nothing(home: Home, args: tuple[str, ...],
                                                  code: int, message: str) -> None:
    before = _counts(home.settings)
    done = run_cli("runs", *args, env=home.env)
    assert done.returncode == code, (done.stdout, done.stderr)
    assert message in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert _counts(home.settings) == before


@pytest.fixture(scope="module")
def store(home: Home) -> Iterator[TrackingStore]:
    from mlharbor.bootstrap import open_registry

    registry = open_registry(home.settings)
    yield TrackingStore(registry.store.db)
    registry.close()


@settings(derandomize=True, deadline=None, max_examples=60)
@given(text=st.text(max_size=40) | st.text(alphabet="0123456789abcdef", max_size=40))
def test_a_run_id_is_resolved_or_refused_clearly(store: TrackingStore, text: str) -> None:
    """Whatever is typed as a run id: a stored id it starts, or InvalidInputError /
    NotFoundError (never a crash, never a wrong run)."""
    from mlharbor.tracking.compare import resolve_run_id

    try:
        found = resolve_run_id(store, text)
    except (InvalidInputError, NotFoundError):
        return
    assert len(found) == 32 and found.startswith(text)
