"""Loading must not run untrusted code: pickles, skops type lists, ONNX external data.

The malicious pickle writes a marker file when unpickled; every test asserts that the marker
never appears, including in a separate process started through the real CLI entry point.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import zipfile
from pathlib import Path

import joblib
import numpy as np
import pytest

from mlharbor.core.errors import IntegrityError, UnsafeArtifactError
from mlharbor.formats.base import TrustOptions
from mlharbor.formats.builder import build_bundle
from mlharbor.formats.bundle import read_manifest
from mlharbor.formats.predictor import load_bundle


class Exploit:
    """Unpickling this object writes the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


def _write_exploit(path: Path, marker: Path, how: str) -> Path:
    if how == "joblib-zlib":
        joblib.dump(Exploit(marker), path, compress=3)
    elif how == "protocol0":
        path.write_bytes(pickle.dumps(Exploit(marker), protocol=0))
    else:
        path.write_bytes(pickle.dumps(Exploit(marker), protocol=4))
    return path


@pytest.mark.parametrize(("name", "how"), [
    ("model.pkl", "protocol4"), ("model.joblib", "joblib-zlib"), ("model.bin", "protocol4"),
    ("weights.bin", "protocol0"), ("model.skops", "protocol4"),
])
def test_malicious_pickle_is_refused_by_content(tmp_path: Path, name: str, how: str) -> None:
    marker = tmp_path / "marker"
    source = _write_exploit(tmp_path / name, marker, how)
    with pytest.raises(UnsafeArtifactError, match="arbitrary code") as info:
        build_bundle(source, tmp_path / "bundle")
    assert "skops" in (info.value.hint or "") and "ONNX" in (info.value.hint or "")
    assert not marker.exists()


def test_wrong_pin_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    source = _write_exploit(tmp_path / "model.bin", marker, "protocol4")
    with pytest.raises(UnsafeArtifactError, match="not the pinned"):
        build_bundle(source, tmp_path / "bundle", trust=TrustOptions(pickle_sha256="0" * 64))
    assert not marker.exists()


def test_torch_save_archive_is_a_pickle(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("model/data.pkl", pickle.dumps({"weights": [1, 2]}))
    source = tmp_path / "model.pt"
    source.write_bytes(buffer.getvalue())
    with pytest.raises(UnsafeArtifactError, match="pickle"):
        build_bundle(source, tmp_path / "bundle")


def test_marker_never_appears_in_a_cli_process(tmp_path: Path) -> None:
    import subprocess
    import sys

    marker = tmp_path / "marker"
    source = _write_exploit(tmp_path / "model.bin", marker, "protocol4")
    code = ("import sys; from pathlib import Path; from mlharbor.formats.builder import "
            "build_bundle; build_bundle(Path(sys.argv[1]), Path(sys.argv[2]))")
    proc = subprocess.run([sys.executable, "-c", code, str(source), str(tmp_path / "b")],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode != 0
    assert "UnsafeArtifactError" in proc.stderr
    assert not marker.exists()


def test_pinned_pickle_loads_and_is_recorded(tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    x = np.random.default_rng(0).normal(size=(50, 3))
    model = LogisticRegression().fit(x, x[:, 0] > 0)
    source = tmp_path / "model.bin"
    source.write_bytes(pickle.dumps(model))
    pin = hashlib.sha256(source.read_bytes()).hexdigest()
    result = build_bundle(source, tmp_path / "bundle", training_data=x,
                          trust=TrustOptions(pickle_sha256=pin))
    assert result.manifest.trust["mode"] == "pickle-pinned"
    assert result.manifest.trust["sha256"] == pin
    with pytest.raises(UnsafeArtifactError, match="arbitrary code"):
        load_bundle(tmp_path / "bundle", runtime="native")  # a bare folder: pin again
    predictor = load_bundle(tmp_path / "bundle", runtime="native",
                            trust=TrustOptions(pickle_sha256=pin))
    np.testing.assert_array_equal(predictor.predict(x), model.predict(x))


def test_swapped_pickle_in_bundle_never_runs(tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    x = np.random.default_rng(0).normal(size=(50, 3))
    source = tmp_path / "model.pkl"
    source.write_bytes(pickle.dumps(LogisticRegression().fit(x, x[:, 0] > 0)))
    pin = hashlib.sha256(source.read_bytes()).hexdigest()
    bundle = tmp_path / "bundle"
    build_bundle(source, bundle, sample_input=x, trust=TrustOptions(pickle_sha256=pin))
    marker = tmp_path / "marker"
    _write_exploit(bundle / read_manifest(bundle).model_path, marker, "protocol4")
    with pytest.raises(IntegrityError):
        load_bundle(bundle, trust=TrustOptions(pickle_sha256=pin))
    assert not marker.exists()


def _skops_with(func: object, path: Path) -> Path:
    import skops.io as sio
    from sklearn.preprocessing import FunctionTransformer

    sio.dump(FunctionTransformer(func=func), path)
    return path


@pytest.mark.parametrize("func", [eval, os.system], ids=["builtins.eval", "os.system"])
def test_skops_naming_dangerous_functions_is_refused(tmp_path: Path, func: object) -> None:
    source = _skops_with(func, tmp_path / "model.skops")
    allow = ("builtins.eval", "posix.system", "os.system")  # even a setting cannot allow them
    with pytest.raises(UnsafeArtifactError, match="outside the trusted policy"):
        build_bundle(source, tmp_path / "bundle", sample_input=np.zeros((2, 2)),
                     trust=TrustOptions(skops_trusted_types=allow))


def test_skops_trust_list_inside_the_file_is_ignored(tmp_path: Path) -> None:
    source = _skops_with(eval, tmp_path / "model.skops")
    patched = tmp_path / "patched.skops"
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(patched, "w") as new:
        for item in old.namelist():
            data = old.read(item)
            if item == "schema.json":
                schema = json.loads(data)
                schema["trusted"] = ["builtins.eval", "os.system"]
                data = json.dumps(schema).encode()
            new.writestr(item, data)
    with pytest.raises(UnsafeArtifactError, match=r"builtins\.eval"):
        build_bundle(patched, tmp_path / "bundle", sample_input=np.zeros((2, 2)))


def test_skops_custom_type_needs_the_setting(tmp_path: Path) -> None:
    from mlharbor.formats.sklearn import untrusted_types

    assert untrusted_types(["sklearn.tree._tree.Tree", "mypkg.Model"], ()) == ["mypkg.Model"]
    assert untrusted_types(["mypkg.Model"], ("mypkg.Model",)) == []
    assert untrusted_types(["numpy.load", "builtins.eval"], ("builtins.eval",)) == [
        "numpy.load", "builtins.eval"]
    runstring = "numpy.testing._private.utils.runstring"
    assert untrusted_types([runstring], (runstring,)) == [runstring]


def _onnx_with_external(tmp_path: Path, location: str) -> Path:
    from onnx import TensorProto, helper

    weights = helper.make_tensor("w", TensorProto.FLOAT, [2], [1.0, 2.0])
    weights.ClearField("float_data")
    weights.data_location = TensorProto.EXTERNAL
    entry = weights.external_data.add()
    entry.key, entry.value = "location", location
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])], [weights])
    model = helper.make_model(graph)
    path = tmp_path / "model" / "model.onnx"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(model.SerializeToString())
    return path


