"""Real models of every format, built small so the whole conformance suite stays fast.

Each case gives the source to register (object or file), the build arguments, test input, and
the original model's own outputs on that input: what a loaded bundle must reproduce.

Some classifiers predict differently from their most probable class on purpose (a
``FixedThresholdClassifier`` at 0.2, a hand-written ``predict``): ``differs_from_argmax`` marks
them, and the suites check the difference is real, so serving labels as the most probable class
fails them. Two of them are converted to ONNX by a converter registered for the build only
(``converter``): one that applies the threshold (ONNX serves), one that ignores it (the parity
check must see the labels differ from ``predict`` and serve natively).
"""

from __future__ import annotations

import contextlib
import importlib.util
import textwrap
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

RNG_SEED = 7


@dataclass
class Case:
    source: Any
    data: Any
    expected: np.ndarray
    expected_proba: np.ndarray | None = None
    build: dict[str, Any] = field(default_factory=dict)
    load: dict[str, Any] = field(default_factory=dict)
    column: str = "x0"  # a column the signature must enforce
    differs_from_argmax: bool = False  # predict is not the most probable class on many rows
    runtime: str | None = None  # the runtime registration must choose, when the case says
    converter: Callable[[], contextlib.AbstractContextManager[None]] = contextlib.nullcontext

    def building(self) -> contextlib.AbstractContextManager[None]:
        """What must be in force while the case's bundle is built (an ONNX converter)."""
        return self.converter()


def numeric_data(n: int = 300, width: int = 6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(RNG_SEED)
    x = rng.normal(size=(n, width))
    y = (x[:, 0] + x[:, 1] * x[:, 2] > 0).astype(int)
    return x, y


def churn_frame(n: int, seed: int = RNG_SEED) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "age": rng.normal(40, 10, n), "income": rng.normal(5e4, 1.5e4, n),
        "plan": rng.choice(["basic", "plus", "pro"], n), "tenure": rng.integers(0, 60, n),
    })


def churn_labels(frame: pd.DataFrame) -> np.ndarray:
    score = (frame["age"] - 40) / 10 + (frame["plan"] == "pro") - frame["tenure"] / 30
    return (score > -0.5).to_numpy().astype(int)


def churn_pipeline(final: Any) -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    pre = ColumnTransformer([
        ("num", StandardScaler(), ["age", "income", "tenure"]),
        ("cat", OneHotEncoder(handle_unknown="ignore"), ["plan"]),
    ])
    return Pipeline([("pre", pre), ("model", final)])


def sklearn_array(tmp: Path) -> Case:
    from sklearn.ensemble import RandomForestClassifier

    x, y = numeric_data()
    model = RandomForestClassifier(20, max_depth=6, random_state=0).fit(x, y)
    test = x[:50]
    return Case(model, test, model.predict(test), model.predict_proba(test),
                build={"training_data": x})


def sklearn_pipeline(tmp: Path) -> Case:
    from sklearn.ensemble import GradientBoostingClassifier

    train = churn_frame(400)
    model = churn_pipeline(GradientBoostingClassifier(n_estimators=30, random_state=0))
    model.fit(train, churn_labels(train))
    test = churn_frame(60, seed=99)
    return Case(model, test, model.predict(test), model.predict_proba(test),
                build={"training_data": train}, column="plan")


def sklearn_skops_file(tmp: Path) -> Case:
    import skops.io as sio
    from sklearn.ensemble import RandomForestRegressor

    x, _ = numeric_data()
    target = x[:, 0] * 3 + x[:, 1]
    model = RandomForestRegressor(15, max_depth=5, random_state=0).fit(x, target)
    path = tmp / "forest.skops"
    sio.dump(model, path)
    return Case(path, x[:40], model.predict(x[:40]), build={"sample_input": x[:20]})


def xgboost_classifier(tmp: Path) -> Case:
    xgboost = pytest.importorskip("xgboost", reason="xgboost is not installed")
    x, y = numeric_data()
    model = xgboost.XGBClassifier(n_estimators=20, max_depth=3, n_jobs=1).fit(x, y)
    return Case(model, x[:50], model.predict(x[:50]), model.predict_proba(x[:50]),
                build={"training_data": x})


def xgboost_json_file(tmp: Path) -> Case:
    xgboost = pytest.importorskip("xgboost", reason="xgboost is not installed")
    x, _ = numeric_data()
    booster = xgboost.train({"max_depth": 3, "objective": "reg:squarederror", "nthread": 1},
                            xgboost.DMatrix(x, label=x[:, 0] * 2), num_boost_round=15)
    path = tmp / "booster.json"
    booster.save_model(str(path))
    return Case(path, x[:40], booster.inplace_predict(x[:40]), build={"sample_input": x[:10]})


