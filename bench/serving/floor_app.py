"""The floor: the least a Python server can do to answer the same model over HTTP.

Bare ASGI on uvicorn (uvloop + httptools), orjson, records in a fixed column order, one
ONNX Runtime session run inline. No validation, routing, auth, batching, metrics or logs:
whatever our server costs above this is the platform's own work.

    ONNX=model.onnx taskset -c 0 python floor_app.py PORT
"""

from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np
import onnxruntime as ort
import orjson

COLUMNS = [f"f{i}" for i in range(20)]


def make_app(path: str) -> Any:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    outputs = [o.name for o in session.get_outputs()]
    proba = next(n for n in outputs if "prob" in n)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        records = orjson.loads(body)
        if isinstance(records, dict):
            records = [records]
        x = np.array([[r[c] for c in COLUMNS] for r in records], dtype=np.float32)
        p = session.run([proba], {input_name: x})[0]
        out = orjson.dumps({"predictions": p.argmax(axis=1), "probabilities": p},
                           option=orjson.OPT_SERIALIZE_NUMPY)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": out})

    return app


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(make_app(os.environ["ONNX"]), host="127.0.0.1", port=int(sys.argv[1]),
                loop="uvloop", http="httptools", log_level="warning", access_log=False)
