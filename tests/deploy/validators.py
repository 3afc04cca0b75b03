"""The real validators every generated manifest must pass, shared by the deploy tests."""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

K8S_VERSION = "1.32.0"
# Copies of the CRD schemas in the shared schemas folder (see schemas/README.md).
SCHEMAS = Path(__file__).resolve().parent / "schemas"
CRD_SCHEMAS = {
    ("serving.kserve.io/v1beta1", "InferenceService"):
        "kserve-inferenceservice-v1beta1.schema.json",
    ("serving.knative.dev/v1", "Service"): "knative-service-v1.schema.json",
    ("keda.sh/v1alpha1", "ScaledObject"): "keda-scaledobject-v1alpha1.schema.json",
}


def k8s_errors(doc: dict[str, Any]) -> list[str]:
    """kubernetes-validate in strict mode; a kind without a schema is an error, not a pass."""
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    try:
        kv.validate(doc, K8S_VERSION, strict=True)
    except kv.SchemaNotFoundError as exc:
        return [f"no schema for {doc.get('apiVersion')}/{doc.get('kind')}: {exc}"]
    except kv.ValidationError as exc:
        return [str(exc)]
    return []


@functools.cache
def _crd_validator(name: str) -> Any:
    jsonschema = pytest.importorskip("jsonschema", reason="pip install jsonschema")
    path = SCHEMAS / name
    if not path.is_file():
        pytest.skip(f"the shared CRD schema {path} is missing")
    return jsonschema.Draft7Validator(json.loads(path.read_text()))


def crd_errors(doc: dict[str, Any]) -> list[str]:
    """A KServe or Knative resource against its CRD's openAPIV3Schema."""
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key not in CRD_SCHEMAS:
        return [f"no CRD schema for {key}"]
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in _crd_validator(CRD_SCHEMAS[key]).iter_errors(doc)]


def manifest_errors(doc: dict[str, Any]) -> list[str]:
    if (doc.get("apiVersion"), doc.get("kind")) in CRD_SCHEMAS:
        return crd_errors(doc)
    return k8s_errors(doc)


def load_docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


_VALUE = re.compile(r"\{\{ \.Values\.([A-Za-z0-9_.]+)( \| quote)? \}\}")


def render_helm(template: str, values: dict[str, Any]) -> str:
    """Render a chart template that uses only ``{{ .Values.x }}`` and ``| quote``.

    Anything else Helm would evaluate makes this fail, which keeps the chart this simple.
    """
    def value(match: re.Match[str]) -> str:
        found: Any = values
        for part in match.group(1).split("."):
            found = found[part]
        return json.dumps(str(found)) if match.group(2) else str(found)

    rendered = _VALUE.sub(value, template)
    assert "{{" not in rendered, f"unsupported Helm construct left in: {rendered}"
    return rendered
