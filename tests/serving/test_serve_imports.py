"""What a serving process imports: only what its served formats need.

``mlharbor serve`` on an ONNX-served model runs under ``python -X importtime``, which writes
every module the process imports (at start-up and later, on the first request too) to stderr.
After a correct prediction through every protocol's numeric fast path, none of the heavy
libraries of training, data frames, GraphQL or migrations may have been imported: they are what
made start-up take seconds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any

import httpx
import numpy as np
import pytest

from tests.serving.conftest import FEATURES
from tests.support import VENV_BIN, cli_env, free_port, wait_until

pytestmark = pytest.mark.slow
NOT_IN_SERVING = ("pandas", "sklearn", "scipy", "strawberry", "alembic", "pyarrow.dataset",
                  "mlharbor.training", "mlharbor.evaluation", "mlharbor.serving.graphql",
                  # ONNX Runtime reads the model; the onnx package (a protobuf parser) is
                  # needed only for a model whose bytes may name external data
                  "onnx", "google.protobuf")


def imported(stderr: str) -> set[str]:
    """Module names from ``-X importtime`` lines (``import time: self | cumulative | name``)."""
    return {line.rsplit("|", 1)[1].strip() for line in stderr.splitlines()
            if line.startswith("import time:") and line.count("|") == 2}


def test_serving_an_onnx_model_imports_no_pandas_sklearn_or_graphql(
    home_settings: Any, registry: Any, data: Any, reference_proba: Any,
) -> None:
    from mlharbor.bootstrap import open_identities

    key = open_identities(registry).init_admin("ops", actor="test")[1]
    port = free_port()
    env = {**os.environ, **cli_env(home_settings),
           "MLHARBOR_SECURITY__RATE_LIMIT_PER_MINUTE": "0"}
    proc = subprocess.Popen(
        [sys.executable, "-X", "importtime", str(VENV_BIN / "mlharbor"), "serve",
         "churn@champion", "--port", str(port), "--plain-logs"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    x, _y = data
    rows = x.head(3)
    try:
        url = f"http://127.0.0.1:{port}"
        def ready() -> bool:
            assert proc.poll() is None, "mlharbor serve exited"
            try:
                return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, 90, "mlharbor serve did not become ready", interval=0.1)
        expected = reference_proba("churn@champion", rows)
        values = rows.to_numpy().tolist()
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"},
                          timeout=10) as client:
            native = client.post("/v1/endpoints/churn/predict",
                                 json=rows.to_dict(orient="records"))
            assert native.status_code == 200, native.text
            np.testing.assert_allclose(native.json()["probabilities"], expected, atol=1e-5)
            for body in ({"inputs": values},
                         {"dataframe_split": {"columns": FEATURES, "data": values}}):
                answer = client.post("/invocations", json=body)
                assert answer.status_code == 200, answer.text
            oip = client.post("/v2/models/churn/infer", json={"inputs": [{
                "name": "input-0", "shape": [3, 20], "datatype": "FP64",
                "data": [v for row in values for v in row]}]})
            assert oip.status_code == 200, oip.text
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _out, stderr = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _out, stderr = proc.communicate(timeout=10)
    modules = imported(stderr)
    assert "onnxruntime" in modules and "mlharbor.serving.app" in modules  # the log is read
    heavy = sorted(m for m in modules
                   if any(m == name or m.startswith(name + ".") for name in NOT_IN_SERVING))
    assert not heavy, f"the serving process imported {heavy[:20]}"
