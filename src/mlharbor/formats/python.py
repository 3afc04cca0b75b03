"""A model written as a Python class with ``predict``, shipped as its source file.

Loading runs the file's code, so it happens only when the caller passes ``trust_code=True``
(recorded in the manifest's trust record at registration, with the sha256 of the code). The
class is found by reading the source with ``ast`` first: nothing is imported until trust is
given. The module is built from the bytes already read and hashed (``exec(compile(...))``),
never by importing the file again, so the code that runs is the code whose digest is recorded.
"""

from __future__ import annotations

import ast
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np

from mlharbor.core.errors import InvalidInputError, UnsafeArtifactError
from mlharbor.formats.base import ModelFormat, ModelInfo, NativeModel, TrustOptions, plain_list
from mlharbor.formats.bundle import ModelBytes


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

    @property
    def has_proba(self) -> bool:
        return hasattr(self.model, "predict_proba")

    def predict_proba(self, data: Any) -> np.ndarray:
        if not self.has_proba:
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

    def read_file(self, blob: ModelBytes, trust: TrustOptions) -> Any:
        return _instantiate(blob, None, trust)

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

    def load(self, blob: ModelBytes, flavor: dict[str, Any], trust: TrustOptions) -> NativeModel:
        return PythonModel(_instantiate(blob, flavor.get("class_name"), trust))


def _instantiate(blob: ModelBytes, class_name: str | None, trust: TrustOptions) -> Any:
    name = blob.name
    if not trust.code:
        raise UnsafeArtifactError(
            f"Refusing to load {name!r}: it is Python source, and loading runs its code.",
            hint="Pass trust_code=True (--trust-code) if you wrote the code and trust it.",
        )
    source = blob.data
    try:
        names = model_classes(source.decode("utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError) as exc:
        raise InvalidInputError(f"{name!r} is not readable Python source: {exc}.") from exc
    if class_name is None:
        if len(names) != 1:
            raise InvalidInputError(
                f"{name!r} must define exactly one class with predict(); found "
                f"{', '.join(names) or 'none'}.", hint="Keep one model class per file.")
        class_name = names[0]
    if class_name not in names:
        raise InvalidInputError(f"{name!r} defines no model class {class_name!r}.")
    module_name = f"mlharbor_user_model_{blob.sha256[:16]}"
    module = types.ModuleType(module_name)
    module.__file__ = str(blob.path)
    code = compile(source, str(blob.path), "exec")  # the very bytes that were hashed
    sys.modules[module_name] = module  # dataclasses, pickling ... look the module up by name
    try:
        exec(code, module.__dict__)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    return getattr(module, class_name)()
