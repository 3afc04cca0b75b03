"""Open Inference Protocol v2 (KServe v2 / Triton HTTP), with the binary tensor extension.

Inputs are either one tensor per signature column (``name`` = column, shape ``[n]`` or
``[n, 1]``) or one 2-D tensor ``[n, columns]`` in signature order. Outputs: ``predictions``
(``[n]``) and, for classifiers, ``probabilities`` (``[n, classes]``). Binary tensors: the JSON
header's length is in ``Inference-Header-Content-Length`` and each binary input gives its byte
size in ``parameters.binary_data_size``; outputs are returned binary when the request asks
(``outputs[].parameters.binary_data`` or ``parameters.binary_data_output``), which is what
``tritonclient.http`` does by default. Errors: ``{"error": "message"}``.
"""

from __future__ import annotations

import math
import struct
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from mlharbor import __version__
from mlharbor.core.errors import InvalidInputError, MlharborError, NotFoundError
from mlharbor.serving.http import JSON, Request, Response, Route, json_response
from mlharbor.serving.model import NumericRows
from mlharbor.serving.protocols.payload import answer_headers, parse_json

if TYPE_CHECKING:
    from mlharbor.serving.core import Answer, DataPlane
    from mlharbor.serving.model import ServedModel

DTYPES: dict[str, Any] = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
    "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
    "INT64": np.int64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
    "BYTES": object,
}
SIGNATURE_TYPES = {"float64": "FP64", "float32": "FP32", "int64": "INT64", "int32": "INT32",
                   "bool": "BOOL", "string": "BYTES"}
HEADER_LENGTH = b"inference-header-content-length"
MAX_RANK = 8  # dimensions of one input tensor
MAX_ELEMENTS = 2**32  # elements one tensor's shape may describe (and its data must hold)
# JSON, or a JSON header followed by binary tensors (the binary tensor extension)
ACCEPTS = (JSON, b"application/octet-stream")


def render_error(exc: MlharborError, status: int) -> Response:
    return json_response({"error": str(exc)}, status)


def datatype_of(values: np.ndarray) -> str:
    kind = values.dtype.kind
    if kind in "OUS":
        return "BYTES"
    for name, dtype in DTYPES.items():
        if dtype is not object and values.dtype == np.dtype(dtype):
            return name
    return "FP64"


def _decode_tensor(spec: dict[str, Any], blob: bytes | None, index: int) -> np.ndarray:
    where = f"inputs[{index}]"
    name, datatype, shape = spec.get("name"), spec.get("datatype"), spec.get("shape")
    if not isinstance(name, str):
        raise InvalidInputError(f"{where}.name must be a string.", field=f"{where}.name")
    if not isinstance(datatype, str) or datatype not in DTYPES:
        raise InvalidInputError(
            f"Input {name!r} has datatype {str(datatype)[:100]!r}; expected one of "
            f"{', '.join(DTYPES)}.", field=f"{where}.datatype", expected=list(DTYPES),
            received=str(datatype)[:100])
    count = _element_count(name, shape, where)
    if blob is not None:
        if datatype == "BYTES":
            values = _bytes_elements(blob, name)
            arr = np.empty(len(values), dtype=object)
            arr[:] = values
        else:
            dtype = np.dtype(DTYPES[datatype])
            if len(blob) != count * dtype.itemsize:
                raise InvalidInputError(
                    f"Input {name!r} has {len(blob)} bytes; shape {shape} of {datatype} "
                    f"needs {count * dtype.itemsize}.", field=f"{where}.parameters",
                    expected=count * dtype.itemsize, received=len(blob))
            arr = np.frombuffer(blob, dtype=dtype)
    else:
        data = spec.get("data")
        if data is None:
            raise InvalidInputError(f"Input {name!r} has no 'data' and no binary data.",
                                    field=f"{where}.data")
        try:
            with np.errstate(over="raise", invalid="raise"):  # 1e300 is no FP16, NaN no INT
                arr = np.array(data, dtype=DTYPES[datatype]).reshape(-1)
        except (TypeError, ValueError, OverflowError, FloatingPointError) as exc:
            raise InvalidInputError(f"Input {name!r}: its data is not {datatype}: {exc}.",
                                    field=f"{where}.data", expected=datatype) from exc
    if arr.size != count:
        raise InvalidInputError(
            f"Input {name!r} holds {arr.size} values; its shape {shape} needs {count}.",
            field=f"{where}.shape", expected=count, received=int(arr.size))
    if datatype == "BYTES":
        arr = np.array([v.decode("utf-8", "replace") if isinstance(v, bytes) else v
                        for v in arr.tolist()], dtype=object)
    return arr.reshape(shape) if shape else arr


