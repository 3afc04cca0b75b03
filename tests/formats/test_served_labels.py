"""Served labels are the registered model's own ``predict``, on every format and runtime.

For each case of :mod:`tests.formats.cases` (every format, plus threshold-tuned classifiers and
a hand-written ``predict``): register it, then ask every way mlharbor answers: the Python API
(``Predictor.predict`` / ``predict_proba`` / ``outputs``) on each runtime the bundle offers,
the in-process serving model on each runtime (one request, and a micro-batch of two), the
serverless prediction core, and a live HTTP server. Each must give the original model's
``predict`` and ``predict_proba`` for the same rows (probabilities within a float32 tolerance
on ONNX Runtime). Cases marked ``differs_from_argmax`` first prove that their ``predict``
really is not the most probable class on many rows, so deriving labels from probabilities
anywhere fails this suite.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from mlharbor.formats.base import predict_is_argmax
from mlharbor.formats.predictor import Predictor
from mlharbor.settings import FormatSettings, Settings
from tests.formats.cases import CASES, TUNED_CV_SKOPS_TYPES, Case
from tests.support import LiveServer

pytestmark = pytest.mark.slow
ONNX_PROBA_ATOL = 1e-5  # ONNX Runtime computes in float32; the parity check allows the same
NATIVE_PROBA_ATOL = 1e-12


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    home = tmp_path_factory.mktemp("served-labels") / "home"
    return Settings(home=home, formats=FormatSettings(
        skops_trusted_types=list(TUNED_CV_SKOPS_TYPES)))


@pytest.fixture(scope="module")
def registry(settings: Settings) -> Iterator[Any]:
    from mlharbor.bootstrap import open_registry

    reg = open_registry(settings)
    yield reg
    reg.close()


def _register(registry: Any, settings: Settings, name: str, case: Case) -> Any:
    from mlharbor.registry.bundles import register_model

    args = dict(case.build)
    trust = args.pop("trust", {})
    with case.building():
        return register_model(registry, name, case.source, settings=settings,
                              trust_pickle_sha256=trust.get("pickle_sha256"),
                              trust_code=bool(trust.get("code")), **args)


def _records(predictor: Predictor, data: Any) -> list[dict[str, Any]]:
    """The case's rows as JSON records in signature order (what an HTTP client sends)."""
    cols = predictor.signature.validator().columns(data)
    count = len(next(iter(cols.values())))
    return [{name: cols[name][i].item() if hasattr(cols[name][i], "item") else cols[name][i]
             for name in predictor.signature.names} for i in range(count)]


def _assert_answers(case: Case, labels: Any, proba: Any, runtime: str, where: str) -> None:
    """``labels`` / ``proba`` are the original model's predict / predict_proba."""
    got = np.asarray(labels)
    if case.expected_proba is None:  # a regressor: values within float32 rounding
        np.testing.assert_allclose(got.astype(np.float64), case.expected, rtol=1e-5, atol=1e-5,
                                   err_msg=where)
        assert proba is None, where
        return
    assert got.shape == case.expected.shape, where
    mismatched = np.flatnonzero(got != case.expected)
    assert mismatched.size == 0, (
        f"{where}: {mismatched.size} of {got.size} labels differ from the model's predict "
        f"(row {mismatched[0]}: served {got[mismatched[0]]!r}, predict "
        f"{case.expected[mismatched[0]]!r})")
    assert proba is not None, where
    atol = ONNX_PROBA_ATOL if runtime == "onnx" else NATIVE_PROBA_ATOL
    np.testing.assert_allclose(np.asarray(proba, dtype=np.float64), case.expected_proba,
                               rtol=0, atol=atol, err_msg=where)


