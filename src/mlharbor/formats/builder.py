"""Build a bundle from a model object, file or directory: save, describe, convert, check, seal.

The steps, in order: detect the format (by content for files), save the native model (a
source file is copied into the bundle *first*), refuse what is unsafe (pickles without a
matching pin, Python code without ``trust_code``, skops types outside policy, ONNX external
data outside the bundle), infer the signature, load the saved model back through the same code
serving uses, try ONNX conversion and its parity check, and write the manifest with every
file's digest.

Every check runs on the bundle's copy, on bytes read once: they are hashed, compared with the
caller's pin, and deserialized from memory. So the trust record (the caller's pin, or the
digest of the trusted code) always describes the exact bytes the bundle holds, even when the
source file changes while it is being registered.
"""

from __future__ import annotations

import json
import platform
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from mlharbor.core.errors import (
    IntegrityError,
    InvalidInputError,
    MlharborError,
    SchemaError,
    UnsafeArtifactError,
)
from mlharbor.core.signature import ColumnSpec, OutputSpec, Signature, infer_signature
from mlharbor.formats.base import ModelFormat, ModelInfo, TrustOptions
from mlharbor.formats.bundle import (
    INPUT_EXAMPLE_NAME,
    MANIFEST_NAME,
    BundleManifest,
    ModelBytes,
    safe_member,
    verify_bundle,
    write_manifest,
)
from mlharbor.formats.catalog import detect_file, detect_object
from mlharbor.formats.predictor import RUNTIMES, NativeRunner, OrtRunner

_EXAMPLE_ROWS = 5


@dataclass(frozen=True, slots=True)
class BuildResult:
    """What building found and decided: format, serving runtime, parity, the manifest."""

    manifest: BundleManifest
    format: str
    runtime: str
    parity: dict[str, Any]


def build_bundle(
    source: Any,
    dest: Path,
    *,
    sample_input: Any = None,
    training_data: Any = None,
    signature: Signature | None = None,
    trust: TrustOptions | None = None,
    runtime: str = "auto",
    tolerance: float = 1e-5,
    created_by: str = "local",
    extra_columns: str | None = None,
    unseen_categories: str | None = None,
) -> BuildResult:
    """Write a verified, self-describing bundle for ``source`` into the empty folder ``dest``."""
    if runtime not in RUNTIMES:
        raise InvalidInputError(f"Unknown runtime {runtime!r}; known: {', '.join(RUNTIMES)}.")
    trust = trust or TrustOptions()
    model_dir = dest / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    if isinstance(source, str | Path) and (Path(source) / MANIFEST_NAME).is_file():
        source, signature, sample_input = _from_bundle(Path(source), signature, sample_input)
    fmt, obj, blob, trust_record = _store_model(source, model_dir, trust, created_by)
    file_name = blob.name
    info = fmt.describe(obj)
    generated = None
    guessed = signature is None and sample_input is None and training_data is None
    if guessed:  # nothing tells the inputs but the model itself
        signature, generated = _fitted_signature(fmt, obj)
    sig = _signature(signature, info, obj, sample_input, training_data)
    sig = sig.with_policy(extra_columns=extra_columns, unseen_categories=unseen_categories)
    training_data, sample_input = _trim(training_data, sig), _trim(sample_input, sig)
    if generated is not None:  # rows made from what the model learned: example and parity
        training_data = generated
    example = _example_rows(sig, training_data if sample_input is None else sample_input)
    (dest / INPUT_EXAMPLE_NAME).write_text(json.dumps(example, default=_json_default),
                                           encoding="utf-8")
    flavor = dict(info.flavor, input_kind=sig.input_kind if info.input_kind is None
                  else info.input_kind)
    native_model = fmt.load(blob, dict(flavor, classes=info.classes), trust)  # same bytes
    native = (OrtRunner(native_model, sig, None, info.task) if fmt.name == "onnx"
              else NativeRunner(native_model, sig, info.task))
    try:
        native.predict(example)  # the saved model must answer its own example
    except MlharborError:
        raise
    except Exception as exc:
        if guessed:
            from mlharbor.formats.fitted_inputs import SAMPLE_HINT

            raise InvalidInputError(
                f"The {fmt.name} model's inputs cannot be worked out from the model alone: it "
                f"does not accept rows of the inputs read from it ({_columns_text(sig)}).",
                hint=SAMPLE_HINT,
            ) from exc
        raise InvalidInputError(
            f"The {fmt.name} model could not predict its own input example: "
            f"{_brief_error(exc)}.",
            hint="Give sample_input (--sample CSV) with a few real rows, or a signature.",
        ) from exc
    manifest = BundleManifest(
        model_format=fmt.name, model_path=f"model/{file_name}", task=info.task,
        signature=sig.to_dict(), flavor=flavor, classes=info.classes,
        input_example=INPUT_EXAMPLE_NAME, trust=trust_record, created_by=created_by,
        created_at=datetime.now(UTC).isoformat(), framework_versions=_versions(info),
    )
    parity = _onnx_step(fmt, obj, native, sig, example, training_data, dest, runtime,
                        tolerance, manifest)
    write_manifest(dest, manifest)
    _check_recorded(manifest, blob)
    return BuildResult(manifest, fmt.name, manifest.default_runtime, parity)


