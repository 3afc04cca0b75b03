"""The catalog of model formats: look up by name, or detect from an object or a file's content.

Formats are listed as import paths and imported on first use, so the catalog itself is cheap.
Misses explain themselves: an unknown name lists the known ones; an unrecognised file says what
was looked for. Detection of files is by content, never by extension: pickles are checked first
so that a pickle renamed ``model.bin`` is still recognised (and refused unless trusted).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from mlharbor.core.errors import InvalidInputError
from mlharbor.formats.base import ModelFormat

# Order matters for detection: the first format that claims an object or file wins.
_FORMATS: dict[str, str] = {
    "pickle": "mlharbor.formats.pickle:PickleFormat",
    "sklearn": "mlharbor.formats.sklearn:SklearnFormat",
    "xgboost": "mlharbor.formats.xgboost:XGBoostFormat",
    "lightgbm": "mlharbor.formats.lightgbm:LightGBMFormat",
    "onnx": "mlharbor.formats.onnx:OnnxFormat",
    "torch": "mlharbor.formats.torch:TorchScriptFormat",
    "python": "mlharbor.formats.python:PythonFormat",
}
_HEAD_BYTES = 4096
_loaded: dict[str, ModelFormat] = {}


def known_formats() -> list[str]:
    return list(_FORMATS)


def get_format(name: str) -> ModelFormat:
    """The format called ``name``; an unknown name lists the known ones."""
    if name not in _FORMATS:
        raise InvalidInputError(
            f"Unknown model format {name!r}; known: {', '.join(_FORMATS)}.",
            hint="Pick one of the known formats.", expected=list(_FORMATS), received=name,
        )
    if name not in _loaded:
        module_name, cls_name = _FORMATS[name].split(":")
        _loaded[name] = getattr(importlib.import_module(module_name), cls_name)()
    return _loaded[name]


def detect_object(obj: Any) -> ModelFormat:
    """The format that can save the in-memory model ``obj``."""
    for name in _FORMATS:
        if name == "pickle":
            continue
        fmt = get_format_if_available(name)
        if fmt is not None and fmt.claims_object(obj):
            return fmt
    raise InvalidInputError(
        f"No model format can save an object of type {type(obj).__module__}."
        f"{type(obj).__qualname__}; known formats: {', '.join(_FORMATS)}.",
        hint="Pass a scikit-learn estimator, an XGBoost/LightGBM model, a TorchScript module, "
        "or a file of one of the known formats.",
    )


def detect_file(path: Path) -> ModelFormat:
    """The format of the file at ``path``, decided by its content."""
    if not path.is_file():
        raise InvalidInputError(f"Model source {str(path)!r} is not a file.")
    with path.open("rb") as handle:
        head = handle.read(_HEAD_BYTES)
    for name in _FORMATS:
        fmt = get_format_if_available(name)
        if fmt is not None and fmt.claims_file(path, head):
            return fmt
    supported = "; ".join(f"{name}: {get_format(name).summary}" for name in _FORMATS)
    raise InvalidInputError(
        f"Unknown model format in {str(path)!r}: it is none of {', '.join(_FORMATS)}.",
        hint=f"Supported: {supported}.",
    )


def get_format_if_available(name: str) -> ModelFormat | None:
    """The format, or None when its framework is not installed (it then cannot claim anything)."""
    try:
        return get_format(name)
    except ImportError:
        return None
