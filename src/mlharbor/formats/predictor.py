"""The Predictor: a verified bundle, loaded, answering ``predict`` and ``predict_proba``.

Every call validates and coerces its input against the signature, then runs on one runtime:
ONNX Runtime when the bundle carries an ONNX file that passed the parity check (or when the
caller forces ``runtime="onnx"``), else the native framework. The ONNX path is built for
single-row latency: the session, input names, output names and per-column converters are all
resolved once, here, not per request.

Labels are the model's own ``predict``, on every runtime: the native model's ``predict``, or
the ONNX graph's label output (which the parity check compared with that ``predict`` at
registration). They are never the most probable class unless that *is* the model's
``predict``: a threshold-tuned classifier answers differently. ``run`` (a prepared batch) and
:meth:`Predictor.outputs` give labels and probabilities together; the serving runners and the
serverless handlers use exactly these, so there is one copy of the label rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlharbor.core.errors import InvalidInputError
from mlharbor.core.signature import Signature
from mlharbor.formats.base import NativeModel, TrustOptions, labels_from_proba
from mlharbor.formats.bundle import BundleManifest, open_verified
from mlharbor.formats.catalog import get_format

RUNTIMES = ("auto", "onnx", "native")


@dataclass(frozen=True, slots=True)
class Outputs:
    """What a model gives for a batch: one prediction per row, and probabilities if a classifier."""

    predictions: np.ndarray
    probabilities: np.ndarray | None

    def rows(self, start: int, stop: int) -> Outputs:
        proba = None if self.probabilities is None else self.probabilities[start:stop]
        return Outputs(self.predictions[start:stop], proba)


def _flat(out: Any) -> np.ndarray:
    """One prediction per row: a ``[n, 1]`` output becomes ``[n]``."""
    value = np.asarray(out)
    return value[:, 0] if value.ndim == 2 and value.shape[1] == 1 else value


class OrtRunner:
    """Runs an ONNX model: one 2-D tensor input, or one input per signature column.

    A classifier's labels are the graph's label output (converters compute the estimator's own
    ``predict`` there); only a graph without one falls back to the most probable class.
    """

    name = "onnx"

    def __init__(self, model: Any, signature: Signature, classes: np.ndarray | None,
                 task: str) -> None:
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
        self._classifier = task == "classification" and self._proba is not None
        self._label = model.label_name
        self._both = None if self._label is None or self._proba is None \
            else [self._label, *self._proba]

    def feeds(self, data: Any) -> dict[str, np.ndarray]:
        if not self._columns:
            return {self._input: self._validator.matrix(data, self._dtype)}
        return self.model.feeds_from_columns(self._validator.columns(data))

    def run(self, feeds: dict[str, np.ndarray]) -> Outputs:
        """Labels (and probabilities, for a classifier) of prepared feeds, in one session run."""
        if not self._classifier:
            return Outputs(_flat(self._run(self._value, feeds, None)[0]), None)
        if self._both is not None:
            labels, out = self._run(self._both, feeds, None)
            return Outputs(_flat(labels), self._probabilities(out))
        proba = self._probabilities(self._run(self._proba, feeds, None)[0])
        return Outputs(labels_from_proba(proba, self._classes), proba)

    def outputs(self, data: Any) -> Outputs:
        return self.run(self.feeds(data))

    def _probabilities(self, out: Any) -> np.ndarray:
        return out if isinstance(out, np.ndarray) else self.model.proba_from_outputs(out)

    def predict_proba(self, data: Any) -> np.ndarray:
        if self._proba is None:
            raise InvalidInputError("This model gives no class probabilities; use predict.")
        return self._probabilities(self._run(self._proba, self.feeds(data), None)[0])

    def predict(self, data: Any) -> np.ndarray:
        if self._classifier and self._label is None:
            return self.outputs(data).predictions
        return _flat(self._run(self._value, self.feeds(data), None)[0])


class NativeRunner:
    """Runs the model in its own framework, fed a DataFrame or a 2-D float64 array."""

    name = "native"

    def __init__(self, model: NativeModel, signature: Signature, task: str) -> None:
        self.model = model
        self._validator = signature.validator()
        self._frame = model.input_kind == "frame" or not signature.all_numeric
        self._classifier = task == "classification"

    def inputs(self, data: Any) -> Any:
        if self._frame:
            return self._validator.frame(data)
        return self._validator.matrix(data, np.float64)

    def run(self, x: Any) -> Outputs:
        """The model's own ``predict`` (and ``predict_proba``, for a classifier) of prepared
        input (see :meth:`NativeModel.predict_with_proba`)."""
        if not self._classifier:
            return Outputs(_flat(self.model.predict(x)), None)
        labels, proba = self.model.predict_with_proba(x)
        return Outputs(_flat(labels), proba)  # proba None: a classifier of labels only

    def outputs(self, data: Any) -> Outputs:
        return self.run(self.inputs(data))

    def predict(self, data: Any) -> np.ndarray:
        return _flat(self.model.predict(self.inputs(data)))

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
        """Predictions for each row (class labels for classifiers): the model's own predict."""
        return self.runner.predict(data)

    def outputs(self, data: Any) -> Outputs:
        """Predictions and (classifiers) probabilities of the same rows, validated once and
        inferred in one pass where the runtime allows: what serving answers."""
        return self.runner.outputs(data)

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
        from mlharbor.formats.onnx import OnnxModel, checked_session

        runner = OrtRunner(OnnxModel(checked_session(blob), manifest.classes), signature,
                           classes, manifest.task)
    else:
        fmt = get_format(manifest.model_format)
        flavor = dict(manifest.flavor, classes=manifest.classes)
        native = fmt.load(blob, flavor, trust)
        if fmt.name == "onnx":
            runner = OrtRunner(native, signature, classes, manifest.task)
        else:
            runner = NativeRunner(native, signature, manifest.task)
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

