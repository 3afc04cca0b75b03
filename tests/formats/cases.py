"""Real models of every format, built small so the whole conformance suite stays fast.

Each case gives the source to register (object or file), the build arguments, test input, and
the original model's own outputs on that input: what a loaded bundle must reproduce.
"""

from __future__ import annotations

import importlib.util
import textwrap
import warnings
from collections.abc import Callable
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


CASES: dict[str, Callable[[Path], Case]] = {
    "sklearn-object": sklearn_array,
    "sklearn-pipeline": sklearn_pipeline,
    "sklearn-skops-file": sklearn_skops_file,
    "xgboost-classifier": xgboost_classifier,
    "xgboost-json-file": xgboost_json_file,
    "lightgbm-classifier": lightgbm_classifier,
    "lightgbm-text-file": lightgbm_text_file,
    "onnx-file": onnx_file,
    "torchscript-file": torchscript_file,
    "python-source": python_file,
    "pickle-pinned": pickle_file,
}
