"""Security tests: shared fixtures, log capture and the end-of-session secret leak check."""

from __future__ import annotations

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


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    leaks = leakwatch.find_leaks()
    if leaks:
        session.exitstatus = 1
        print("\nSECRET LEAK: a secret appeared in:\n  " + "\n  ".join(sorted(set(leaks))))
