"""Model cards derived from stored records only, never typed twice.

A card gathers, for one version: what it is for and where it falls short (the recipe's
``card:`` section, overridden by ``--set key=value``), the training data and its fingerprint
(lineage ``dataset``), the evaluation with baselines, champion comparison, gates, slices and
importance (lineage ``evaluation``, the report ``mlharbor train`` stored), the lineage (the
version it was retrained from, the job, the code version) and its history from the
tamper-evident audit trail: who registered it, who moved which alias to or from it (promotions
and rollbacks) and who approved or rejected the job that produced it.
:mod:`mlharbor.pipelines.cardrender` writes the card as Markdown or HTML.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from mlharbor.core.errors import InvalidInputError

if TYPE_CHECKING:
    from mlharbor.registry.audit import AuditEvent
    from mlharbor.registry.service import Registry

#: What a card says that no record knows, in the order it says it (the recipe's ``card:``).
CARD_FIELDS = ("intended_use", "out_of_scope", "limitations", "ethical_considerations",
               "owners")
MAX_VALUE_CHARS = 4000


@dataclasses.dataclass(frozen=True)
class CardEvent:
    """One line of the version's history, from the audit trail."""

    at: datetime
    actor: str
    action: str  # registered | promoted | demoted | approved | rejected | updated
    detail: str


@dataclasses.dataclass(frozen=True)
class ModelCard:
    ref: str
    name: str
    version: int
    status: str
    status_reason: str | None
    description: str
    created_at: datetime
    created_by: str
    aliases: tuple[str, ...]
    model_format: str | None
    details: dict[str, str]  # CARD_FIELDS that have a value
    details_source: dict[str, str]  # field -> "recipe" | "--set"
    dataset: dict[str, Any]
    schema: dict[str, Any]
    evaluation: dict[str, Any]  # the stored report ({} when none)
    parents: tuple[str, ...]
    job: str | None
    code_version: str | None
    history: tuple[CardEvent, ...]

    @property
    def gates_passed(self) -> bool | None:
        passed = self.evaluation.get("passed")
        return None if passed is None else bool(passed)


def parse_overrides(items: Iterable[str]) -> dict[str, str]:
    """``key=value`` items (``--set``) to card fields; InvalidInputError names a bad one."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in CARD_FIELDS:
            raise InvalidInputError(
                f"--set {item!r}: expected KEY=VALUE with KEY one of {', '.join(CARD_FIELDS)}.",
                field="set")
        if len(value) > MAX_VALUE_CHARS:
            raise InvalidInputError(f"--set {key}: at most {MAX_VALUE_CHARS} characters; "
                                    f"received {len(value)}.", field="set")
        out[key] = value.strip()
    return out


def version_ref(name: str, version: int) -> str:
    """``name:version`` for routes that take the two apart, the name checked first: a name
    such as ``a@b`` would otherwise be read as an alias, and refused as one."""
    from mlharbor.core.names import validate_name

    return f"{validate_name(name)}:{version}"


def build_card(registry: Registry, ref: str, overrides: Mapping[str, str] | None = None
               ) -> ModelCard:
    """The card of version ``ref`` (``churn:3``, ``churn@champion``) from stored records."""
    from mlharbor.pipelines.retrain import JOB_TAG

    version = registry.get_version(ref)
    lineage = version.lineage or {}
    recipe = _mapping(lineage.get("recipe"))
    stored_card = _mapping(recipe.get("card"))
    given = dict(overrides or {})
    details, source = {}, {}
    for key in CARD_FIELDS:
        if given.get(key):
            details[key], source[key] = str(given[key]), "--set"
        elif stored_card.get(key):
            details[key], source[key] = str(stored_card[key]), "recipe"
    retrain = _mapping(lineage.get("retrain"))
    job = retrain.get("job") or version.tags.get(JOB_TAG)
    parents = tuple(str(p) for p in [retrain.get("base")] if p)
    events = registry.store.iter_audit(since=version.created_at - timedelta(seconds=5))
    history = tuple(version_history(events, version.name, version.version, job))
    evaluation = lineage.get("evaluation")
    return ModelCard(
        ref=version.ref, name=version.name, version=version.version,
        status=str(getattr(version.status, "value", version.status)),
        status_reason=version.status_reason, description=version.description,
        created_at=version.created_at, created_by=version.created_by,
        aliases=tuple(version.aliases),
        model_format=(version.manifest or {}).get("model_format"),
        details=details, details_source=source,
        dataset=dict(lineage.get("dataset") or {}), schema=dict(lineage.get("schema") or {}),
        evaluation=dict(evaluation) if isinstance(evaluation, dict) else {},
        parents=parents, job=str(job) if job else None,
        code_version=lineage.get("code_version"), history=history,
    )


def version_history(events: Iterable[AuditEvent], name: str, version: int,
                     job: str | None) -> list[CardEvent]:
    """What the audit trail says about this version: registration, updates, alias moves to
    or from it, and the approvals or rejections of the job that produced it."""
    own = f"model/{name}/version/{version}"
    alias_prefix = f"model/{name}/alias/"
    out = []
    for event in events:
        if event.outcome != "success":
            continue
        details = event.details or {}
        reason = str(details.get("reason") or "")
        if event.resource == own:
            action = "registered" if event.action == "version.register" else "updated"
            detail = (f"status {details.get('status')}" if action == "registered"
                      else event.action)
            out.append(CardEvent(event.at, event.actor, action, _join(detail, reason)))
        elif event.resource.startswith(alias_prefix):
            alias = event.resource.removeprefix(alias_prefix)
            if details.get("to") == version:
                out.append(CardEvent(event.at, event.actor, "promoted",
                                     _join(f"@{alias} -> v{version}", reason)))
            elif details.get("from") == version:
                out.append(CardEvent(event.at, event.actor, "demoted",
                                     _join(f"@{alias} moved to {details.get('to')}", reason)))
        elif job and event.resource == f"job:{job}" and event.action in ("job.approve",
                                                                        "job.reject"):
            action = "approved" if event.action == "job.approve" else "rejected"
            step = details.get("step")
            out.append(CardEvent(event.at, event.actor, action,
                                 _join(f"job {job}" + (f" step {step}" if step else ""),
                                       reason)))
    return out


def _join(detail: str, reason: str) -> str:
    return f"{detail}: {reason}" if reason else detail


def _mapping(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, dict) else {}
