"""Model references: ``churn``, ``churn:3``, ``churn@champion``, ``churn:latest``.

One parser for every surface (CLI, HTTP, Python API, deploy targets), so a reference means the
same thing everywhere. A bare name means ``latest``: the newest ready, non-archived version.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mlharbor.core.errors import InvalidInputError
from mlharbor.core.names import validate_alias, validate_name

RefKind = Literal["version", "alias", "latest"]
MAX_VERSION = 2**31 - 1


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
            raise InvalidInputError(
                f"A model reference must be a string; received {type(text).__name__}."
            )
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
                f"The version in the reference {text!r} is {selector!r}; expected a positive "
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
