"""When the prediction sink says it needs only the matrix of a model of numbers
(``wants_inputs`` False: the prediction log, where no redaction applies), the data plane lets
the matrix stand for the inputs from validation on: records carry it as ``NumericRows``, and
fallbacks and shadows are prepared from it and answer exactly as from the request itself.
A sink that does not say so (or a redacted endpoint of the log) gets the inputs as received."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from mlharbor.monitoring.logrows import Redaction
from mlharbor.monitoring.predlog import PredictionLog
from mlharbor.monitoring.segments import LocalSegments
from mlharbor.serving.model import NumericRows
from mlharbor.serving.sink import MemorySink
from tests.serving.conftest import FEATURES
from tests.serving.test_behaviour import faulty, spec
from tests.support import wait_until

pytestmark = pytest.mark.slow
ROWS = [{f: round(0.1 * i + j, 3) for i, f in enumerate(FEATURES)} for j in range(5)]


class MatrixSink(MemorySink):
    """A sink of ours that needs no more than the matrix (as the prediction log)."""

    def wants_inputs(self, endpoint: str) -> bool:
        return False


def answered(url: str) -> dict[str, Any]:
    response = httpx.post(f"{url}/v1/endpoints/churn/predict", json=ROWS, timeout=30)
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_records_carry_the_matrix_and_fallbacks_answer_from_it(
        home_settings: Any, registry: Any, serve: Any, reference_proba: Any) -> None:
    registry.set_alias("churn", "champion", 2, reason="promote v2")
    sink = MatrixSink()
    loader = faulty(home_settings, registry, v2={"fail": True})
    server = serve(loader=loader, sink=sink, endpoints=[
        spec(routes=[{"ref": "churn@champion"}], fallback=["previous"], shadow="churn:1")])
    answer = answered(server.url)
    assert answer["version"] == 1 and answer["fallback"]["to"] == "churn:1"
    np.testing.assert_allclose(answer["probabilities"], reference_proba("churn:1", ROWS),
                               atol=1e-5)
    wait_until(lambda: len(sink.records) == 2, 30, "the primary's and the shadow's records")
    for record in sink.records:
        assert type(record.inputs) is NumericRows
        assert record.inputs.columns == tuple(FEATURES)
        np.testing.assert_array_equal(
            record.inputs.matrix, np.array([[r[f] for f in FEATURES] for r in ROWS]))
    shadow = next(r for r in sink.records if r.shadow)
    np.testing.assert_allclose(shadow.outputs.probabilities, reference_proba("churn:1", ROWS),
                               atol=1e-5)


def test_a_sink_that_does_not_say_gets_the_inputs_as_received(serve: Any) -> None:
    sink = MemorySink()
    server = serve(ref="churn@champion", sink=sink)
    answered(server.url)
    wait_until(lambda: len(sink.records) == 1, 30, "the record")
    assert sink.records[0].inputs == ROWS


def test_the_log_wants_the_inputs_only_where_redaction_applies(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path / "journal", LocalSegments(tmp_path / "segments"),
                        redaction=Redaction({"private": {"f0": "drop"}}))
    assert not log.wants_inputs("churn") and log.wants_inputs("private")
    plain = PredictionLog(tmp_path / "journal2", LocalSegments(tmp_path / "segments2"))
    assert not plain.wants_inputs("churn")
