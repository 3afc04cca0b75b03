"""How ``pytest -n 2 --dist loadgroup`` (``make test``) hands the suite to its two workers.

Three things, all about wall-clock time on a two-core machine:

* **Groups are kept together again.** pytest 9.2 keeps a test's id in a structured field, so
  pytest-xdist 3.8's way of tagging a grouped test (appending ``@group`` to the old ``_nodeid``
  attribute) is silently lost and ``--dist loadgroup`` spreads every test on its own
  (pytest-dev/pytest-xdist#1386). :func:`pytest_collection_modifyitems` writes the tag where
  pytest 9.2 reads it; it does nothing where xdist's own tag took effect.
* **A module is one unit of work** unless its tests name an ``xdist_group``: its module- and
  session-scoped fixtures (trained homes, live servers, Dask clusters) are then built once,
  on one worker, instead of once on each.
* **The longest units go first** (longest-processing-time-first), so the two workers finish
  together instead of one idling while the other runs a long test picked last. A unit's cost
  is its measured seconds in ``tests/durations.json`` (refresh it with a full run given
  ``--save-durations``; only the order matters, so numbers from a busy machine do); a unit
  not listed there costs :data:`DEFAULT_TEST_S` per test.
"""

from __future__ import annotations

import json
from collections import OrderedDict, defaultdict
from pathlib import Path
from typing import Any

import pytest

#: Measured seconds per unit (an xdist group name, or a module path).
DURATIONS = Path(__file__).with_name("durations.json")
#: What a test of a unit missing from :data:`DURATIONS` is assumed to cost (most are short).
DEFAULT_TEST_S = 0.5


def unit_of(nodeid: str) -> str:
    """The unit a test runs in: its xdist group (``...::test@group``) or its module."""
    _head, at, group = nodeid.rpartition("@")
    if at and "]" not in group:  # a parameter value may hold an '@'; a group name follows it
        return group
    return nodeid.split("::", 1)[0]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--save-durations", action="store_true", default=False,
                     help="after the run, write each unit's seconds to tests/durations.json "
                          "(the order --dist loadgroup hands units out in; use a full run)")


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On an xdist worker under ``--dist loadgroup``: tag each grouped test ``@group`` in the
    id the scheduler reads (xdist 3.8's own tag is lost on pytest 9.2, see the docstring)."""
    if not config.getoption("loadgroup", default=False):  # set on xdist workers only
        return
    for item in items:
        names = {str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
                 for mark in item.iter_markers("xdist_group")}
        if not names or unit_of(item.nodeid) == "_".join(sorted(names)):
            continue  # not grouped, or xdist's tag took effect
        from _pytest.nodeid import NodeId  # pytest >= 9.2, the only case that gets here

        tagged = NodeId.parse(f"{item.nodeid}@{'_'.join(sorted(names))}")
        item._id = tagged  # type: ignore[attr-defined]


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.getoption("dist", default="no") != "loadgroup":
        return None
    return _scheduler_class()(config, log)


def _scheduler_class() -> type:
    """Built on first use: xdist is imported only when the suite runs under it."""
    from xdist.scheduler import LoadGroupScheduling

    class ModuleGroupScheduling(LoadGroupScheduling):  # type: ignore[misc]
        """``loadgroup`` with a module as the default unit, longest units handed out first."""

        _ordered = False

        def _split_scope(self, nodeid: str) -> str:
            return unit_of(nodeid)

        def _assign_work_unit(self, node: Any) -> None:
            if not self._ordered:  # the queue is whole when the first unit is handed out
                known = _load_durations()
                self.workqueue = OrderedDict(sorted(
                    self.workqueue.items(),
                    key=lambda kv: -known.get(kv[0], DEFAULT_TEST_S * len(kv[1]))))
                self._ordered = True
            super()._assign_work_unit(node)

    return ModuleGroupScheduling


def _load_durations() -> dict[str, float]:
    try:
        data = json.loads(DURATIONS.read_text())
    except (OSError, ValueError):
        return {}  # no table: every unit costs its test count
    return {str(k): float(v) for k, v in data.items()} if isinstance(data, dict) else {}


_seconds: defaultdict[str, float] = defaultdict(float)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _seconds[unit_of(report.nodeid)] += report.duration  # setup, call and teardown


def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    if not config.getoption("save_durations") or hasattr(config, "workerinput"):
        return  # only the controller (or a run without xdist) writes the table
    table = {unit: round(s, 1) for unit, s in sorted(_seconds.items(), key=lambda kv: -kv[1])}
    DURATIONS.write_text(json.dumps(table, indent=1) + "\n")
