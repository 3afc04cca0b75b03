"""The Predictor: a verified bundle, loaded, answering ``predict`` and ``predict_proba``.

Every call validates and coerces its input against the signature, then runs on one runtime:
ONNX Runtime when the bundle carries an ONNX file that passed the parity check (or when the
caller forces ``runtime="onnx"``), else the native framework. The ONNX path is built for
single-row latency: the session, input names, output names and per-column converters are all
resolved once, here, not per request.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlharbor.core.errors import InvalidInputError
from mlharbor.core.signature import Signature
from mlharbor.formats.base import NativeModel, TrustOptions
from mlharbor.formats.bundle import BundleManifest, open_verified
from mlharbor.formats.catalog import get_format

RUNTIMES = ("auto", "onnx", "native")


class OrtRunner:
    """Runs an ONNX model: one 2-D tensor input, or one input per signature column."""

    name = "onnx"

    def __init__(self, model: Any, signature: Signature, classes: np.ndarray | None) -> None:
        from mlharbor.formats.onnx import OnnxModel

        assert isinstance(model, OnnxModel)
        self.model = model
        self._validator = signature.validator()
        input_names = [n for n, _ in model.inputs]
        self._columns = len(input_names) > 1 or not signature.all_numeric
        if self._columns and not set(input_names) <= set(signature.names):
            raise InvalidInputError(
                f"The ONNX model takes inputs {input_names}, which the signature "
                f"({', '.join(signature.names)}) does not all name.",
                hint="Give a signature whose column names match the ONNX inputs.",
            )
        self._input, self._dtype = model.inputs[0]
        # session.run validates names on every call; the bound C++ method skips that work.
        inner = getattr(model.session, "_sess", None)
        self._run = inner.run if inner is not None else model.session.run
        self._proba = None if model.proba_name is None else [model.proba_name]
        self._value = [model.value_name]
        self._classes = classes if classes is not None else model.classes

    def feeds(self, data: Any) -> dict[str, np.ndarray]:
        if not self._columns:
            return {self._input: self._validator.matrix(data, self._dtype)}
        return self.model.feeds_from_columns(self._validator.columns(data))

    def predict_proba(self, data: Any) -> np.ndarray:
        if self._proba is None:
            raise InvalidInputError("This model gives no class probabilities; use predict.")
        out = self._run(self._proba, self.feeds(data), None)[0]
        return out if isinstance(out, np.ndarray) else self.model.proba_from_outputs(out)

    def predict(self, data: Any) -> np.ndarray:
        if self._proba is not None and self._classes is not None:
            labels: np.ndarray = self._classes[self.predict_proba(data).argmax(axis=1)]
            return labels
        out = np.asarray(self._run(self._value, self.feeds(data), None)[0])
        return out[:, 0] if out.ndim == 2 and out.shape[1] == 1 else out


class NativeRunner:
    """Runs the model in its own framework, fed a DataFrame or a 2-D float64 array."""

    name = "native"

    def __init__(self, model: NativeModel, signature: Signature) -> None:
        self.model = model
        self._validator = signature.validator()
        self._frame = model.input_kind == "frame" or not signature.all_numeric

    def inputs(self, data: Any) -> Any:
        if self._frame:
            return self._validator.frame(data)
        return self._validator.matrix(data, np.float64)

    def predict(self, data: Any) -> np.ndarray:
        out = np.asarray(self.model.predict(self.inputs(data)))
        return out[:, 0] if out.ndim == 2 and out.shape[1] == 1 else out

    def predict_proba(self, data: Any) -> np.ndarray:
        return np.asarray(self.model.predict_proba(self.inputs(data)))


Runner = OrtRunner | NativeRunner


@dataclass(frozen=True, slots=True)
class Predictor:
    """A loaded model version: validated ``predict`` / ``predict_proba`` on one runtime."""

    manifest: BundleManifest
    signature: Signature
    runner: Runner

    @property
    def runtime(self) -> str:
        return self.runner.name

    @property
    def task(self) -> str:
        return self.manifest.task

    @property
    def classes(self) -> list[Any] | None:
        return self.manifest.classes

    def predict(self, data: Any) -> np.ndarray:
        """Predictions for each row (class labels for classifiers)."""
        return self.runner.predict(data)

    def predict_proba(self, data: Any) -> np.ndarray:
        """Class probabilities per row, columns in the order of :attr:`classes`."""
        if self.manifest.task != "classification":
            raise InvalidInputError(
                f"predict_proba needs a classifier; this model does {self.manifest.task}.",
                hint="Call predict instead.",
            )
        return self.runner.predict_proba(data)


def resolve_trust(
    manifest: BundleManifest, trust: TrustOptions, *, registry_manifest: bool
) -> TrustOptions:
    """Honour the trust recorded at registration only when the manifest came from the registry.

    A bare bundle directory carries its own manifest, which anyone could edit; then the caller
    must pass the pin or the code flag again.
    """
    record = manifest.trust
    if not registry_manifest:
        return trust
    pin = trust.pickle_sha256
    if record.get("mode") == "pickle-pinned" and pin is None:
        pin = record.get("sha256")
    return TrustOptions(trust.skops_trusted_types, pin, trust.code or record.get("mode") == "code")


def load_bundle(
    root: Path,
    *,
    expected_manifest: dict[str, Any] | None = None,
    trust: TrustOptions | None = None,
    runtime: str | None = None,
) -> Predictor:
    """Verify every file of the bundle, then load it on the chosen runtime.

    ``expected_manifest`` is the registry's copy of the manifest; ``runtime`` is ``auto``
    (the bundle's default), ``onnx`` or ``native``. The file that gets loaded is read once
    during verification, and the runtime is built from those checked bytes: the file is not
    opened again between the digest check and deserialization.
    """
    choice = runtime or "auto"
    if choice not in RUNTIMES:
        raise InvalidInputError(f"Unknown runtime {choice!r}; known: {', '.join(RUNTIMES)}.")
    manifest, held = open_verified(root, expected_manifest,
                                   hold=lambda m: [_file_to_load(m, choice)])
    trust = resolve_trust(manifest, trust or TrustOptions(),
                          registry_manifest=expected_manifest is not None)
    signature = Signature.from_dict(manifest.signature)
    classes = None if manifest.classes is None else np.asarray(manifest.classes)
    converted = _runs_converted_onnx(manifest, choice)  # after verifying: may refuse
    blob = held[_file_to_load(manifest, choice)]
    runner: Runner
    if converted:
        from mlharbor.formats.onnx import OnnxModel, make_session, read_checked

        read_checked(blob)
        runner = OrtRunner(OnnxModel(make_session(blob), manifest.classes), signature, classes)
    else:
        fmt = get_format(manifest.model_format)
        flavor = dict(manifest.flavor, classes=manifest.classes)
        native = fmt.load(blob, flavor, trust)
        if fmt.name == "onnx":
            runner = OrtRunner(native, signature, classes)
        else:
            runner = NativeRunner(native, signature)
    return Predictor(manifest, signature, runner)


def _runs_converted_onnx(manifest: BundleManifest, choice: str, *, check: bool = True) -> bool:
    """Whether the chosen runtime serves the converted ONNX file rather than the model file."""
    if choice == "auto":
        choice = manifest.default_runtime
    if choice != "onnx" or manifest.model_format == "onnx":
        return False
    if manifest.onnx_path is None:
        if not check:
            return False
        raise InvalidInputError(
            "runtime='onnx' was asked for, but this bundle has no ONNX model: "
            f"{manifest.onnx.get('reason', 'conversion was not attempted')}.",
            hint="Use runtime='native' or 'auto'.",
        )
    return True


def _file_to_load(manifest: BundleManifest, choice: str) -> str:
    """The bundle member the chosen runtime deserializes (its bytes are held while verifying)."""
    if _runs_converted_onnx(manifest, choice, check=False) and manifest.onnx_path is not None:
        return manifest.onnx_path
    return manifest.model_path