def _element_count(name: str, shape: Any, where: str) -> int:
    """The element count of a tensor shape, checked before anything is allocated: at most
    ``MAX_RANK`` whole numbers >= 0, describing at most ``MAX_ELEMENTS`` elements (zero
    dimensions counted as one, so that an empty tensor cannot carry absurd dimensions
    either). The count is computed on Python integers (numpy's product silently wraps past
    2**63), and it must then equal the number of values sent, so no shape makes the server
    allocate more than it received."""
    if (not isinstance(shape, list) or len(shape) > MAX_RANK
            or not all(type(d) is int and d >= 0 for d in shape)):
        raise InvalidInputError(
            f"Input {name!r} needs a shape of at most {MAX_RANK} whole numbers >= 0; "
            f"received {str(shape)[:200]}.", field=f"{where}.shape",
            expected="[n, ...]", received=str(shape)[:200])
    span = math.prod(d or 1 for d in shape)
    if span > MAX_ELEMENTS:
        raise InvalidInputError(
            f"Input {name!r} has shape {str(shape)[:200]}: {span} elements, more than the "
            f"{MAX_ELEMENTS} a tensor may have.", hint="Send the shape of the data you send.",
            field=f"{where}.shape", expected=f"<= {MAX_ELEMENTS} elements",
            received=str(shape)[:200])
    return math.prod(shape)


def _bytes_elements(blob: bytes, name: str) -> list[bytes]:
    out, pos = [], 0
    while pos < len(blob):
        if pos + 4 > len(blob):
            raise InvalidInputError(f"Binary BYTES input {name!r} is truncated.")
        (size,) = struct.unpack_from("<I", blob, pos)
        pos += 4
        out.append(blob[pos:pos + size])
        pos += size
    return out


def parse_inputs(request: Request, model: ServedModel) -> tuple[dict[str, Any], Any]:
    """The request JSON and the model input (a 2-D array or a dict of column arrays)."""
    body = request.body
    header_length = request.headers.get(HEADER_LENGTH)
    binary = b""
    if header_length is not None:
        try:
            size = int(header_length)
        except ValueError as exc:
            raise InvalidInputError("Inference-Header-Content-Length is not a number.",
                                    field="Inference-Header-Content-Length") from exc
        if not 0 < size <= len(body):
            raise InvalidInputError(
                f"Inference-Header-Content-Length is {size}; the body has {len(body)} bytes.",
                field="Inference-Header-Content-Length", received=size)
        body, binary = body[:size], body[size:]
    doc = parse_json(body)
    inputs = doc.get("inputs") if isinstance(doc, dict) else None
    if not isinstance(inputs, list) or not inputs or not all(isinstance(i, dict)
                                                              for i in inputs):
        raise InvalidInputError("The request needs 'inputs': a list of tensors.",
                                field="inputs", expected="[{name, shape, datatype, data}]")
    tensors: dict[str, np.ndarray] = {}
    offset = 0
    for index, spec in enumerate(inputs):
        params = spec.get("parameters") or {}
        blob = None
        if isinstance(params, dict) and "binary_data_size" in params:
            size = params["binary_data_size"]
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise InvalidInputError(
                    f"inputs[{index}].parameters.binary_data_size is {size!r}; only "
                    f"{len(binary) - offset} binary bytes remain.",
                    field=f"inputs[{index}].parameters.binary_data_size", received=size)
            blob = binary[offset:offset + size]
            offset += size
        arr = _decode_tensor(spec, blob, index)
        tensors[spec["name"]] = arr
    names = model.signature.names
    if len(tensors) == 1:
        (name, arr), = tensors.items()
        if name not in names or len(names) == 1:
            if arr.ndim == 1:
                arr = arr.reshape(1, -1) if len(names) > 1 else arr.reshape(-1, 1)
            if arr.ndim != 2 or arr.shape[1] != len(names):
                raise InvalidInputError(
                    f"Input {name!r} has shape {list(arr.shape)}; expected [n, {len(names)}] "
                    f"(columns {', '.join(names)}) or one input per column.",
                    field="inputs[0].shape", expected=[-1, len(names)],
                    received=list(arr.shape))
            numeric = model.signature.all_numeric
            if numeric and arr.dtype.kind in "fiu":
                # The float64 matrix the prediction log stores, made once here.
                return doc, NumericRows(np.ascontiguousarray(arr, dtype=np.float64), names)
            if numeric and arr.dtype != object:
                return doc, arr
            return doc, {n: arr[:, i] for i, n in enumerate(names)}
    unknown = [n for n in tensors if n not in names]
    if unknown:
        raise InvalidInputError(
            f"Input(s) {', '.join(map(repr, unknown))} are not columns of the model; expected "
            f"{', '.join(names)}.", field="inputs", expected=list(names), received=unknown)
    return doc, {n: a.reshape(-1) for n, a in tensors.items()}


def _binary_bytes(values: np.ndarray) -> bytes:
    if values.dtype.kind in "OUS":
        parts = []
        for v in values.reshape(-1).tolist():
            raw = v if isinstance(v, bytes) else str(v).encode()
            parts.append(struct.pack("<I", len(raw)) + raw)
        return b"".join(parts)
    return np.ascontiguousarray(values).tobytes()


