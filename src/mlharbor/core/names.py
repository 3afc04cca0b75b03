"""Rules for the names users give to models, aliases, endpoints and tags.

Names end up in URLs, file listings, audit records and log lines, so they are restricted to a
small alphabet that can never form a path (no slash, backslash, dot-dot, percent escape or NUL).
Artifacts are content addressed, so a name never becomes a path anyway; the rule is belt and
braces and keeps messages and URLs unambiguous.
"""

from __future__ import annotations

import re

from mlharbor.core.errors import InvalidNameError, describe_value

MAX_NAME_LENGTH = 255
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_ALIAS_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
RESERVED_ALIASES = frozenset({"latest"})
_ALLOWED_NAME = "letters, digits, '.', '_' and '-', starting with a letter or digit"


def validate_name(value: object, *, kind: str = "model name") -> str:
    """Return ``value`` if it is an acceptable name, else raise :class:`InvalidNameError`."""
    if not isinstance(value, str):
        raise InvalidNameError(
            f"The {kind} must be a string; received {type(value).__name__}.", field=kind
        )
    if value == "":
        raise InvalidNameError(f"The {kind} is empty.", hint=f"Use {_ALLOWED_NAME}.", field=kind)
    if value != value.strip():
        raise InvalidNameError(
            f"The {kind} {describe_value(value)} has leading or trailing spaces.",
            hint="Remove the spaces.",
            field=kind,
        )
    if len(value) > MAX_NAME_LENGTH:
        raise InvalidNameError(
            f"The {kind} is {len(value)} characters long; at most {MAX_NAME_LENGTH} are allowed.",
            field=kind,
        )
    if "\x00" in value:
        raise InvalidNameError(f"The {kind} contains a NUL character.", field=kind)
    if ".." in value or not _NAME_RE.fullmatch(value):
        raise InvalidNameError(
            f"The {kind} {describe_value(value)} is not allowed.",
            hint=f"Use {_ALLOWED_NAME}, with no '..' (names never form paths).",
            field=kind,
        )
    return value


def validate_alias(value: object) -> str:
    """Return ``value`` if it is an acceptable alias name (``champion``, ``challenger`` ...)."""
    name = validate_name(value, kind="alias")
    if not _ALIAS_RE.fullmatch(name):
        raise InvalidNameError(
            f"The alias {describe_value(name)} is not allowed.",
            hint="An alias starts with a letter and holds letters, digits, '_' and '-' "
            "(so it can never be mistaken for a version number).",
            field="alias",
        )
    if name.lower() in RESERVED_ALIASES:
        raise InvalidNameError(
            f"The alias {name!r} is reserved: '{name}' always means the newest ready version.",
            hint="Pick another alias name.",
            field="alias",
        )
    return name