def lightgbm_classifier(tmp: Path) -> Case:
    lightgbm = pytest.importorskip("lightgbm", reason="lightgbm is not installed")
    x, y = numeric_data()
    model = lightgbm.LGBMClassifier(n_estimators=20, num_leaves=8, verbose=-1, n_jobs=1).fit(x, y)
    return Case(model, x[:50], model.predict(x[:50]), model.predict_proba(x[:50]),
                build={"training_data": x})


def lightgbm_text_file(tmp: Path) -> Case:
    lightgbm = pytest.importorskip("lightgbm", reason="lightgbm is not installed")
    x, _ = numeric_data()
    booster = lightgbm.train({"objective": "regression", "num_leaves": 8, "verbose": -1,
                              "num_threads": 1},
                             lightgbm.Dataset(x, label=x[:, 0] * 2), num_boost_round=15)
    path = tmp / "model.txt"
    booster.save_model(str(path))
    return Case(path, x[:40], booster.predict(x[:40]), build={"sample_input": x[:10]})


def onnx_file(tmp: Path) -> Case:
    import onnxruntime as ort
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    x, y = numeric_data()
    model = LogisticRegression().fit(x, y)
    proto = to_onnx(model, x[:1].astype(np.float32), options={id(model): {"zipmap": False}})
    path = tmp / "logistic.onnx"
    path.write_bytes(proto.SerializeToString())
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    labels, proba = session.run(None, {session.get_inputs()[0].name: x[:50].astype(np.float32)})
    return Case(path, x[:50], labels, proba)


def onnx_zipmap_file(tmp: Path) -> Case:
    """skl2onnx's defaults: outputs ``output_label`` and ZipMap'd ``output_probability``."""
    import onnxruntime as ort
    from skl2onnx import to_onnx
    from sklearn.ensemble import RandomForestClassifier

    x, y = numeric_data()
    model = RandomForestClassifier(10, max_depth=5, random_state=0).fit(x, np.where(y, "b", "a"))
    path = tmp / "forest.onnx"
    path.write_bytes(to_onnx(model, x[:1].astype(np.float32)).SerializeToString())
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    labels, maps = session.run(None, {session.get_inputs()[0].name: x[:50].astype(np.float32)})
    proba = np.array([[row["a"], row["b"]] for row in maps])
    return Case(path, x[:50], np.asarray(labels), proba)


def torchscript_file(tmp: Path) -> Case:
    torch = pytest.importorskip("torch", reason="torch is not installed (pip install "
                                "torch==2.13.0, in the dev extra)")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(net)
    path = tmp / "net.pt"
    torch.jit.save(scripted, str(path))
    x, _ = numeric_data()
    with torch.inference_mode():
        expected = net(torch.from_numpy(x[:30].astype(np.float32))).numpy()[:, 0]
    return Case(path, x[:30], expected, build={"sample_input": x[:10]})


PYTHON_MODEL = textwrap.dedent('''
    """A hand-written model: logistic on a + 2b."""
    import numpy as np


    class LinearRule:
        feature_names = ["a", "b"]
        classes_ = np.array([0, 1])

        def _score(self, frame):
            return frame["a"].to_numpy() + 2 * frame["b"].to_numpy()

        def predict(self, frame):
            return (self._score(frame) > 0).astype(int)

        def predict_proba(self, frame):
            p = 1 / (1 + np.exp(-self._score(frame)))
            return np.column_stack([1 - p, p])
''')


