"""Security tests: shared fixtures, log capture and the end-of-session secret leak check.

At the end of the session every process searches what it saw for every secret it made
(``leakwatch``); pytest-xdist workers send their findings to the controller, which fails the
run when any worker found a leak.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.security import leakwatch
from tests.security.fixtures import (  # noqa: F401  (fixtures)
    admin_headers,
    app,
    client,
    identities,
    make_key,
    registry,
    server,
)

leakwatch.install_log_capture()
_WORKER_LEAKS: list[str] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    leaks = sorted(set(leakwatch.find_leaks()))
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: report to the controller
        workeroutput["mlharbor_leaks"] = leaks
        return
    leaks += _WORKER_LEAKS
    if leaks:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        print("\nSECRET LEAK: a secret appeared in:\n  " + "\n  ".join(leaks))


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    _WORKER_LEAKS.extend(getattr(node, "workeroutput", {}).get("mlharbor_leaks", []))
