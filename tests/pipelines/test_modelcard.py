"""Model cards from stored records: the demo recipe's card section, --set overrides, the
training data fingerprint, evaluation with slices and importance, lineage and the history from
the audit trail (registration, alias moves by whom, job approvals); Markdown, HTML and JSON;
`mlharbor models card` as a user runs it."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from mlharbor.core.errors import InvalidInputError, NotFoundError
from mlharbor.pipelines.cardrender import card_json, render_card_html, render_markdown
from mlharbor.pipelines.modelcard import (
    CARD_FIELDS,
    build_card,
    parse_overrides,
    version_history,
)
from mlharbor.registry.audit import AuditEvent
from mlharbor.settings import Settings
from tests.support import cli_env, run_cli
from tests.trained_demo import GROUP, trained_demo_home

pytestmark = pytest.mark.xdist_group(GROUP)


@dataclasses.dataclass
class Trained:
    settings: Settings
    registry: Any


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trained]:
    """The demo recipe (one candidate, fewer folds, to be quick) trained twice (a copy of the
    session's trained demo home: tests/trained_demo.py); v2 promoted to production by a
    release manager, then champion rolled back to v1 by on-call."""
    from mlharbor.bootstrap import open_registry

    settings = trained_demo_home(tmp_path_factory, "card")
    registry = open_registry(settings)
    registry.set_alias("churn", "production", 2, actor="release-manager",
                       reason="approved in the Tuesday review")
    registry.set_alias("churn", "champion", 1, actor="oncall", reason="rollback drill")
    try:
        yield Trained(settings, registry)
    finally:
        registry.close()


def test_the_card_is_derived_from_the_stored_records(trained: Trained) -> None:
    version = trained.registry.get_version("churn:2")
    card = build_card(trained.registry, "churn:2")
    assert card.details["intended_use"].startswith("Rank the bundled demo telecom customers")
    assert card.details_source == {k: "recipe" for k in
                                   ("intended_use", "out_of_scope", "limitations", "owners")}
    assert "ethical_considerations" not in card.details
    assert card.dataset["fingerprint"] == version.lineage["dataset"]["fingerprint"]
    assert card.dataset["fingerprint"].startswith("sha256:")
    assert card.evaluation == version.lineage["evaluation"]
    assert [s["key"] for s in card.evaluation["slices"]["slices"]][:3] == [
        "contract=month-to-month", "contract=one-year", "contract=two-year"]
    assert card.evaluation["importance"]["partial_dependence"]
    history = [(e.actor, e.action, e.detail) for e in card.history]
    assert history[0] == ("trainer", "registered", "status ready")
    assert ("trainer", "promoted", "@champion -> v2: passed gates: f1 >= 0.50, better than "
            "baseline, not worse than champion by more than 0.01") in history
    assert ("release-manager", "promoted",
            "@production -> v2: approved in the Tuesday review") in history
    assert ("oncall", "demoted", "@champion moved to 1: rollback drill") in history
    assert card.aliases == ("production",)
    first = build_card(trained.registry, "churn:1")
    assert [e.actor for e in first.history if e.action == "demoted"] == ["trainer"]


def test_set_overrides_the_recipe_and_bad_keys_are_refused(trained: Trained) -> None:
    values = parse_overrides(["limitations=Not for pricing.", "ethical-considerations=Fair."])
    card = build_card(trained.registry, "churn@production", values)
    assert card.details["limitations"] == "Not for pricing."
    assert card.details_source["limitations"] == "--set"
    assert card.details_source["ethical_considerations"] == "--set"
    for bad in ("colour=blue", "intended_use", "x" * 10):
        with pytest.raises(InvalidInputError, match="expected KEY=VALUE with KEY one of"):
            parse_overrides([bad])
    with pytest.raises(InvalidInputError, match="at most 4000 characters"):
        parse_overrides(["owners=" + "x" * 5000])
    with pytest.raises(NotFoundError):
        build_card(trained.registry, "churn:9")


def test_markdown_html_and_json_say_the_same_things(trained: Trained) -> None:
    card = build_card(trained.registry, "churn:2")
    text = render_markdown(card)
    for title in ("## Intended use", "## Limitations", "## Training data", "## Evaluation",
                  "### Gates", "### Slices", "### Explanations: global importance",
                  "## Lineage", "## History (audit trail)"):
        assert title in text
    assert card.dataset["fingerprint"] in text
    assert "| mean \\|attribution\\| |" in text  # a pipe in a cell does not split it
    assert "approved in the Tuesday review" in text
    page = render_card_html(card)
    assert "<script" not in page and page.count("<svg") >= 2
    assert "Slices" in page and "Partial dependence on" in page
    assert "release-manager" in page and card.dataset["fingerprint"] in page
    body = card_json(card)
    assert json.loads(json.dumps(body))["details"] == card.details
    assert body["history"][0]["action"] == "registered"


def test_job_approvals_of_the_producing_job_are_in_the_history() -> None:
    at = datetime(2026, 1, 2, tzinfo=UTC)

    def event(seq: int, action: str, resource: str, actor: str, **details: Any) -> AuditEvent:
        return AuditEvent(seq, at, actor, action, resource, None, "success", details, "", "")

    events = [
        event(1, "version.register", "model/churn/version/3", "job:j1", status="ready"),
        event(2, "job.approve", "job:j1", "cli:alice", step="promote", reason="looks good"),
        event(3, "job.approve", "job:other", "cli:bob", step="promote"),
        event(4, "alias.set", "model/churn/alias/champion", "job:j1", to=3, reason="canary ok"),
        event(5, "alias.set", "model/other/alias/champion", "job:j1", to=3),
        event(6, "job.reject", "job:j1", "cli:carol", step="promote"),
    ]
    found = [(e.actor, e.action, e.detail) for e in version_history(events, "churn", 3, "j1")]
    assert found == [
        ("job:j1", "registered", "status ready"),
        ("cli:alice", "approved", "job j1 step promote: looks good"),
        ("job:j1", "promoted", "@champion -> v3: canary ok"),
        ("cli:carol", "rejected", "job j1 step promote"),
    ]


def test_models_card_from_the_command_line(trained: Trained, tmp_path: Path) -> None:
    env = cli_env(trained.settings)
    out = tmp_path / "card.html"
    written = run_cli("models", "card", "churn:2", "--format", "html", "--output", str(out),
                      "--set", "owners=Team Churn", env=env)
    assert written.returncode == 0, written.stderr
    assert "Wrote the model card of churn:2" in written.stdout
    assert "Team Churn" in out.read_text() and "<svg" in out.read_text()
    shown = run_cli("models", "card", "churn@production", env=env)
    assert shown.returncode == 0 and shown.stdout.startswith("# Model card: churn:2")
    as_json = run_cli("models", "card", "churn:1", "--format", "json", env=env)
    assert json.loads(as_json.stdout)["ref"] == "churn:1"
    for args, code, message in (
        (["--set", "colour=blue"], 2, "expected KEY=VALUE with KEY one of"),
        (["--format", "pdf"], 2, "expected one of md, html, json"),
        (["--output", str(tmp_path / "missing" / "card.md")], 2, "missing"),
    ):
        bad = run_cli("models", "card", "churn:2", *args, env=env)
        assert bad.returncode == code, (args, bad.stderr)
        assert message in bad.stderr and "Traceback" not in bad.stderr
    absent = run_cli("models", "card", "churn:7", env=env)
    assert absent.returncode == 3 and "Traceback" not in absent.stderr
    assert set(CARD_FIELDS) >= {"intended_use", "limitations"}