@pytest.mark.parametrize("location", ["../secret.bin", "/etc/passwd", "sub/../../x"])
def test_onnx_external_data_outside_bundle_is_refused(tmp_path: Path, location: str) -> None:
    (tmp_path / "secret.bin").write_bytes(np.ones(2, np.float32).tobytes())
    source = _onnx_with_external(tmp_path, location)
    with pytest.raises(UnsafeArtifactError, match="outside the model's folder"):
        build_bundle(source, tmp_path / "bundle")


def test_onnx_external_data_inside_is_accepted(tmp_path: Path) -> None:
    source = _onnx_with_external(tmp_path, "weights.bin")
    (source.parent / "weights.bin").write_bytes(np.array([1, 2], np.float32).tobytes())
    result = build_bundle(source.parent, tmp_path / "bundle")
    assert {f.path for f in result.manifest.files} >= {"model/model.onnx", "model/weights.bin"}
    predictor = load_bundle(tmp_path / "bundle")
    np.testing.assert_allclose(predictor.predict(np.zeros((1, 2))), [[1.0, 2.0]])


def test_python_source_needs_trust_code(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    source = tmp_path / "model.py"
    source.write_text(f"open({str(marker)!r}, 'w').write('x')\n"
                      "class M:\n    def predict(self, X):\n        return X\n", encoding="utf-8")
    with pytest.raises(UnsafeArtifactError, match="trust_code"):
        build_bundle(source, tmp_path / "bundle", sample_input=np.zeros((1, 2)))
    assert not marker.exists()


def test_manifest_path_escape_is_refused(tmp_path: Path) -> None:
    from sklearn.linear_model import LinearRegression

    x = np.random.default_rng(0).normal(size=(20, 2))
    bundle = tmp_path / "bundle"
    build_bundle(LinearRegression().fit(x, x[:, 0]), bundle, sample_input=x)
    body = json.loads((bundle / "manifest.json").read_text())
    body["files"][0]["path"] = "../outside"
    (bundle / "manifest.json").write_text(json.dumps(body))
    with pytest.raises(UnsafeArtifactError, match="escapes the bundle"):
        load_bundle(bundle)
