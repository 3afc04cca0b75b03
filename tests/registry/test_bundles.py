"""Registering models into a real registry (SQLite + local artifact store) and loading them."""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from mlharbor.core.errors import IntegrityError, SchemaError, UnsafeArtifactError
from mlharbor.formats.predictor import load_bundle
from mlharbor.registry.bundles import load_predictor, register_model
from mlharbor.registry.service import Registry
from mlharbor.settings import Settings
from tests.formats.cases import churn_frame, churn_labels, churn_pipeline, numeric_data


@pytest.fixture
def registry(settings: Settings) -> Registry:
    return Registry.from_settings(settings)


def test_register_pipeline_and_load_both_runtimes(registry: Registry, settings: Settings) -> None:
    from sklearn.ensemble import RandomForestClassifier

    train = churn_frame(300)
    model = churn_pipeline(RandomForestClassifier(30, max_depth=6, random_state=0))
    model.fit(train, churn_labels(train))
    result = register_model(registry, "churn", model, training_data=train, settings=settings,
                            description="churn forest", tags={"team": "growth"})
    assert (result.format, result.runtime, result.parity["status"]) == ("sklearn", "onnx",
                                                                         "passed")
    assert result.version.ref == "churn:1"
    assert "format sklearn, served by onnx, ONNX parity passed" in result.summary()
    stored = registry.get_version("churn:1")
    assert stored.manifest is not None and stored.manifest["model_format"] == "sklearn"
    assert {f.path for f in stored.files} >= {"manifest.json", "model/model.skops",
                                              "onnx/model.onnx", "input_example.json"}
    test = churn_frame(80, seed=5)
    for runtime in ("onnx", "native"):
        predictor = load_predictor(registry, "churn", settings, runtime=runtime)
        np.testing.assert_array_equal(predictor.predict(test), model.predict(test))
        np.testing.assert_allclose(predictor.predict_proba(test), model.predict_proba(test),
                                   atol=1e-6)
    with pytest.raises(SchemaError, match="missing column"):
        predictor.predict({"age": 3.0})


def test_pickle_trust_is_recorded_and_honoured(
    registry: Registry, settings: Settings, tmp_path: Path
) -> None:
    from sklearn.linear_model import LogisticRegression

    x, y = numeric_data()
    model = LogisticRegression().fit(x, y)
    source = tmp_path / "model.bin"
    source.write_bytes(pickle.dumps(model))
    with pytest.raises(UnsafeArtifactError, match="arbitrary code"):
        register_model(registry, "legacy", source, sample_input=x, settings=settings)
    assert registry.list_models().items == []  # nothing stored on refusal
    pin = hashlib.sha256(source.read_bytes()).hexdigest()
    result = register_model(registry, "legacy", source, training_data=x, settings=settings,
                            trust_pickle_sha256=pin, actor="alice")
    trust = result.version.manifest["trust"]  # type: ignore[index]
    assert trust["mode"] == "pickle-pinned" and trust["sha256"] == pin
    assert trust["trusted_by"] == "alice"
    predictor = load_predictor(registry, "legacy:1", settings, runtime="native")
    np.testing.assert_array_equal(predictor.predict(x), model.predict(x))


def test_altered_download_is_refused(registry: Registry, settings: Settings) -> None:
    from sklearn.linear_model import LinearRegression

    x, _ = numeric_data()
    register_model(registry, "lin", LinearRegression().fit(x, x[:, 0]), sample_input=x,
                   settings=settings)
    folder = registry.download("lin:1")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["trust"] = {"mode": "code"}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    # The registry notices the changed copy and fetches a clean one from the store.
    predictor = load_predictor(registry, "lin:1", settings)
    np.testing.assert_allclose(predictor.predict(x[:3]), x[:3, 0], atol=1e-4)
    version = registry.get_version("lin:1")
    folder = registry.download(version)
    body = json.loads((folder / "manifest.json").read_text())
    body["trust"] = {"mode": "code"}
    (folder / "manifest.json").write_text(json.dumps(body))
    with pytest.raises(IntegrityError, match="differs from the manifest the registry stored"):
        load_bundle(folder, expected_manifest=version.manifest)


def test_cli_register_reports_format_runtime_and_parity(
    settings: Settings, tmp_path: Path
) -> None:
    import skops.io as sio
    from sklearn.ensemble import RandomForestClassifier

    from tests.support import cli_env, run_cli

    train = churn_frame(200)
    model = churn_pipeline(RandomForestClassifier(10, max_depth=5, random_state=0))
    model.fit(train, churn_labels(train))
    sio.dump(model, tmp_path / "churn.skops")
    train.to_csv(tmp_path / "train.csv", index=False)
    env = cli_env(settings)
    result = run_cli("models", "register", "churn", str(tmp_path / "churn.skops"),
                     "--training-data", str(tmp_path / "train.csv"), env=env)
    assert result.returncode == 0, result.stderr
    assert "Registered churn:1" in result.stdout
    assert "format:  sklearn" in result.stdout and "runtime: onnx" in result.stdout
    assert "parity:  passed" in result.stdout

    marker = tmp_path / "marker"
    exploit = tmp_path / "weights.bin"
    exploit.write_bytes(pickle.dumps(_Exploit(marker)))
    refused = run_cli("models", "register", "evil", str(exploit), env=env)
    assert refused.returncode != 0
    assert "arbitrary code" in refused.stderr and "Traceback" not in refused.stderr
    assert not marker.exists()


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)