def python_file(tmp: Path) -> Case:
    path = tmp / "rule.py"
    path.write_text(PYTHON_MODEL, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("conformance_rule", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.LinearRule()
    rng = np.random.default_rng(RNG_SEED)
    data = pd.DataFrame({"a": rng.normal(size=30), "b": rng.normal(size=30)})
    return Case(path, data, model.predict(data), model.predict_proba(data),
                build={"sample_input": data, "trust": {"code": True}},
                load={"trust": {"code": True}}, column="a")


def pickle_file(tmp: Path) -> Case:
    import hashlib

    import joblib
    from sklearn.ensemble import ExtraTreesClassifier

    x, y = numeric_data()
    model = ExtraTreesClassifier(10, max_depth=5, random_state=0).fit(x, y)
    path = tmp / "model.joblib"
    joblib.dump(model, path)
    pin = hashlib.sha256(path.read_bytes()).hexdigest()
    return Case(path, x[:50], model.predict(x[:50]), model.predict_proba(x[:50]),
                build={"training_data": x, "trust": {"pickle_sha256": pin}},
                load={"trust": {"pickle_sha256": pin}})


THRESHOLD = 0.2  # far from 0.5: labels differ from the most probable class on many rows


def threshold_data(n_train: int = 300, n_test: int = 120) -> tuple[np.ndarray, np.ndarray,
                                                                     np.ndarray]:
    """Training rows, their labels, and held-out test rows."""
    x, y = numeric_data(n_train + n_test)
    return x[:n_train], y[:n_train], x[n_train:]


def _tuned(final: Any, labels: Callable[[np.ndarray], np.ndarray] = lambda y: y) -> Case:
    from sklearn.model_selection import FixedThresholdClassifier

    x, y, test = threshold_data()
    model = FixedThresholdClassifier(final, threshold=THRESHOLD).fit(x, labels(y))
    return Case(model, test, model.predict(test), model.predict_proba(test),
                build={"training_data": x}, differs_from_argmax=True)


def sklearn_threshold(tmp: Path) -> Case:
    """A FixedThresholdClassifier (string classes) saved with skops; skl2onnx cannot convert
    it, so it is served natively."""
    from sklearn.linear_model import LogisticRegression

    case = _tuned(LogisticRegression(), lambda y: np.where(y == 1, "churn", "stay"))
    case.runtime = "native"
    return case


def sklearn_pipeline_threshold(tmp: Path) -> Case:
    """A stock Pipeline ending in a threshold-tuned forest: not the forest's argmax."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y, test = threshold_data()
    from sklearn.model_selection import FixedThresholdClassifier

    tuned = FixedThresholdClassifier(RandomForestClassifier(20, max_depth=6, random_state=0),
                                     threshold=THRESHOLD)
    model = make_pipeline(StandardScaler(), tuned).fit(x, y)
    return Case(model, test, model.predict(test), model.predict_proba(test),
                build={"training_data": x}, differs_from_argmax=True, runtime="native")


def tuned_threshold_cv(tmp: Path) -> Case:
    """TunedThresholdClassifierCV on imbalanced classes, tuned for balanced accuracy."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import TunedThresholdClassifierCV

    x, _y, test = threshold_data()
    y = (x[:, 0] + 0.5 * x[:, 1] > 1.0).astype(int)  # about one row in five is positive
    model = TunedThresholdClassifierCV(LogisticRegression(), scoring="balanced_accuracy",
                                       cv=3, random_state=0).fit(x, y)
    # skops names the scorer it keeps; those names are outside the default policy, so the
    # case trusts them explicitly, as a platform would in formats.skops_trusted_types.
    trust = {"skops_trusted_types": TUNED_CV_SKOPS_TYPES}
    return Case(model, test, model.predict(test), model.predict_proba(test),
                build={"training_data": x, "trust": trust}, load={"trust": trust},
                runtime="native")


TUNED_CV_SKOPS_TYPES = (
    "sklearn.metrics._classification.balanced_accuracy_score",
    "sklearn.metrics._scorer._CurveScorer", "sklearn.metrics._scorer._Scorer",
    "sklearn.utils._metadata_requests.MetadataRequest",
    "sklearn.utils._metadata_requests.MethodMetadataRequest",
)


@contextlib.contextmanager
def threshold_converter(apply_threshold: bool) -> Iterator[None]:
    """An skl2onnx converter for FixedThresholdClassifier, registered while the block runs.

    ``apply_threshold=False`` converts it as its inner estimator (the threshold is lost: the
    probabilities match, the labels do not), as a careless converter would.
    """
    from onnx import TensorProto
    from skl2onnx import update_registered_converter
    from skl2onnx._supported_operators import sklearn_operator_name_map
    from skl2onnx.algebra.onnx_operator import OnnxSubEstimator
    from skl2onnx.algebra.onnx_ops import (
        OnnxCast,
        OnnxGather,
        OnnxGreaterOrEqual,
        OnnxIdentity,
        OnnxReshape,
    )
    from skl2onnx.common import _registration
    from skl2onnx.common.shape_calculator import calculate_linear_classifier_output_shapes
    from sklearn.model_selection import FixedThresholdClassifier

    def convert(scope: Any, operator: Any, container: Any) -> None:
        model, opv = operator.raw_operator, container.target_opset
        inner = OnnxSubEstimator(model.estimator_, operator.inputs[0], op_version=opv,
                                 options={"zipmap": False})
        label, proba = inner[0], inner[1]
        if apply_threshold:
            positive = OnnxGather(proba, np.array([1], dtype=np.int64), axis=1, op_version=opv)
            above = OnnxGreaterOrEqual(positive, np.array([model.threshold], dtype=np.float32),
                                       op_version=opv)
            index = OnnxReshape(OnnxCast(above, to=TensorProto.INT64, op_version=opv),
                                np.array([-1], dtype=np.int64), op_version=opv)
            label = OnnxGather(np.asarray(model.classes_, dtype=np.int64), index, axis=0,
                               op_version=opv)
        OnnxIdentity(label, output_names=[operator.outputs[0]],
                     op_version=opv).add_to(scope, container)
        OnnxIdentity(proba, output_names=[operator.outputs[1]],
                     op_version=opv).add_to(scope, container)

    alias = "MlharborTestFixedThreshold"
    update_registered_converter(
        FixedThresholdClassifier, alias, calculate_linear_classifier_output_shapes, convert,
        options={"zipmap": [True, False, "columns"], "nocl": [True, False]})
    try:
        yield
    finally:
        sklearn_operator_name_map.pop(FixedThresholdClassifier, None)
        _registration._converter_pool.pop(alias, None)
        _registration._shape_calculator_pool.pop(alias, None)


def onnx_threshold(tmp: Path) -> Case:
    """Converted with the threshold in the graph: ONNX serves, its label output is predict."""
    from sklearn.linear_model import LogisticRegression

    case = _tuned(LogisticRegression())
    case.runtime, case.converter = "onnx", lambda: threshold_converter(True)
    return case


def onnx_threshold_lost(tmp: Path) -> Case:
    """Converted without the threshold: parity sees the labels differ, native serves."""
    from sklearn.linear_model import LogisticRegression

    case = _tuned(LogisticRegression())
    case.runtime, case.converter = "native", lambda: threshold_converter(False)
    return case


def xgboost_booster_classifier(tmp: Path) -> Case:
    """A bare Booster with a probability objective: labels as XGBClassifier gives them."""
    xgboost = pytest.importorskip("xgboost", reason="xgboost is not installed")
    x, y, test = threshold_data()
    booster = xgboost.train({"max_depth": 3, "objective": "binary:logistic", "nthread": 1},
                            xgboost.DMatrix(x, label=y), num_boost_round=15)
    path = tmp / "booster.json"
    booster.save_model(str(path))
    p = booster.inplace_predict(test)
    # XGBClassifier.predict: class 1 where the probability is above 0.5.
    return Case(path, test, (p > 0.5).astype(int), np.column_stack([1 - p, p]),
                build={"training_data": x})


CUSTOM_PREDICT_MODEL = textwrap.dedent('''
    """A hand-written classifier whose predict is a threshold, not the most probable class."""
    import numpy as np


    class ThresholdRule:
        feature_names = ["a", "b"]
        classes_ = np.array(["stay", "churn"])
        threshold = 0.2

        def predict_proba(self, frame):
            p = 1 / (1 + np.exp(-(frame["a"].to_numpy() + 2 * frame["b"].to_numpy())))
            return np.column_stack([1 - p, p])

        def predict(self, frame):
            churn = self.predict_proba(frame)[:, 1] >= self.threshold
            return self.classes_[churn.astype(int)]
''')


def python_custom_predict(tmp: Path) -> Case:
    path = tmp / "threshold_rule.py"
    path.write_text(CUSTOM_PREDICT_MODEL, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("conformance_threshold_rule", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.ThresholdRule()
    rng = np.random.default_rng(RNG_SEED)
    data = pd.DataFrame({"a": rng.normal(size=120), "b": rng.normal(size=120)})
    return Case(path, data, model.predict(data), model.predict_proba(data),
                build={"sample_input": data, "trust": {"code": True}},
                load={"trust": {"code": True}}, column="a", differs_from_argmax=True,
                runtime="native")


def pickle_threshold(tmp: Path) -> Case:
    import hashlib

    import joblib
    from sklearn.ensemble import ExtraTreesClassifier

    case = _tuned(ExtraTreesClassifier(20, max_depth=6, random_state=0))
    path = tmp / "tuned.joblib"
    joblib.dump(case.source, path)
    pin = hashlib.sha256(path.read_bytes()).hexdigest()
    case.source, case.runtime = path, "native"
    case.build["trust"] = case.load["trust"] = {"pickle_sha256": pin}
    return case


CASES: dict[str, Callable[[Path], Case]] = {
    "sklearn-object": sklearn_array,
    "sklearn-pipeline": sklearn_pipeline,
    "sklearn-skops-file": sklearn_skops_file,
    "xgboost-classifier": xgboost_classifier,
    "xgboost-json-file": xgboost_json_file,
    "lightgbm-classifier": lightgbm_classifier,
    "lightgbm-text-file": lightgbm_text_file,
    "onnx-file": onnx_file,
    "onnx-zipmap-file": onnx_zipmap_file,
    "torchscript-file": torchscript_file,
    "python-source": python_file,
    "pickle-pinned": pickle_file,
    "sklearn-threshold": sklearn_threshold,
    "sklearn-pipeline-threshold": sklearn_pipeline_threshold,
    "sklearn-tuned-threshold-cv": tuned_threshold_cv,
    "onnx-converted-threshold": onnx_threshold,
    "onnx-converted-threshold-lost": onnx_threshold_lost,
    "xgboost-booster-classifier": xgboost_booster_classifier,
    "python-custom-predict": python_custom_predict,
    "pickle-threshold": pickle_threshold,
}
