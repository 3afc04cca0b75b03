"""``mlharbor audit verify --anchor`` takes what ``mlharbor audit head`` printed, verbatim or in
any reasonable variant, and still raises the alarm for an anchor the chain does not hold."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from sqlalchemy import text

from mlharbor.cli.main import main
from mlharbor.registry.audit import GENESIS_HASH
from mlharbor.registry.service import Registry
from mlharbor.settings import Settings
from tests.support import cli_env, run_cli


@pytest.fixture
def env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    values = cli_env(settings)
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    registry = Registry.from_settings(settings)
    registry.close()
    yield values


def _populate(settings: Settings, models: int) -> None:
    registry = Registry.from_settings(settings)
    try:
        start = len(list(registry.store.iter_audit()))
        for i in range(models):
            registry.create_model(f"m{start + i}")
    finally:
        registry.close()


def _verify(anchor: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run the CLI in this process: exit code, stdout, stderr."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as caught:
        main(["audit", "verify", "--anchor", anchor])
        raise SystemExit(0)
    out = capsys.readouterr()
    return int(caught.value.code or 0), out.out, out.err


def test_the_printed_head_verifies_verbatim(settings: Settings, env: dict[str, str]) -> None:
    _populate(settings, 3)
    head = run_cli("audit", "head", env=env)
    assert head.returncode == 0, head.stderr
    ok = run_cli("audit", "verify", "--anchor", head.stdout, env=env)  # newline and all
    assert ok.returncode == 0, ok.stderr
    assert "intact: 3 record" in ok.stdout

    _populate(settings, 2)  # the chain grows: the old head still anchors it
    assert run_cli("audit", "verify", "--anchor", head.stdout, env=env).returncode == 0

    registry = Registry.from_settings(settings)
    with registry.store.db.engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_events WHERE seq >= 3"))
    registry.close()
    cut = run_cli("audit", "verify", "--anchor", head.stdout, env=env)
    assert cut.returncode == 5 and "broken at record 3" in cut.stderr
    assert cut.stderr.count("\n") == 1


def test_variants_of_the_head_verify(settings: Settings, env: dict[str, str],
                                     capsys: pytest.CaptureFixture[str]) -> None:
    _populate(settings, 4)
    code, printed, _ = _verify_head(capsys)
    seq, digest = printed.split()
    verified = run_cli("audit", "verify", env=env).stdout.strip()  # "... head 4 <hash>."
    variants = [printed, printed.strip(), f"  {seq}   {digest}  \n", digest, f"\t{digest}\n",
                digest.upper(), f"head {seq} {digest}", f"head: {seq} {digest}",
                f"seq={seq} hash={digest}", f"{seq}:{digest}", verified.split("head ")[1],
                json.dumps({"seq": int(seq), "hash": digest, "at": "2026-01-01T00:00:00+00:00"}),
                json.dumps({"hash": digest})]
    for anchor in variants:
        code, out, err = _verify(anchor, capsys)
        assert code == 0, (anchor, err)
        assert "intact: 4 record" in out


def _verify_head(capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as caught:
        main(["audit", "head"])
        raise SystemExit(0)
    out = capsys.readouterr()
    return int(caught.value.code or 0), out.out, out.err


def test_a_wrong_anchor_still_alarms(settings: Settings, env: dict[str, str],
                                     capsys: pytest.CaptureFixture[str]) -> None:
    _populate(settings, 3)
    _, printed, _ = _verify_head(capsys)
    seq, digest = printed.split()
    other = ("0" if digest[0] != "0" else "1") + digest[1:]
    for anchor in (other, f"{seq} {other}", f"2 {digest}", f"7 {digest}"):
        code, _, err = _verify(anchor, capsys)
        assert code == 5, (anchor, err)
        assert "broken at record" in err and err.count("\n") == 1


@pytest.mark.parametrize("anchor", ["", "hello", "deadbeef", "1 2 " + "a" * 64,
                                    "a" * 64 + " " + "b" * 64, "{not json", '{"hash": 5}'])
def test_an_anchor_that_is_no_head_is_a_usage_error_not_a_tamper_alarm(
    settings: Settings, env: dict[str, str], capsys: pytest.CaptureFixture[str], anchor: str,
) -> None:
    _populate(settings, 1)
    code, _, err = _verify(anchor, capsys)
    assert code == 2, err
    assert "anchor" in err and "broken" not in err and err.count("\n") == 1


def test_the_empty_chains_head_verifies(settings: Settings, env: dict[str, str],
                                        capsys: pytest.CaptureFixture[str]) -> None:
    _, printed, _ = _verify_head(capsys)
    assert printed.split() == ["0", GENESIS_HASH]
    assert _verify(printed, capsys)[0] == 0
    _populate(settings, 2)
    assert _verify(printed, capsys)[0] == 0