def _fitted_signature(fmt: ModelFormat, obj: Any) -> tuple[Signature | None, Any]:
    """The inputs a fitted scikit-learn pipeline reveals about itself, and rows made from them.

    See :func:`mlharbor.formats.fitted_inputs.fitted_columns`; ``(None, None)`` when the model does
    not name its inputs (fitted on an array) or is not scikit-learn.
    """
    if fmt.name != "sklearn":
        return None, None
    from mlharbor.formats.fitted_inputs import fitted_columns, generated_rows

    columns = fitted_columns(obj)
    if not columns:
        return None, None
    sig = Signature(tuple(c.spec() for c in columns), "frame")
    return sig, generated_rows(columns)


def _columns_text(sig: Signature, limit: int = 6) -> str:
    """``city as string, age as float64, ...``: what was assumed, for an error message."""
    shown = ", ".join(f"{c.name} as {c.dtype}" for c in sig.inputs[:limit])
    return shown + (f" and {len(sig.inputs) - limit} more" if len(sig.inputs) > limit else "")


def _brief_error(exc: Exception) -> str:
    """An exception as one short clause: its type and first line, cut to 200 characters."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:200] if text else type(exc).__name__


def _check_recorded(manifest: BundleManifest, blob: ModelBytes) -> None:
    """The listed model file must be the bytes that were checked, trusted and loaded."""
    listed = manifest.file(manifest.model_path).sha256
    pinned = manifest.trust.get("sha256")
    if listed != blob.sha256 or (pinned is not None and pinned != listed):
        raise IntegrityError(
            f"The bundle's model file changed while the bundle was built: it was checked as "
            f"sha256 {blob.sha256}, the manifest lists {listed}.",
            hint="Nothing else may write into the bundle folder while it is built; try again.",
        )


def _store_model(source: Any, model_dir: Path, trust: TrustOptions,
                 actor: str) -> tuple[ModelFormat, Any, ModelBytes, dict[str, Any]]:
    """Put the model into ``model_dir``; return its format, object, checked bytes, trust record.

    A source file is copied into the bundle before anything is checked. The copy's bytes are
    then read once, hashed, checked (pin, code flag, skops policy) and deserialized from memory,
    so nothing can change between the check and what the bundle records.
    """
    now = datetime.now(UTC).isoformat()
    if not isinstance(source, str | Path):
        fmt = detect_object(source)  # only safe formats save objects (never pickle/python)
        blob = ModelBytes.read(model_dir / fmt.save(source, model_dir))
        return fmt, source, blob, {"mode": "safe-format"}
    path = Path(source)
    if not path.exists():
        raise InvalidInputError(
            f"Model source {str(path)!r} is neither a file nor a folder.",
            hint="Pass a model file, a folder holding one, or an in-memory model.",
        )
    if path.is_dir():
        path = _pick_file(path)
    fmt = detect_file(path)
    _refuse_untrusted_code(fmt, path, trust)
    copy = model_dir / fmt.adopt_file(path, model_dir)  # copy first: only the copy is trusted
    try:
        blob, obj = _read_copy(fmt, path, copy, trust)
    except BaseException:
        shutil.rmtree(model_dir, ignore_errors=True)  # leave nothing refused behind
        raise
    if fmt.name == "pickle":
        from mlharbor.formats.pickle import check_pin

        pin = check_pin(blob, trust)  # the user's pin, equal to the copy's sha256
        record = {"mode": "pickle-pinned", "sha256": pin,
                  "trusted_by": actor, "trusted_at": now,
                  "note": "loaded as a pickle because the caller pinned this sha256"}
    elif fmt.name == "python":
        record = {"mode": "code", "sha256": blob.sha256,
                  "trusted_by": actor, "trusted_at": now}
    else:
        record = {"mode": "safe-format"}
    return fmt, obj, blob, record


def _read_copy(fmt: ModelFormat, source: Path, copy: Path,
               trust: TrustOptions) -> tuple[ModelBytes, Any]:
    """The copy's bytes (read once) and the object deserialized from exactly those bytes."""
    copied = detect_file(copy)
    if copied.name != fmt.name:
        raise IntegrityError(
            f"{source.name!r} changed while it was being registered: it looked like a "
            f"{fmt.name} model, but the copied file is a {copied.name} model.",
            hint="Register a file nothing else is writing to.",
        )
    blob = ModelBytes.read(copy)  # hashed, checked and loaded from these bytes
    return blob, fmt.read_file(blob, trust)  # pickles without a matching pin are refused here