@pytest.fixture(params=sorted(CASES))
def case_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_served_labels_are_the_models_own_predict(
    case_name: str, tmp_path: Path, settings: Settings, registry: Any
) -> None:
    from mlharbor.deploy.handlers.predictions import PredictionService
    from mlharbor.registry.bundles import load_predictor
    from mlharbor.serving.app import create_serving_app
    from mlharbor.serving.loader import load_served_model
    from mlharbor.serving.model import ServedModel, runner_for

    case = CASES[case_name](tmp_path)
    if case.differs_from_argmax:  # the case can catch labels derived from probabilities
        assert case.expected_proba is not None
        argmax = np.argmax(case.expected_proba, axis=1)
        classes = np.unique(case.expected)
        share = float(np.mean(case.expected != classes[argmax]))
        assert share >= 0.1, f"predict differs from the most probable class on {share:.0%}"

    name = case_name.replace("_", "-")
    result = _register(registry, settings, name, case)
    manifest = result.version.manifest
    if case.runtime is not None:
        assert result.runtime == case.runtime, result.parity
    ref = result.version.ref

    # The Python API and the in-process serving model, on every runtime the bundle offers.
    for runtime in manifest["runtimes"]:
        predictor = load_predictor(registry, ref, settings, runtime=runtime)
        assert predictor.runtime == runtime
        where = f"{case_name} {runtime}"
        proba = (predictor.predict_proba(case.data) if case.expected_proba is not None
                 else None)
        _assert_answers(case, predictor.predict(case.data), proba, runtime,
                        f"{where} Predictor.predict/predict_proba")
        both = predictor.outputs(case.data)
        _assert_answers(case, both.predictions, both.probabilities, runtime,
                        f"{where} Predictor.outputs")
        records = _records(predictor, case.data)
        served = ServedModel(name, result.version.version, predictor.signature,
                             runner_for(predictor), task=predictor.task,
                             classes=predictor.classes)
        one = served.run(served.prepare(records)[0])
        _assert_answers(case, one.predictions, one.probabilities, runtime,
                        f"{where} ServedModel one request")
        half = len(records) // 2  # a micro-batch of two requests, answers sliced back
        x = served.concat([served.prepare(records[:half])[0],
                           served.prepare(records[half:])[0]])
        batch = served.run(x)
        joined = [batch.rows(0, half), batch.rows(half, len(records))]
        _assert_answers(case, np.concatenate([o.predictions for o in joined]),
                        None if batch.probabilities is None else
                        np.concatenate([o.probabilities for o in joined]),
                        runtime, f"{where} ServedModel micro-batch")

    default = manifest["default_runtime"]
    loaded = load_served_model(registry, result.version, settings)  # what a server loads
    assert loaded.runtime == default
    records = _records(loaded_predictor := load_predictor(registry, ref, settings), case.data)
    answer = loaded.run(loaded.prepare(records)[0])
    _assert_answers(case, answer.predictions, answer.probabilities, default,
                    f"{case_name} serving loader")

    # The serverless prediction core (Lambda, Azure Functions).
    service = PredictionService(ref, name, result.version.version, loaded_predictor)
    status, body = service.predict_body(json.dumps(records))
    assert status == 200, body
    _assert_answers(case, body["predictions"], body.get("probabilities"), default,
                    f"{case_name} serverless handler")

    # A live server answering real HTTP requests.
    app = create_serving_app(settings, registry, ref=ref, auth=False)
    with LiveServer(app) as server:
        response = httpx.post(f"{server.url}/v1/endpoints/{name}/predict", json=records,
                              timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["version"] == result.version.version
    _assert_answers(case, body["predictions"], body.get("probabilities"), default,
                    f"{case_name} HTTP")


def test_parity_falls_back_to_native_when_onnx_labels_differ_from_predict(
    tmp_path: Path, settings: Settings, registry: Any
) -> None:
    """Probabilities equal, labels not: the parity record says so and native serves."""
    case = CASES["onnx-converted-threshold-lost"](tmp_path)
    result = _register(registry, settings, "threshold-lost-parity", case)
    parity = result.version.manifest["onnx"]
    assert parity["status"] == "failed"
    assert parity["max_abs_diff"] <= ONNX_PROBA_ATOL  # only the labels betray the conversion
    assert parity["label_mismatches"] > 0.1 * parity["rows"]
    assert "labels differ from the model's own predict" in parity["reason"]
    assert result.version.manifest["default_runtime"] == "native"
    assert result.version.manifest["runtimes"] == ["native"]


def test_labels_come_from_probabilities_only_where_predict_is_the_argmax() -> None:
    """The one-inference shortcut is taken only for predict methods that are the argmax."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import FixedThresholdClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from tests.formats.cases import numeric_data

    x, y = numeric_data(120)
    forest = RandomForestClassifier(5, random_state=0).fit(x, y)

    class CustomForest(RandomForestClassifier):  # type: ignore[misc]  # its own predict
        def predict(self, data: Any) -> Any:
            return self.classes_[(self.predict_proba(data)[:, 1] >= 0.2).astype(int)]

    vouched = [forest, ExtraTreesClassifier(5, random_state=0).fit(x, y),
               make_pipeline(StandardScaler(), RandomForestClassifier(5)).fit(x, y),
               CalibratedClassifierCV(LogisticRegression(), cv=3).fit(x, y)]
    not_vouched = [LogisticRegression().fit(x, y),
                   FixedThresholdClassifier(RandomForestClassifier(5), threshold=0.2).fit(x, y),
                   make_pipeline(StandardScaler(), FixedThresholdClassifier(
                       RandomForestClassifier(5), threshold=0.2)).fit(x, y),
                   CustomForest(5, random_state=0).fit(x, y)]
    assert [predict_is_argmax(m) for m in vouched] == [True] * len(vouched)
    assert [predict_is_argmax(m) for m in not_vouched] == [False] * len(not_vouched)
