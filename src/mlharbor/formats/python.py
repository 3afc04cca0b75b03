"""A model written as a Python class with ``predict``, shipped as its source file.

Loading runs the file's code, so it happens only when the caller passes ``trust_code=True``
(recorded in the manifest's trust record at registration). The class is found by reading the
source with ``ast`` first: nothing is imported until trust is given.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

import numpy as np

from mlharbor.core.errors import InvalidInputError, UnsafeArtifactError
from mlharbor.formats.base import ModelFormat, ModelInfo, NativeModel, TrustOptions, plain_list


def model_classes(source: str) -> list[str]:
    """Names of top-level classes that define ``predict``, read without running the code."""
    tree = ast.parse(source)
    return [node.name for node in tree.body if isinstance(node, ast.ClassDef) and any(
        isinstance(item, ast.FunctionDef) and item.name == "predict" for item in node.body)]


class PythonModel(NativeModel):
    def __init__(self, model: Any) -> None:
        self.model = model
        self.input_kind = "frame"
        classes = getattr(model, "classes_", None)
        self.classes = None if classes is None else np.asarray(classes)

    def predict(self, data: Any) -> np.ndarray:
        return np.asarray(self.model.predict(data))

    def predict_proba(self, data: Any) -> np.ndarray:
        if not hasattr(self.model, "predict_proba"):
            return super().predict_proba(data)
        return np.asarray(self.model.predict_proba(data))


class PythonFormat(ModelFormat):
    name = "python"
    summary = "a Python class with predict(), shipped as source; loads only with trust_code"
    file_name = "model.py"

    def claims_object(self, obj: Any) -> bool:
        return False  # objects carry no source we could ship reliably; register the .py file

    def claims_file(self, path: Path, head: bytes) -> bool:
        if path.suffix != ".py":
            return False
        try:
            return bool(model_classes(path.read_text(encoding="utf-8")))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            return False

    def read_file(self, path: Path, trust: TrustOptions) -> Any:
        return _instantiate(path, None, trust)

    def save(self, obj: Any, model_dir: Path) -> str:
        raise InvalidInputError("Register the model's .py file, not the object.")

    def describe(self, obj: Any) -> ModelInfo:
        classes = getattr(obj, "classes_", None)
        classifier = classes is not None and hasattr(obj, "predict_proba")
        names = getattr(obj, "feature_names", None)
        return ModelInfo(
            task="classification" if classifier else "regression",
            classes=plain_list(classes) if classifier else None,
            feature_names=None if names is None else [str(n) for n in names],
            input_kind="frame", flavor={"class_name": type(obj).__name__},
        )

    def load(self, path: Path, flavor: dict[str, Any], trust: TrustOptions) -> NativeModel:
        return PythonModel(_instantiate(path, flavor.get("class_name"), trust))


def _instantiate(path: Path, class_name: str | None, trust: TrustOptions) -> Any:
    if not trust.code:
        raise UnsafeArtifactError(
            f"Refusing to load {path.name!r}: it is Python source, and loading runs its code.",
            hint="Pass trust_code=True (--trust-code) if you wrote the code and trust it.",
        )
    source = path.read_bytes()
    names = model_classes(source.decode("utf-8"))
    if class_name is None:
        if len(names) != 1:
            raise InvalidInputError(
                f"{path.name!r} must define exactly one class with predict(); found "
                f"{', '.join(names) or 'none'}.", hint="Keep one model class per file.")
        class_name = names[0]
    if class_name not in names:
        raise InvalidInputError(f"{path.name!r} defines no model class {class_name!r}.")
    module_name = f"mlharbor_user_model_{hashlib.sha256(source).hexdigest()[:16]}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise InvalidInputError(f"Cannot import {path.name!r} as a Python module.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return getattr(module, class_name)()