def _refuse_untrusted_code(fmt: ModelFormat, path: Path, trust: TrustOptions) -> None:
    if fmt.name == "python" and not trust.code:
        raise UnsafeArtifactError(
            f"Refusing {path.name!r}: it is Python source, and loading it runs that code.",
            hint="Pass trust_code=True (--trust-code) if you wrote the code and trust it.")


def _from_bundle(folder: Path, signature: Signature | None,
                 sample: Any) -> tuple[Path, Signature | None, Any]:
    """Rebuild from an existing bundle: its model file, signature and example, verified first.

    Its trust record is not carried over: a folder's own manifest proves nothing, so pickles and
    code need the caller's pin or flag again.
    """
    manifest = verify_bundle(folder)
    if signature is None:
        signature = Signature.from_dict(manifest.signature)
    if sample is None and manifest.input_example is not None:
        sample = json.loads(safe_member(folder, manifest.input_example).read_text("utf-8"))
    return safe_member(folder, manifest.model_path), signature, sample


def _pick_file(folder: Path) -> Path:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    for pattern in ("*.onnx", "*.py"):
        found = [p for p in files if p.match(pattern)]
        if len(found) == 1:
            return found[0]
    if len(files) == 1:
        return files[0]
    raise InvalidInputError(
        f"Cannot tell which file of {str(folder)!r} is the model: it holds "
        f"{', '.join(p.name for p in files[:10]) or 'nothing'}.",
        hint="Point at the model file itself.",
    )


def _signature(given: Signature | None, info: ModelInfo, obj: Any, sample: Any,
               training: Any) -> Signature:
    outputs = OutputSpec(info.task, None if info.classes is None else tuple(info.classes))
    if given is not None:
        return given.with_outputs(outputs)
    data = training if training is not None else sample
    if data is not None:
        names = info.feature_names if isinstance(data, np.ndarray) else None
        if names is not None and len(names) != np.asarray(data).reshape(len(data), -1).shape[1]:
            names = None
        sig = infer_signature(data, names=names, categories=info.categories, outputs=outputs)
        if info.feature_names and not isinstance(data, np.ndarray):
            sig = _only_features(sig, info.feature_names)
        if training is not None and sample is None:
            sig = _categories_from(sig, training)
    elif info.feature_names or info.n_features:
        names = info.feature_names or [f"x{i}" for i in range(int(info.n_features or 0))]
        sig = Signature(tuple(ColumnSpec(n, "float64") for n in names), "array", outputs)
    elif type(obj).__name__ == "ModelProto":
        sig = _onnx_signature(obj, outputs)
    else:
        raise InvalidInputError(
            "Cannot infer the model's inputs: give sample_input (a few rows) or a signature.",
            hint="For example sample_input=X_train[:5].",
        )
    kind = info.input_kind or sig.input_kind
    return Signature(sig.inputs, kind, outputs)


def _only_features(sig: Signature, features: list[str]) -> Signature:
    """The model's own feature columns, in its order (data may also hold a target or ids)."""
    specs = {c.name: c for c in sig.inputs}
    missing = [f for f in features if f not in specs]
    if missing:
        raise SchemaError(
            f"The data given (sample or training rows) lacks the model's feature column(s) "
            f"{', '.join(map(repr, missing))}.",
            hint="Give rows with every column the model was fitted on.",
            column=missing[0], expected=features, received=list(specs),
        )
    return Signature(tuple(specs[f] for f in features), sig.input_kind, sig.outputs)


def _categories_from(sig: Signature, training: Any) -> Signature:
    """Known categories of string columns taken from the training data, when not known yet."""
    cols = sig.with_policy(extra_columns="ignore").validator().columns(training)
    inputs = tuple(
        ColumnSpec(c.name, c.dtype, c.nullable,
                   tuple(sorted({v for v in cols[c.name].tolist() if isinstance(v, str)})))
        if c.dtype == "string" and c.categories is None else c for c in sig.inputs)
    return Signature(inputs, sig.input_kind, sig.outputs)


def _trim(data: Any, sig: Signature) -> Any:
    """Sample or training rows cut to the signature's columns (dropping a target, ids ...)."""
    names = list(sig.names)
    if hasattr(data, "columns") and set(names) <= {str(c) for c in data.columns}:
        return data[names]
    if isinstance(data, list) and data and isinstance(data[0], dict):
        return [{n: row.get(n) for n in names} for row in data]
    return data


