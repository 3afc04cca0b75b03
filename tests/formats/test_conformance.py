"""One conformance suite every model format passes (see STYLE.md, habit 9).

save -> bundle -> verify -> load -> predict equals the original, on every runtime the bundle
offers; a tampered byte fails with IntegrityError before anything is deserialized; the
signature is enforced.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlharbor.core.errors import IntegrityError, SchemaError
from mlharbor.formats.base import TrustOptions
from mlharbor.formats.builder import BuildResult, build_bundle
from mlharbor.formats.bundle import verify_bundle
from mlharbor.formats.predictor import load_bundle
from tests.formats.cases import CASES, Case

EXPECTED_FORMAT = {
    "sklearn-object": "sklearn", "sklearn-pipeline": "sklearn", "sklearn-skops-file": "sklearn",
    "xgboost-classifier": "xgboost", "xgboost-json-file": "xgboost",
    "lightgbm-classifier": "lightgbm", "lightgbm-text-file": "lightgbm", "onnx-file": "onnx",
    "onnx-zipmap-file": "onnx",
    "torchscript-file": "torch", "python-source": "python", "pickle-pinned": "pickle",
    "sklearn-threshold": "sklearn", "sklearn-pipeline-threshold": "sklearn",
    "sklearn-tuned-threshold-cv": "sklearn", "onnx-converted-threshold": "sklearn",
    "onnx-converted-threshold-lost": "sklearn", "xgboost-booster-classifier": "xgboost",
    "python-custom-predict": "python", "pickle-threshold": "pickle",
}


def _build(case: Case, dest: Path) -> BuildResult:
    args = dict(case.build)
    trust = TrustOptions(**args.pop("trust", {}))
    with case.building():
        return build_bundle(case.source, dest, trust=trust, **args)


def _load(case: Case, dest: Path, runtime: str | None = None) -> Any:
    return load_bundle(dest, trust=TrustOptions(**case.load.get("trust", {})), runtime=runtime)


@pytest.fixture(params=sorted(CASES))
def case_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def built(case_name: str, tmp_path: Path) -> tuple[Case, Path, BuildResult]:
    case = CASES[case_name](tmp_path)
    dest = tmp_path / "bundle"
    return case, dest, _build(case, dest)


def test_round_trip_predicts_like_the_original(
    case_name: str, built: tuple[Case, Path, BuildResult]
) -> None:
    case, dest, result = built
    assert result.format == EXPECTED_FORMAT[case_name]
    manifest = verify_bundle(dest)
    assert {f.path for f in manifest.files} >= {manifest.model_path}
    for runtime in manifest.runtimes:
        predictor = _load(case, dest, runtime)
        assert predictor.runtime == runtime
        got = predictor.predict(case.data)
        if case.expected_proba is not None:
            np.testing.assert_array_equal(got, case.expected)
            np.testing.assert_allclose(predictor.predict_proba(case.data), case.expected_proba,
                                       atol=1e-5)
        else:
            np.testing.assert_allclose(got, case.expected, rtol=1e-5, atol=1e-5)


def test_tampered_byte_fails_before_loading(built: tuple[Case, Path, BuildResult]) -> None:
    case, dest, result = built
    model_file = dest / result.manifest.model_path
    data = bytearray(model_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model_file.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="sha256"):
        _load(case, dest)


def test_unlisted_file_fails(built: tuple[Case, Path, BuildResult]) -> None:
    case, dest, _ = built
    (dest / "model" / "extra.py").write_text("print('hi')", encoding="utf-8")
    with pytest.raises(IntegrityError, match=r"does not list: model/extra\.py"):
        _load(case, dest)


def test_signature_is_enforced(built: tuple[Case, Path, BuildResult]) -> None:
    case, dest, _ = built
    predictor = _load(case, dest)
    names = list(predictor.signature.names)
    rows = predictor.signature.validator().columns(case.data)
    record = {name: rows[name][0].item() if hasattr(rows[name][0], "item") else rows[name][0]
              for name in names}
    missing = {k: v for k, v in record.items() if k != case.column}
    with pytest.raises(SchemaError, match=f"missing column.*'{case.column}'") as info:
        predictor.predict(missing)
    assert info.value.details["column"] == case.column
    wrong = dict(record, **{case.column: 12345 if isinstance(record[case.column], str)
                            else "not-a-number"})
    with pytest.raises(SchemaError, match=f"Column '{case.column}' expects"):
        predictor.predict(wrong)
