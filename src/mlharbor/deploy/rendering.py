"""Rendering the templates shipped in ``deploy/templates`` (Jinja2, strict about undefined names).

Values go into YAML and JSON templates through the ``v`` filter, which writes them as JSON (valid
YAML, so quoting is never wrong). A :class:`HelmValue` passed instead writes a Helm expression,
which is how one set of Kubernetes templates yields both plain manifests and a Helm chart.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any

import yaml


@dataclasses.dataclass(frozen=True, slots=True)
class HelmValue:
    """A reference to ``.Values.<path>`` in a Helm chart, standing in for a literal value."""

    path: str
    quote: bool = True

    def expression(self) -> str:
        pipe = " | quote" if self.quote else ""
        return "{{ .Values." + self.path + pipe + " }}"


def _value(value: Any) -> str:
    if isinstance(value, HelmValue):
        return value.expression()
    return json.dumps(value)


@functools.cache
def _environment() -> Any:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("mlharbor.deploy", "templates"),
        undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
        trim_blocks=True, lstrip_blocks=True, autoescape=False,
    )
    env.filters["v"] = _value
    return env


def render(template: str, **context: Any) -> str:
    """The text of ``templates/<template>`` rendered with ``context``."""
    text: str = _environment().get_template(template).render(**context)
    return text


def template_text(template: str) -> str:
    """A template's raw text, for files shipped verbatim."""
    from importlib import resources

    return resources.files("mlharbor.deploy").joinpath("templates", template).read_text("utf-8")


def yaml_document(data: Any) -> str:
    """Data written as block-style YAML, keys in the order given."""
    text: str = yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=100)
    return text
