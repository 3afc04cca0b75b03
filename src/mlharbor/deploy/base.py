"""The deploy-target extension point: one small interface, a plan, and the ledger entry.

A target turns a :class:`DeploymentSource` (a resolved model version and the container image
that serves it) plus its own typed options into a :class:`Plan`: the files it would write and
the remote resources it would create. ``Target.plan`` validates and then calls the target's
``_plan`` hook; ``Target.deploy`` plans, and unless ``dry_run`` writes the files, calls
``_apply`` for remote work and records the deployment in the registry's audit ledger (outcome
``success`` or ``failure``) as ``deploy.<target>``.

Implementations need two methods, ``_plan`` and (for remote work) ``_apply``; everything else,
writing files atomically, dry runs and the ledger, lives here once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from mlharbor.core.errors import InvalidInputError, MlharborError

if TYPE_CHECKING:
    from mlharbor.core.records import ModelVersion
    from mlharbor.core.refs import RefLike
    from mlharbor.registry.service import Registry

DEFAULT_IMAGE_REPOSITORY = "mlharbor"
O = TypeVar("O")  # noqa: E741 - the options type of one target


@dataclasses.dataclass(frozen=True, slots=True)
class DeploymentSource:
    """What every target deploys: one model version and the image that serves it."""

    ref: str
    version: ModelVersion
    image: str

    @property
    def model(self) -> str:
        return self.version.name

    @property
    def number(self) -> int:
        return self.version.version

    @property
    def slug(self) -> str:
        """A DNS-1035 label for resource names: ``churn`` -> ``churn``, ``My_M.1`` -> ``my-m-1``."""
        return dns_label(self.version.name)

    @property
    def resource(self) -> str:
        """The audit resource of the deployed version."""
        return f"model/{self.version.name}/version/{self.version.version}"


def dns_label(text: str, max_length: int = 50) -> str:
    label = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    label = label[:max_length].rstrip("-")
    if not label or not label[0].isalpha():
        label = f"m-{label}".rstrip("-")
    return label


def default_image(version: ModelVersion) -> str:
    """The tag ``mlharbor build`` gives a version's image unless told otherwise."""
    return f"{DEFAULT_IMAGE_REPOSITORY}/{dns_label(version.name)}:{version.version}"


@dataclasses.dataclass(frozen=True, slots=True)
class PlannedFile:
    """A file the target writes, relative to the output folder."""

    path: str
    content: str
    mode: int = 0o644


@dataclasses.dataclass(frozen=True, slots=True)
class PlannedResource:
    """A remote resource the target creates or changes (``action`` says which)."""

    kind: str
    name: str
    action: str = "create"
    detail: str = ""


@dataclasses.dataclass(slots=True)
class Plan:
    """Everything one deployment would create; ``describe`` is what ``--dry-run`` prints."""

    target: str
    source: DeploymentSource
    files: list[PlannedFile] = dataclasses.field(default_factory=list)
    resources: list[PlannedResource] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    output: Path | None = None
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    def file(self, path: str) -> PlannedFile:
        for planned in self.files:
            if planned.path == path:
                return planned
        raise InvalidInputError(f"The {self.target} plan has no file {path!r}.",
                                expected=[f.path for f in self.files], received=path)

    def describe(self) -> list[str]:
        lines = [f"{self.target}: {self.source.ref} -> {self.source.version.ref} "
                 f"(image {self.source.image})"]
        where = f"{self.output}/" if self.output else ""
        lines += [f"  write  {where}{f.path}" for f in self.files]
        lines += [f"  {r.action:<6} {r.kind} {r.name}" + (f" ({r.detail})" if r.detail else "")
                  for r in self.resources]
        lines += [f"  note   {note}" for note in self.notes]
        return lines


@dataclasses.dataclass(frozen=True, slots=True)
class DeployResult:
    plan: Plan
    written: list[Path]
    applied: dict[str, Any]
    dry_run: bool


class Target(ABC, Generic[O]):
    """One deployment target. Subclasses set ``name``/``summary`` and implement ``_plan``."""

    name: ClassVar[str]
    summary: ClassVar[str]
    writes_files: ClassVar[bool] = True

    def plan(self, source: DeploymentSource, options: O, output: Path | None) -> Plan:
        """Validate, then ask the target what it would create (under ``output`` when given;
        a plan without a folder lists the files by their paths inside it)."""
        plan = Plan(self.name, source, output=output)
        self._plan(plan, options)
        return plan

    def deploy(
        self, source: DeploymentSource, options: O, *, output: Path | None, registry: Registry,
        actor: str, dry_run: bool = False,
    ) -> DeployResult:
        """Plan; unless ``dry_run``, write the files, apply and record the deployment.

        Only a real run of a target that writes files needs ``output``: a dry run prints the
        plan and writes nothing, so it needs no folder.
        """
        if self.writes_files and output is None and not dry_run:
            raise InvalidInputError(
                f"The {self.name} target writes files; give their folder with --output DIR.",
                hint="Or add --dry-run to see what would be written.", field="output",
            )
        plan = self.plan(source, options, output)
        if dry_run:
            return DeployResult(plan, [], {}, True)
        details = {"target": self.name, "image": source.image, "version": source.number,
                   "ref": source.ref, **plan.details}
        try:
            written = write_files(plan.output, plan.files) if plan.output else []
            applied = self._apply(plan, options)
        except MlharborError as exc:
            with contextlib.suppress(MlharborError):
                registry.store.record(
                    actor=actor, action=f"deploy.{self.name}", resource=source.resource,
                    outcome="failure", details={**details, "error": exc.code,
                                                "message": exc.message})
            raise
        registry.store.record(actor=actor, action=f"deploy.{self.name}",
                              resource=source.resource, outcome="success",
                              details={**details, **applied})
        return DeployResult(plan, written, applied, False)

    @abstractmethod
    def _plan(self, plan: Plan, options: O) -> None:
        """Add the files and resources of this deployment to ``plan``."""

    def _apply(self, plan: Plan, options: O) -> dict[str, Any]:
        """Create the remote resources (files are already written); returns ledger details."""
        return {}


def write_files(output: Path, files: list[PlannedFile]) -> list[Path]:
    """Write every file through a temporary name and a rename, so none is ever half-written."""
    output.mkdir(parents=True, exist_ok=True)
    root = output.resolve()
    written: list[Path] = []
    for planned in files:
        target = (output / planned.path).resolve()
        if not target.is_relative_to(root):
            raise InvalidInputError(f"Refusing to write {planned.path!r} outside {output}.")
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(planned.content)
            Path(tmp).chmod(planned.mode)
            Path(tmp).replace(target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        written.append(target)
    return written


def resolve_source(registry: Registry, ref: RefLike, image: str | None = None
                   ) -> DeploymentSource:
    """The version ``ref`` names (it must be ready) and the image that serves it; ``ref`` is
    text (``churn@champion``) or what the registry handed out (a ModelVersion, a result)."""
    from mlharbor.core.records import VersionStatus
    from mlharbor.core.refs import as_ref

    version = registry.get_version(ref)
    ref = ref if isinstance(ref, str) else str(as_ref(ref))
    if version.status is not VersionStatus.READY:
        raise InvalidInputError(
            f"Version {version.ref} is {version.status.value}; only ready versions deploy.",
            hint=version.status_reason or None)
    if version.manifest is None:
        raise InvalidInputError(
            f"Version {version.ref} has no bundle manifest, so no server can load it.",
            hint="Register the model with `mlharbor models register`.")
    return DeploymentSource(ref, version, image or default_image(version))
