"""``mlharbor endpoints update`` is a read-modify-write on the revision: it keeps settings it
was not asked to change, retries once when someone else wrote in between, and otherwise
reports the conflict in one line with exit code 4."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mlharbor.cli import endpoints as endpoints_cli
from mlharbor.cli.main import main
from mlharbor.registry.endpoints import Endpoint, EndpointService
from mlharbor.registry.service import Registry
from mlharbor.settings import Settings
from tests.support import cli_env, run_cli


@pytest.fixture
def registry(settings: Settings, tmp_path: Path) -> Iterator[Registry]:
    reg = Registry.from_settings(settings)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "model.bin").write_bytes(b"weights")
    reg.register_version("churn", bundle)
    EndpointService(reg).create({"name": "scoring", "routes": [{"ref": "churn:1"}],
                                 "batching": {"enabled": True, "max_wait_ms": 3}},
                                actor="setup")
    yield reg
    reg.close()


class RacedService(EndpointService):
    """The real service, with another writer changing the endpoint just before each of the
    first ``races`` updates (so after this CLI read it)."""

    def __init__(self, registry: Registry, races: int) -> None:
        super().__init__(registry)
        self.races = races
        self.other = EndpointService(registry)

    def update(self, name: str, changes: dict[str, Any], **kwargs: Any) -> Endpoint:
        if self.races > 0:
            self.races -= 1
            self.other.update(name, {"sticky_header": f"x-other-{self.races}"}, actor="other")
        return super().update(name, changes, **kwargs)


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as caught:
        main(argv)
        raise SystemExit(0)
    return int(caught.value.code or 0), capsys.readouterr().err


def test_one_concurrent_write_is_retried_and_both_changes_stay(
    registry: Registry, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    raced = RacedService(registry, races=1)
    monkeypatch.setattr(endpoints_cli, "_service", lambda ctx: raced)
    code, err = _run(["endpoints", "update", "scoring", "--description", "mine"], capsys)
    assert code == 0, err
    final = EndpointService(registry).get("scoring")
    assert final.spec.description == "mine" and final.spec.sticky_header == "x-other-0"
    assert final.revision == 3
    outcomes = [e.outcome for e in registry.store.iter_audit() if e.action == "endpoint.update"]
    assert outcomes == ["success", "failure", "success"]


def test_a_second_conflict_is_one_line_and_exit_4(
    registry: Registry, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    raced = RacedService(registry, races=2)
    monkeypatch.setattr(endpoints_cli, "_service", lambda ctx: raced)
    code, err = _run(["endpoints", "update", "scoring", "--description", "mine"], capsys)
    assert code == 4
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "changed by someone else" in err and "now at revision 3" in err
    assert EndpointService(registry).get("scoring").spec.description == ""


def test_cli_keeps_unnamed_settings_and_honours_a_pinned_revision(
    registry: Registry, settings: Settings,
) -> None:
    env = cli_env(settings)
    done = run_cli("endpoints", "update", "scoring", "--max-batch-size", "8", "--json",
                   env=env)
    assert done.returncode == 0, done.stderr
    batching = EndpointService(registry).get("scoring").spec.batching
    # Only max_batch_size was asked for: enabled and max_wait_ms stay as they were.
    assert (batching.enabled, batching.max_wait_ms, batching.max_batch_size) == (True, 3, 8)

    stale = run_cli("endpoints", "update", "scoring", "--revision", "1", "--description", "x",
                    env=env)
    assert stale.returncode == 4, stale.stderr
    assert stale.stderr.count("\n") == 1 and "revision 2" in stale.stderr
    assert EndpointService(registry).get("scoring").spec.description == ""
    pinned = run_cli("endpoints", "update", "scoring", "--revision", "2", "--description", "x",
                     env=env)
    assert pinned.returncode == 0, pinned.stderr
    assert EndpointService(registry).get("scoring").spec.description == "x"
