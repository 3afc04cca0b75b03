"""YAML documents validated into pydantic models, with errors that name file, line and field.

Recipes and retraining policies are YAML files people write by hand; an error must say where:
``policy.yaml line 7, rollout.canary.steps: ...``. :func:`load_yaml` composes the document once
keeping every node's line (:class:`YamlDocument`), :func:`validate_model` turns a pydantic
``ValidationError`` into one :class:`~mlharbor.core.errors.ConfigError` listing each problem
with its line, and :func:`where` / :func:`dotted` format a location for checks made later.

Pydantic is imported by the caller's model; this module imports PyYAML only when parsing.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, TypeVar

from mlharbor.core.errors import ConfigError, describe_value

Location = tuple[str | int, ...]
Lines = dict[Location, int]
M = TypeVar("M")
#: The most values a document may hold with its aliases expanded.
MAX_NODES = 100_000


@dataclasses.dataclass(frozen=True)
class YamlDocument:
    """A parsed YAML document: its data and the line (1-based) of every mapping key and item."""

    data: Any
    lines: Lines
    source: str


def read_text(path: str | Path, *, what: str, hint: str) -> str:
    """The file's text, or a ConfigError naming ``what`` could not be read and why."""
    file = Path(path)
    try:
        return file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(f"Cannot read the {what} {str(file)!r}: {reason}.", hint=hint) from exc


def load_yaml(text: str, *, source: str) -> YamlDocument:
    """Parse ``text`` (safe loader only) keeping node lines; invalid YAML names its line."""
    import yaml

    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except RecursionError as exc:
        raise ConfigError(f"{source}: nested too deeply to read.",
                          hint="Flatten the document.") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(
            f"{source}{line}: not valid YAML ({getattr(exc, 'problem', None) or exc}).",
            hint="Fix the indentation or quoting at that line.",
        ) from exc
    lines: Lines = {}
    if node is not None:
        _collect_lines(node, (), lines)
    return YamlDocument(data=data, lines=lines, source=source)


def validate_model(model: type[M], data: Any, *, source: str, lines: Lines | None = None,
                   what: str, hint: str | None = None) -> M:
    """``model.model_validate(data)``, or one ConfigError whose message lists every problem as
    ``<source> line <n>, <field>: <what is wrong>`` (``details.problems`` has them one by one)."""
    from pydantic import ValidationError

    try:
        return model.model_validate(data)  # type: ignore[attr-defined,no-any-return]
    except ValidationError as exc:
        problems = [f"{where(source, lines or {}, tuple(err['loc']), root=what)}: {message(err)}"
                    for err in exc.errors()]
        raise ConfigError(f"Invalid {what}: " + "; ".join(problems) + ".", hint=hint,
                          problems=problems) from exc


def message(err: Any) -> str:
    """One pydantic error as a sentence, with the received value when it helps."""
    kind = err["type"]
    if kind == "missing":
        return "this field is required"
    if kind == "extra_forbidden":
        return "unknown field (check the spelling)"
    msg = str(err["msg"]).removeprefix("Value error, ")
    if "input" in err and kind not in ("model_type",) and not isinstance(err["input"], dict):
        return f"{msg}; received {describe_value(err['input'])}"
    return msg


def dotted(loc: Location, *, root: str = "recipe") -> str:
    """``("rollout", "canary", "steps", 2)`` as ``rollout.canary.steps[2]``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or root


def where(source: str, lines: Lines, loc: Location, *, root: str = "recipe") -> str:
    """``"policy.yaml line 7, rollout.canary.steps"``: the nearest known line of ``loc``."""
    # Pydantic adds union member names to locations ("list[any]"); keep only real path parts.
    path = tuple(p for p in loc if isinstance(p, int) or not _is_union_tag(p))
    probe = path
    while probe and probe not in lines:
        probe = probe[:-1]
    line = lines.get(probe) if probe else None  # the whole file's first line helps nobody
    at = f" line {line}" if line else ""
    return f"{source}{at}, {dotted(path, root=root)}"


def _is_union_tag(part: str) -> bool:
    return "[" in part or part in {"Distribution", "str", "int", "bool", "float"}


def _collect_lines(root: Any, base: Location, out: Lines) -> None:
    """Record each key's and item's line, walking aliases as expanded (bounded, so an
    alias bomb is a ConfigError rather than hours of work)."""
    import yaml

    stack: list[tuple[Any, Location]] = [(root, base)]
    visited = 0
    while stack:
        node, path = stack.pop()
        visited += 1
        if visited > MAX_NODES:
            raise ConfigError(f"The document has more than {MAX_NODES} values once its aliases "
                              f"are expanded.", hint="Write it out without nested aliases.")
        out.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key = key_node.value
                out[(*path, key)] = key_node.start_mark.line + 1
                stack.append((value_node, (*path, key)))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                out[(*path, index)] = item.start_mark.line + 1
                stack.append((item, (*path, index)))
