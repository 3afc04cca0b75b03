"""ONNX models, served by ONNX Runtime; also the runner for models converted at registration.

An ONNX file may keep its weights in external files named by relative paths. A path that
leaves the model's directory (``../x``, ``/etc/passwd``) is refused before ONNX Runtime opens
anything, so a model cannot read arbitrary files of the host. Sessions are built from the
bytes that were checked (ONNX Runtime accepts a serialized model), not by re-opening the file.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from mlharbor.core.errors import InvalidInputError, UnsafeArtifactError
from mlharbor.formats.base import ModelFormat, ModelInfo, NativeModel, TrustOptions
from mlharbor.formats.bundle import ModelBytes, safe_member

ORT_DTYPES: dict[str, Any] = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(int64)": np.int64,
    "tensor(int32)": np.int32, "tensor(string)": object, "tensor(bool)": np.bool_,
}
_PROBA_NAMES = ("probabilities", "output_probability", "probability", "proba")
# A classifier's label output: the model's own predict (converters compute it there).
_LABEL_NAMES = ("label", "output_label")
# What a missing value (None / NaN) of a string column is fed to ONNX Runtime as. ORT would
# turn None into "None" and NaN into "nan", which are real strings; converted imputers
# (see onnx_convert) treat exactly this marker as missing, as scikit-learn treats None/NaN.
MISSING_STRING = "\x1fmlharbor:missing\x1f"
# The key of an external-data entry naming a tensor's file (onnx.TensorProto.external_data).
EXTERNAL_DATA_KEY = b"location"


def _strings_with_marker(values: np.ndarray) -> np.ndarray:
    """An object column with None/NaN replaced by :data:`MISSING_STRING` (copied if needed)."""
    missing = [i for i, v in enumerate(values.tolist())
               if v is None or (isinstance(v, float) and v != v)]
    if not missing:
        return values
    out = values.astype(object, copy=True)
    out[missing] = MISSING_STRING
    return out


def external_data_locations(model: Any) -> list[str]:
    """Every external-data ``location`` named by a tensor anywhere in the model."""
    import onnx

    found: list[str] = []

    def tensor(t: Any) -> None:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            found.append({e.key: e.value for e in t.external_data}.get("location", ""))

    def graph(g: Any) -> None:
        for t in g.initializer:
            tensor(t)
        for sparse in g.sparse_initializer:
            tensor(sparse.values)
            tensor(sparse.indices)
        for node in g.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    tensor(attr.t)
                for t in attr.tensors:
                    tensor(t)
                if attr.HasField("g"):
                    graph(attr.g)
                for sub in attr.graphs:
                    graph(sub)

    graph(model.graph)
    for function in model.functions:
        for node in function.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    tensor(attr.t)
    return found


def read_checked(source: Path | ModelBytes) -> Any:
    """The ModelProto (no external weights loaded); refuses external data outside its folder.

    ``source`` is a file, or bytes already read (then parsed as they are, and external data is
    looked up next to where they came from).
    """
    import onnx

    path = source.path if isinstance(source, ModelBytes) else source
    try:
        if isinstance(source, ModelBytes):
            model = onnx.load_model_from_string(source.data)
        else:
            model = onnx.load_model(str(path), load_external_data=False)
    except Exception as exc:
        raise InvalidInputError(f"{path.name!r} is not a readable ONNX model: {exc}.") from exc
    for location in external_data_locations(model):
        try:
            full = safe_member(path.parent, location)
        except UnsafeArtifactError as exc:
            raise UnsafeArtifactError(
                f"Refusing ONNX model {path.name!r}: its external data location {location!r} "
                "points outside the model's folder.",
                hint="Save the model with external data next to it (relative names only), or "
                "with all weights inside the .onnx file.", location=location,
            ) from exc
        if not full.is_file() or full.is_symlink():
            raise UnsafeArtifactError(
                f"ONNX model {path.name!r} names external data {location!r}, which is missing "
                "or not a regular file.", location=location,
            )
    return model


def make_session(source: Path | ModelBytes) -> Any:
    """A CPU session tuned for low single-row latency: one thread, sequential execution.

    Given :class:`ModelBytes`, the session is built from those bytes (checked already), with
    external data, if any, resolved in the folder they came from.

    No per-session memory arena: the arrays a run returns are views on ONNX Runtime's output
    tensors (their base is a capsule holding the tensor), and a tensor allocated from the
    session's arena keeps that arena alive, whole, for as long as any answer of the session is
    referenced (a prediction record in a buffer, a slice in a response). A server that unloads
    models then kept about 1 MiB per unloaded session resident (measured, issue 15: 178
    unloads left 185 MiB in use with every model gone). Without the arena an output holds only
    its own bytes, and a session takes ~1 MiB less. Measured on one core, interleaved: one row,
    64 rows and 10,000 rows of a 100-tree forest and a linear model run as fast either way
    (glibc's thread cache serves the small output buffers).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.enable_cpu_mem_arena = False
    options.log_severity_level = 3
    model: str | bytes = str(source)
    if isinstance(source, ModelBytes):
        model = source.data
        options.add_session_config_entry(
            "session.model_external_initializers_file_folder_path", str(source.path.parent))
    return ort.InferenceSession(model, sess_options=options,
                                providers=["CPUExecutionProvider"])


def checked_session(blob: ModelBytes) -> Any:
    """:func:`make_session` on checked bytes: external data, if named, must stay in their
    folder (:func:`read_checked`).

    Every external tensor names its file under the key "location": bytes without that word
    name none, so the protobuf parser (the onnx package, ~75 modules, a tenth of a serving
    process's start-up) is imported only for bytes that might.
    """
    if EXTERNAL_DATA_KEY in blob.data:
        read_checked(blob)
    try:
        return make_session(blob)
    except Exception as exc:  # onnxruntime's own error classes, whatever the build
        raise InvalidInputError(
            f"{blob.path.name!r} is not a readable ONNX model: {exc}.") from exc


class OnnxModel(NativeModel):
    """An ONNX Runtime session with its input and output names resolved once."""

    def __init__(self, session: Any, classes: list[Any] | None = None) -> None:
        self.session = session
        self.inputs = [(i.name, ORT_DTYPES.get(i.type, np.float32)) for i in session.get_inputs()]
        outputs = session.get_outputs()
        names = [o.name for o in outputs]
        self.output_names = names
        self.proba_name = next((n for n in names if n in _PROBA_NAMES), None)
        self.label_name = next((n for n in names if n in _LABEL_NAMES), None)
        if self.proba_name is None and len(outputs) == 2 and self.label_name:
            self.proba_name = next(n for n in names if n != self.label_name)
        if self.label_name is None and self.proba_name is not None and len(outputs) == 2:
            # The other output of a classifier is its label when it holds integers or strings.
            other = next(o for o in outputs if o.name != self.proba_name)
            if other.type in ("tensor(int64)", "tensor(int32)", "tensor(string)"):
                self.label_name = other.name
        self.value_name = self.label_name or names[0]
        self.classes = None if classes is None else np.asarray(classes)
        self.input_kind = "array"

    def run(self, names: list[str], feeds: dict[str, np.ndarray]) -> list[Any]:
        return list(self.session.run(names, feeds))

    def feeds_from_matrix(self, x: np.ndarray) -> dict[str, np.ndarray]:
        name, dtype = self.inputs[0]
        return {name: x if x.dtype == dtype else x.astype(dtype)}

    def feeds_from_columns(self, cols: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = {}
        for name, dtype in self.inputs:
            if name not in cols:
                raise InvalidInputError(
                    f"The ONNX model takes an input {name!r} the signature does not name."
                )
            if dtype is object:
                feeds[name] = _strings_with_marker(np.asarray(cols[name])).reshape(-1, 1)
                continue
            # float64 -> float32 may overflow to inf, as scikit-learn's own cast would.
            with np.errstate(over="ignore"):
                feeds[name] = cols[name].astype(dtype, copy=False).reshape(-1, 1)
        return feeds

    def proba_from_outputs(self, value: Any) -> np.ndarray:
        """Probabilities as a 2-D float array (ZipMap lists of dicts are unpacked)."""
        if isinstance(value, list):
            keys = list(value[0].keys()) if value else []
            return np.array([[row[k] for k in keys] for row in value], dtype=np.float32)
        return np.asarray(value)

    def predict(self, data: Any) -> np.ndarray:
        (out,) = self.run([self.value_name], self.feeds_from_matrix(np.asarray(data)))
        return np.asarray(out)

    def predict_proba(self, data: Any) -> np.ndarray:
        if self.proba_name is None:
            return super().predict_proba(data)
        (out,) = self.run([self.proba_name], self.feeds_from_matrix(np.asarray(data)))
        return self.proba_from_outputs(out)


class OnnxFormat(ModelFormat):
    name = "onnx"
    summary = "ONNX models run by ONNX Runtime (external data confined to the bundle)"
    file_name = "model.onnx"

    def claims_object(self, obj: Any) -> bool:
        return type(obj).__name__ == "ModelProto" and type(obj).__module__.startswith("onnx")

    def claims_file(self, path: Path, head: bytes) -> bool:
        if path.suffix.lower() != ".onnx" and head[:1] != b"\x08":
            return False
        try:
            import onnx

            model = onnx.load_model(str(path), load_external_data=False)
        except Exception:
            return path.suffix.lower() == ".onnx"  # let read_file report why it is unreadable
        return len(model.graph.node) > 0

    def read_file(self, blob: ModelBytes, trust: TrustOptions) -> Any:
        return read_checked(blob)

    def adopt_file(self, source: Path, model_dir: Path) -> str:
        model = read_checked(source)
        for location in external_data_locations(model):
            target = safe_member(model_dir, location)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(safe_member(source.parent, location), target)
        shutil.copyfile(source, model_dir / self.file_name)
        return self.file_name

    def save(self, obj: Any, model_dir: Path) -> str:
        import onnx

        onnx.save_model(obj, str(model_dir / self.file_name))
        return self.file_name

    def describe(self, obj: Any) -> ModelInfo:
        import onnxruntime

        outputs = [o.name for o in obj.graph.output]
        classifier = any(n in _PROBA_NAMES for n in outputs) or (
            "label" in outputs and len(outputs) == 2)
        inputs = [i.name for i in obj.graph.input]
        initializers = {t.name for t in obj.graph.initializer}
        inputs = [n for n in inputs if n not in initializers]
        return ModelInfo(
            task="classification" if classifier else "regression",
            classes=_class_labels(obj) if classifier else None,
            feature_names=inputs if len(inputs) > 1 else None,
            input_kind="frame" if len(inputs) > 1 else "array",
            flavor={"opsets": {o.domain or "ai.onnx": o.version for o in obj.opset_import}},
            framework_versions={"onnxruntime": onnxruntime.__version__},
        )

    def load(self, blob: ModelBytes, flavor: dict[str, Any], trust: TrustOptions) -> NativeModel:
        return OnnxModel(checked_session(blob), flavor.get("classes"))


def _class_labels(model: Any) -> list[Any] | None:
    for node in model.graph.node:
        if node.op_type in ("TreeEnsembleClassifier", "LinearClassifier", "SVMClassifier",
                            "ZipMap"):
            for attr in node.attribute:
                if attr.name in ("classlabels_int64s", "classlabels_ints") and attr.ints:
                    return list(attr.ints)
                if attr.name == "classlabels_strings" and attr.strings:
                    return [s.decode() for s in attr.strings]
    return None