def encode_outputs(
    doc: dict[str, Any], answer: Answer, model_name: str, request_id: str
) -> Response:
    out = answer.outputs
    available: dict[str, np.ndarray] = {"predictions": out.predictions}
    if out.probabilities is not None:
        available["probabilities"] = out.probabilities
    raw_params = doc.get("parameters")
    params: dict[str, Any] = raw_params if isinstance(raw_params, dict) else {}
    default_binary = bool(params.get("binary_data_output", False))
    wanted = doc.get("outputs")
    selected: list[tuple[str, bool]] = []
    if isinstance(wanted, list) and wanted:
        for i, item in enumerate(wanted):
            name = item.get("name") if isinstance(item, dict) else None
            if not isinstance(name, str) or name not in available:
                raise InvalidInputError(
                    f"outputs[{i}] asks for {str(name)[:100]!r}; this model gives "
                    f"{', '.join(available)}.", field=f"outputs[{i}].name",
                    expected=list(available), received=str(name)[:100])
            p = item.get("parameters")
            binary = p.get("binary_data", default_binary) if isinstance(p, dict) \
                else default_binary
            selected.append((name, bool(binary)))
    else:
        selected = [(name, default_binary) for name in available]
    tensors, blobs = [], []
    for name, binary in selected:
        values = available[name]
        tensor: dict[str, Any] = {"name": name, "datatype": datatype_of(values),
                                  "shape": list(values.shape)}
        if binary:
            blob = _binary_bytes(values)
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            tensor["data"] = values.reshape(-1).tolist()
        tensors.append(tensor)
    body = {"model_name": model_name, "model_version": str(answer.version),
            "id": doc.get("id", ""), "parameters": {"request_id": request_id}, "outputs": tensors}
    headers = answer_headers(answer)
    header = orjson.dumps(body)
    if not blobs:
        return Response(header, headers=headers)
    headers.append((HEADER_LENGTH, str(len(header)).encode()))
    return Response(header + b"".join(blobs), content_type=b"application/octet-stream",
                    headers=headers)


def routes(plane: DataPlane) -> list[Route]:
    def metadata(name: str, version: int | None) -> dict[str, Any]:
        plan = plane.plan(name)
        target = plan.targets[0] if version is None else plan.find_version(
            plan.targets[0].model.name, version)
        if target is None:
            raise NotFoundError(f"Model {name!r} has no served version {version}.")
        model = target.model
        outputs = [{"name": "predictions", "datatype": "BYTES" if model.classes and any(
            isinstance(c, str) for c in model.classes) else "FP64", "shape": [-1]}]
        if model.classes is not None:
            outputs[0]["datatype"] = "BYTES" if any(isinstance(c, str) for c in model.classes) \
                else "INT64"
            outputs.append({"name": "probabilities", "datatype": "FP32",
                            "shape": [-1, len(model.classes)]})
        return {
            "name": name, "versions": sorted({str(t.model.version) for t in plan.targets}),
            "platform": f"mlharbor_{model.runtime}",
            "inputs": [{"name": c.name, "datatype": SIGNATURE_TYPES[c.dtype], "shape": [-1]}
                       for c in model.signature.inputs],
            "outputs": outputs,
        }

    async def server_metadata(request: Request) -> Response:
        return json_response({"name": "mlharbor", "version": __version__,
                              "extensions": ["binary_tensor_data"]})

    async def live(request: Request) -> Response:
        return json_response({"live": True})

    async def ready(request: Request) -> Response:
        return json_response({"ready": plane.ready}, 200 if plane.ready else 503)

    async def model_metadata(request: Request) -> Response:
        request.endpoint = request.params["model"]
        return json_response(metadata(request.params["model"], _version(request)))

    async def model_ready(request: Request) -> Response:
        request.endpoint = request.params["model"]
        metadata(request.params["model"], _version(request))
        return json_response({"name": request.params["model"], "ready": True})

    async def infer(request: Request) -> Response:
        name = request.params["model"]
        request.endpoint = name
        version = _version(request)
        plan = plane.plan(name)
        model = plan.targets[0].model
        doc, data = parse_inputs(request, model)
        answer = await plane.predict(name, data, request_id=request.request_id,
                                     headers=request.headers, version=version)
        return encode_outputs(doc, answer, name, request.request_id)

    p = "/v2/models/{model}"
    v = "/v2/models/{model}/versions/{version}"
    return [
        Route("GET", "/v2", server_metadata, "v2", render_error),
        Route("GET", "/v2/health/live", live, "health", render_error),
        Route("GET", "/v2/health/ready", ready, "health", render_error),
        Route("GET", p, model_metadata, "v2", render_error),
        Route("GET", v, model_metadata, "v2", render_error),
        Route("GET", p + "/ready", model_ready, "v2", render_error),
        Route("GET", v + "/ready", model_ready, "v2", render_error),
        Route("POST", p + "/infer", infer, "v2", render_error, predict=True, accepts=ACCEPTS),
        Route("POST", v + "/infer", infer, "v2", render_error, predict=True, accepts=ACCEPTS),
    ]


def _version(request: Request) -> int | None:
    text = request.params.get("version")
    if text is None:
        return None
    if not text.isdigit() or not text.isascii() or int(text) < 1:
        raise InvalidInputError(f"Version {text!r} is not a positive whole number.",
                                field="version", expected="positive integer", received=text)
    return int(text)
