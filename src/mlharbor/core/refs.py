"""Model references: ``churn``, ``churn:3``, ``churn@champion``, ``churn:latest``.

One parser for every surface (CLI, HTTP, Python API, deploy targets), so a reference means the
same thing everywhere. A bare name means ``latest``: the newest ready, non-archived version.

The Python API also takes back the objects it hands out: :func:`as_ref` turns a
:class:`~mlharbor.core.records.ModelVersion`, or a result holding one in ``.version`` (what
``register_model`` returns), into the reference of that exact version, so
``registry.set_alias("churn", "champion", register_model(...).version)`` just works.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, TypeAlias

from mlharbor.core.errors import InvalidInputError, describe_value
from mlharbor.core.names import validate_alias, validate_name
from mlharbor.core.records import ModelVersion

RefKind = Literal["version", "alias", "latest"]
MAX_VERSION = 2**31 - 1
REF_FORMS = "'churn:3', 'churn@champion', a ModelRef or a ModelVersion"


class HoldsVersion(Protocol):
    """Anything carrying the version it made, such as ``register_model``'s result."""

    @property
    def version(self) -> ModelVersion: ...


RefLike: TypeAlias = "str | ModelRef | ModelVersion | HoldsVersion"


@dataclass(frozen=True, slots=True)
class ModelRef:
    """A parsed reference to one version of a registered model."""

    name: str
    kind: RefKind
    version: int | None = None
    alias: str | None = None

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        """Parse ``name``, ``name:N``, ``name:latest`` or ``name@alias``."""
        if not isinstance(text, str):
            return as_ref(text)
        if "@" in text:
            name, _, alias = text.partition("@")
            return cls(validate_name(name), "alias", alias=validate_alias(alias))
        if ":" in text:
            name, _, selector = text.rpartition(":")
            validate_name(name)
            if selector == "latest":
                return cls(name, "latest")
            if selector.isdigit() and selector.isascii() and 0 < int(selector) <= MAX_VERSION:
                return cls(name, "version", version=int(selector))
            raise InvalidInputError(
                f"The version in the reference {describe_value(text)} is "
                f"{describe_value(selector)}; expected a positive "
                "whole number or 'latest'.",
                hint="Write it as name:3, name:latest or name@alias.",
                field="reference",
            )
        return cls(validate_name(text), "latest")

    def __str__(self) -> str:
        if self.kind == "version":
            return f"{self.name}:{self.version}"
        if self.kind == "alias":
            return f"{self.name}@{self.alias}"
        return f"{self.name}:latest"


def as_ref(value: object, *, field: str = "reference") -> ModelRef:
    """The reference ``value`` means: parsed text, a :class:`ModelRef` as is, or the exact
    version of a :class:`ModelVersion` (or of an object holding one in ``.version``).

    The one place the Python API normalises what callers pass as a version; anything else is
    refused with a short description of what was received (never its whole repr).
    """
    if isinstance(value, ModelRef):
        return value
    if isinstance(value, str):
        return ModelRef.parse(value)
    held = getattr(value, "version", None) if not isinstance(value, ModelVersion) else value
    if isinstance(held, ModelVersion):
        return ModelRef(held.name, "version", version=held.version)
    raise InvalidInputError(
        f"A model reference must be {REF_FORMS}; received {describe_value(value)}.",
        field=field, expected=REF_FORMS, received=describe_value(value),
    )