def _onnx_signature(model: Any, outputs: OutputSpec) -> Signature:
    from onnx import TensorProto

    kinds = {TensorProto.FLOAT: "float32", TensorProto.DOUBLE: "float64",
             TensorProto.INT64: "int64", TensorProto.INT32: "int32",
             TensorProto.STRING: "string", TensorProto.BOOL: "bool"}
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) == 1:
        tensor = inputs[0].type.tensor_type
        dims = [d.dim_value for d in tensor.shape.dim]
        width = dims[-1] if len(dims) == 2 and dims[-1] > 0 else 1
        dtype = kinds.get(tensor.elem_type, "float32")
        cols = tuple(ColumnSpec(f"x{i}", dtype) for i in range(width))
        return Signature(cols, "array", outputs)
    cols = tuple(ColumnSpec(i.name, kinds.get(i.type.tensor_type.elem_type, "float32"))
                 for i in inputs)
    return Signature(cols, "frame", outputs)


def _example_rows(sig: Signature, data: Any) -> list[dict[str, Any]]:
    if data is not None:
        cols = sig.validator().columns(_head(data))
        count = len(next(iter(cols.values())))
        return [{n: _py(cols[n][i]) for n in sig.names} for i in range(count)]
    row: dict[str, Any] = {}
    for col in sig.inputs:
        if col.dtype == "string":
            row[col.name] = col.categories[0] if col.categories else ""
        else:
            row[col.name] = False if col.dtype == "bool" else 0
    return [row]


def _head(data: Any) -> Any:
    if hasattr(data, "iloc"):
        return data.iloc[:_EXAMPLE_ROWS]
    if isinstance(data, np.ndarray | list):
        return data[:_EXAMPLE_ROWS]
    return data


def _py(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value != value:
        return None
    return value


def _json_default(value: Any) -> Any:
    return _py(value) if isinstance(value, np.generic) else str(value)


def _onnx_step(fmt: ModelFormat, obj: Any, native: Any, sig: Signature,
               example: list[dict[str, Any]], training: Any, dest: Path, runtime: str,
               tolerance: float, manifest: BundleManifest) -> dict[str, Any]:
    """Convert, check parity, and set the manifest's runtimes; returns the parity record."""
    from mlharbor.formats import onnx_convert

    if fmt.name == "onnx":
        manifest.runtimes, manifest.default_runtime = ["onnx"], "onnx"
        manifest.onnx = {"status": "native", "reason": "the model is ONNX already"}
        return manifest.onnx
    if runtime == "native":
        manifest.onnx = {"status": "skipped", "reason": "runtime='native' was asked for"}
        return manifest.onnx
    sample = native.inputs(training if training is not None else example)
    try:
        proto = onnx_convert.convert(fmt.name, obj, sig, sample)
    except NotImplementedError as exc:
        manifest.onnx = {"status": "not_applicable", "reason": f"not converted: {exc}"}
        return _require_onnx(runtime, manifest)
    except Exception as exc:  # converters raise many types; the reason is what matters
        manifest.onnx = {"status": "unavailable",
                         "reason": f"conversion failed: {type(exc).__name__}: {exc}"[:500]}
        return _require_onnx(runtime, manifest)
    from mlharbor.formats.onnx import OnnxModel, make_session

    path = dest / "onnx" / "model.onnx"
    path.parent.mkdir(exist_ok=True)
    data = proto.SerializeToString()
    path.write_bytes(data)
    try:  # the parity check runs the very bytes written into the bundle
        session = make_session(ModelBytes.of(path, data))
        runner = OrtRunner(OnnxModel(session, manifest.classes), sig,
                           None if manifest.classes is None else np.asarray(manifest.classes),
                           manifest.task)
        rows = onnx_convert.parity_rows(sig, example, training)
        parity = onnx_convert.check_parity(native, runner, rows, manifest.task, tolerance)
    except Exception as exc:  # a parity problem must not lose the registration
        parity = {"status": "failed",
                  "reason": f"parity check could not run: {type(exc).__name__}: {exc}"[:500]}
    manifest.onnx = parity
    manifest.onnx_path = "onnx/model.onnx"
    if parity["status"] == "passed":
        manifest.runtimes = ["native", "onnx"]
        manifest.default_runtime = "onnx"
        import onnxruntime

        manifest.framework_versions["onnxruntime"] = onnxruntime.__version__
        return parity
    return _require_onnx(runtime, manifest)


def _require_onnx(runtime: str, manifest: BundleManifest) -> dict[str, Any]:
    if runtime == "onnx":
        raise InvalidInputError(
            f"runtime='onnx' was asked for, but ONNX cannot serve this model: "
            f"{manifest.onnx['reason']}.", hint="Register with runtime='auto' or 'native'.",
        )
    return manifest.onnx


def _versions(info: ModelInfo) -> dict[str, str]:
    from mlharbor import __version__

    return {"python": platform.python_version(), "numpy": np.__version__,
            "mlharbor": __version__, **info.framework_versions}
