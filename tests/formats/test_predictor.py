"""The Predictor on both runtimes, runtime choice, parity records, and cheap imports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlharbor.core.errors import InvalidInputError, SchemaError
from mlharbor.formats.builder import build_bundle
from mlharbor.formats.catalog import detect_file, get_format, known_formats
from mlharbor.formats.predictor import load_bundle
from tests.formats.cases import churn_frame, churn_labels, churn_pipeline, numeric_data


@pytest.fixture(scope="module")
def churn_forest() -> tuple[object, pd.DataFrame, pd.DataFrame]:
    from sklearn.ensemble import RandomForestClassifier

    train = churn_frame(500)
    model = churn_pipeline(RandomForestClassifier(60, max_depth=8, random_state=0))
    model.fit(train, churn_labels(train))
    return model, train, churn_frame(300, seed=1234)


def test_pipeline_predicts_identically_on_both_runtimes(
    churn_forest: tuple[object, pd.DataFrame, pd.DataFrame], tmp_path: Path
) -> None:
    model, train, test = churn_forest
    result = build_bundle(model, tmp_path / "b", training_data=train)
    assert (result.format, result.runtime, result.parity["status"]) == ("sklearn", "onnx",
                                                                         "passed")
    assert result.parity["label_mismatches"] == 0 and result.parity["rows"] > 500
    expected, expected_proba = model.predict(test), model.predict_proba(test)  # type: ignore[attr-defined]
    for runtime in ("onnx", "native"):
        predictor = load_bundle(tmp_path / "b", runtime=runtime)
        assert predictor.runtime == runtime
        np.testing.assert_array_equal(predictor.predict(test), expected)
        np.testing.assert_allclose(predictor.predict_proba(test), expected_proba, atol=1e-6)
        records = test.head(3).to_dict(orient="records")
        np.testing.assert_array_equal(predictor.predict(records), expected[:3])
        np.testing.assert_array_equal(predictor.predict(records[0]), expected[:1])


def test_onnx_inputs_are_typed_per_column(
    churn_forest: tuple[object, pd.DataFrame, pd.DataFrame], tmp_path: Path
) -> None:
    import onnx

    model, train, _ = churn_forest
    build_bundle(model, tmp_path / "b", training_data=train)
    proto = onnx.load(str(tmp_path / "b" / "onnx" / "model.onnx"))
    types = {i.name: i.type.tensor_type.elem_type for i in proto.graph.input}
    assert types == {"age": onnx.TensorProto.DOUBLE, "income": onnx.TensorProto.DOUBLE,
                     "plan": onnx.TensorProto.STRING, "tenure": onnx.TensorProto.INT64}
    assert [o.name for o in proto.graph.output] == ["label", "probabilities"]


def test_unseen_category_is_a_schema_error_on_both_runtimes(
    churn_forest: tuple[object, pd.DataFrame, pd.DataFrame], tmp_path: Path
) -> None:
    model, train, test = churn_forest
    build_bundle(model, tmp_path / "b", training_data=train)
    row = dict(test.iloc[0].to_dict(), plan="platinum")
    for runtime in ("onnx", "native"):
        with pytest.raises(SchemaError, match="unseen category 'platinum'"):
            load_bundle(tmp_path / "b", runtime=runtime).predict(row)


def test_native_runtime_skips_conversion(tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    x, y = numeric_data()
    result = build_bundle(LogisticRegression().fit(x, y), tmp_path / "b", sample_input=x,
                          runtime="native")
    assert result.runtime == "native" and result.manifest.onnx_path is None
    assert result.parity == {"status": "skipped", "reason": "runtime='native' was asked for"}
    with pytest.raises(InvalidInputError, match="no ONNX model"):
        load_bundle(tmp_path / "b", runtime="onnx")


def test_failed_parity_serves_native_and_says_why(tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    x, y = numeric_data()
    model = LogisticRegression().fit(x, y)
    result = build_bundle(model, tmp_path / "b", training_data=x, tolerance=1e-15)
    assert result.parity["status"] == "failed"
    assert "probabilities differ by up to" in result.parity["reason"]
    assert result.runtime == "native" and result.manifest.runtimes == ["native"]
    forced = load_bundle(tmp_path / "b", runtime="onnx")  # the user may still force it
    np.testing.assert_allclose(forced.predict_proba(x), model.predict_proba(x), atol=1e-5)
    with pytest.raises(InvalidInputError, match="runtime='onnx' was asked for"):
        build_bundle(model, tmp_path / "c", training_data=x, tolerance=1e-15, runtime="onnx")


def test_regressor_has_no_probabilities(tmp_path: Path) -> None:
    from sklearn.linear_model import LinearRegression

    x, _ = numeric_data()
    build_bundle(LinearRegression().fit(x, x[:, 0]), tmp_path / "b", sample_input=x)
    predictor = load_bundle(tmp_path / "b")
    assert predictor.task == "regression"
    with pytest.raises(InvalidInputError, match="needs a classifier"):
        predictor.predict_proba(x)


def test_catalog_explains_misses(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="Unknown model format 'h5'; known: pickle"):
        get_format("h5")
    junk = tmp_path / "weights.h5"
    junk.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))
    with pytest.raises(InvalidInputError, match=r"Unknown model format in .*none of"):
        detect_file(junk)
    with pytest.raises(InvalidInputError, match="No model format can save an object of type"):
        build_bundle(object(), tmp_path / "b")
    assert set(known_formats()) == {"pickle", "sklearn", "xgboost", "lightgbm", "onnx",
                                    "torch", "python"}


def test_imports_stay_cheap() -> None:
    code = ("import sys, mlharbor, mlharbor.formats, mlharbor.formats.catalog, "
            "mlharbor.core.signature, mlharbor.formats.bundle, mlharbor.formats.predictor, "
            "mlharbor.registry.bundles; "
            "heavy = {'pandas', 'sklearn', 'onnxruntime', 'skops', 'onnx', 'torch', 'xgboost'}; "
            "print(sorted(heavy & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout.strip()
    assert out == "[]"


def test_training_data_may_hold_the_target(
    churn_forest: tuple[object, pd.DataFrame, pd.DataFrame], tmp_path: Path
) -> None:
    model, train, test = churn_forest
    labelled = train.assign(churned=churn_labels(train), customer_id=range(len(train)))
    result = build_bundle(model, tmp_path / "b", training_data=labelled)
    assert [c["name"] for c in result.manifest.signature["inputs"]] == [
        "age", "income", "plan", "tenure"]
    assert result.parity["status"] == "passed"
    with pytest.raises(SchemaError, match="lacks the model's feature column"):
        build_bundle(model, tmp_path / "c", sample_input=test.drop(columns=["plan"]))


def test_onnx_file_with_zipmap_output(tmp_path: Path) -> None:
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    x, y = numeric_data()
    model = LogisticRegression().fit(x, np.where(y == 1, "yes", "no"))
    source = tmp_path / "zipmap.onnx"
    source.write_bytes(to_onnx(model, x[:1].astype(np.float32)).SerializeToString())
    result = build_bundle(source, tmp_path / "b")
    assert result.format == "onnx" and result.manifest.classes == ["no", "yes"]
    predictor = load_bundle(tmp_path / "b")
    np.testing.assert_allclose(predictor.predict_proba(x[:20]), model.predict_proba(x[:20]),
                               atol=1e-5)
    np.testing.assert_array_equal(predictor.predict(x[:20]), model.predict(x[:20]))
